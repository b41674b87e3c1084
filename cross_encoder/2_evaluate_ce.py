"""Evaluate a trained cross-encoder against BM25 on raw NQ multi-document pools (metrics table, JSON, PNG)."""
import argparse

from cross_encoder.cli_flags import add_model_flags, add_scoring_flags
from cross_encoder.evaluation.evaluator import EvalConfig, main
from long_ctx.common.cli_errors import run_cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    add_model_flags(p)
    p.add_argument("--input_file", required=True, help="raw NQ rows, the input format of stage 0 (.jsonl.zst or .jsonl)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many input lines")
    p.add_argument("--max_docs", type=int, default=None, help="rank only the first K documents of each pool (questions whose gold is beyond K are skipped and counted)")
    p.add_argument("--output_json", default="eval_results.json", help="results file (default: eval_results.json)")
    p.add_argument("--output_plot", default=None, help="bar chart PNG (default: the JSON path with .png)")
    p.add_argument("--per_question", default=None, help="optional jsonl with every question's gold ranks and cross-encoder scores")
    add_scoring_flags(p)
    p.add_argument("--bm25_tokenizer", choices=["words", "whitespace"], default="words", help="BM25 tokens, as in stage 0 (default words)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    run_cli(main, EvalConfig(model_file=a.model_file, adapter=a.adapter, input_file=a.input_file, limit=a.limit,
        max_docs=a.max_docs, output_json=a.output_json, output_plot=a.output_plot,
        per_question=a.per_question, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens,
        question_batch=a.question_batch,
        max_length=a.max_length, device=a.device, precision=a.precision,
                    bm25_tokenizer=a.bm25_tokenizer, progress=not a.no_progress))
