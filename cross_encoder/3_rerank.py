"""Rerank {"query": ..., "documents": [...]} jsonl lines with a trained cross-encoder; writes scores + ranking per line.

Every flag and its help text is defined next to its field in cross_encoder/serving/rerank_cli.py (RerankConfig).
"""
from cross_encoder.serving.rerank_cli import RerankConfig, main
from long_ctx.common.cli import parse_config, run_cli

if __name__ == "__main__":
    run_cli(main, parse_config(RerankConfig, description=__doc__))
