"""Stage 0: NQ multi-document rows (.jsonl.zst or .jsonl) -> question/positive/negative jsonl.

Every flag and its help text is defined next to its field in long_ctx/stage0/driver.py (Stage0Config).
"""
from long_ctx.common.atomic import interrupted_note
from long_ctx.common.cli import parse_config, run_cli
from long_ctx.stage0.driver import Stage0Config, main, print_summary


def parse_args(argv=None) -> Stage0Config:
    return parse_config(Stage0Config, argv, description=__doc__)


if __name__ == "__main__":
    config = parse_args()
    run_cli(lambda: print_summary(main(config)), interrupted=interrupted_note(config.output_file))
