"""Rerank {"query": ..., "documents": [...]} jsonl lines with a trained cross-encoder; writes scores + ranking per line."""
import argparse

from cross_encoder.cli_flags import add_model_flags, add_scoring_flags
from cross_encoder.serving.rerank_cli import RerankConfig, main
from long_ctx.common.cli_errors import run_cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    add_model_flags(p)
    p.add_argument("--input_file", required=True, help='jsonl (or .jsonl.zst) of {"query": str, "documents": [str, ...]} lines; an "id" is copied')
    p.add_argument("--output_file", default=None, help="output jsonl, written atomically (default: <input>.reranked.jsonl beside the input)")
    add_scoring_flags(p)
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    run_cli(main, RerankConfig(model_file=a.model_file, adapter=a.adapter, input_file=a.input_file,
        output_file=a.output_file, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens,
        question_batch=a.question_batch,
        max_length=a.max_length, device=a.device, precision=a.precision,
        progress=not a.no_progress))
