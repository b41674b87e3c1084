"""Evaluate a trained cross-encoder against BM25 on raw NQ multi-document pools (metrics table, JSON, PNG).

Every flag and its help text is defined next to its field in cross_encoder/evaluation/evaluator.py (EvalConfig).
"""
from cross_encoder.evaluation.evaluator import EvalConfig, main
from long_ctx.common.cli import parse_config, run_cli

if __name__ == "__main__":
    run_cli(main, parse_config(EvalConfig, description=__doc__))
