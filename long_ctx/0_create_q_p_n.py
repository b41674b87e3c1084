"""Stage 0: NQ multi-document rows (.jsonl.zst or .jsonl) -> question/positive/negative jsonl."""
import argparse

from long_ctx.common.atomic import interrupted_note
from long_ctx.common.cli_errors import run_cli
from long_ctx.stage0.driver import Stage0Config, main, print_summary
from long_ctx.stage0.modes import MODE_NAMES


def parse_args(argv=None) -> Stage0Config:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input_file", required=True, help="NQ rows: .jsonl.zst (streamed) or .jsonl; a pipe (e.g. /dev/stdin) is read as .jsonl")
    p.add_argument("--output_file", required=True, help="output .jsonl (or .jsonl.zst: zstd-compressed), written atomically; stats go to OUTPUT.stats.json")
    p.add_argument("--num_splits", type=int, default=0, help="worker processes (default 0 = one per CPU); output is identical for any value")
    p.add_argument("--negative_strategy", choices=["least", "hardest", "random"], default="least", help="least: lowest BM25 score; hardest: highest; random: seeded by (seed, line number)")
    p.add_argument("--num_negatives", type=int, default=1, help="negatives per record, best first by the strategy (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for --negative_strategy random (default 0)")
    p.add_argument("--bm25_tokenizer", choices=["words", "whitespace"], default="words", help="words: lowercased Unicode \\w+ matches (default); whitespace: str.split()")
    p.add_argument("--filter_answer_docs", action=argparse.BooleanOptionalAction, default=True, help="never use a document containing the answer (case-insensitive) as a negative (default on)")
    p.add_argument("--mode", choices=MODE_NAMES, default="passage", help="what each record becomes: passage = the gold passage + negative passages (default; see docs/stage0.md)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many input lines")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    return Stage0Config(
        input_file=a.input_file, output_file=a.output_file, num_splits=a.num_splits,
        negative_strategy=a.negative_strategy, num_negatives=a.num_negatives, seed=a.seed,
        bm25_tokenizer=a.bm25_tokenizer, filter_answer_docs=a.filter_answer_docs, mode=a.mode,
        limit=a.limit, progress=not a.no_progress,
    )


if __name__ == "__main__":
    config = parse_args()
    run_cli(lambda: print_summary(main(config)), interrupted=interrupted_note(config.output_file))
