"""Regenerate the bundled sample (deterministic): data/nq_sample.jsonl.zst and data/nq_broken.jsonl.

    python data/make_sample.py              # the committed files
    python data/make_sample.py --records 2000 --uniform --words_per_doc 70 130 --output big.jsonl.zst
"""
import argparse
from pathlib import Path

import zstandard

from long_ctx.common.atomic import atomic_file
from long_ctx.stage0.synthetic_nq import broken_lines, generate, to_json_line

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200, help="number of records (default 200)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--uniform", action="store_true", help="pool sizes uniform in 10..200 instead of the sample's mostly-small layout")
    p.add_argument("--words_per_doc", type=int, nargs=2, default=[25, 60], metavar=("MIN", "MAX"), help="filler words per passage (default 25 60)")
    p.add_argument("--output", default=str(HERE / "nq_sample.jsonl.zst"), help="output .jsonl.zst or .jsonl (default data/nq_sample.jsonl.zst)")
    p.add_argument("--broken_output", default=str(HERE / "nq_broken.jsonl"), help="file of broken lines, one per skip reason ('' to skip)")
    p.add_argument("--level", type=int, default=19, help="zstd level (default 19)")
    a = p.parse_args()
    lines = (
        to_json_line(s.record, i) + b"\n"
        for i, s in enumerate(generate(a.records, a.seed, words_per_doc=tuple(a.words_per_doc), sample_layout=not a.uniform))
    )
    with atomic_file(a.output, "wb") as fh:
        if a.output.endswith(".zst"):
            with zstandard.ZstdCompressor(level=a.level).stream_writer(fh, closefd=False) as zw:
                for line in lines:
                    zw.write(line)
        else:
            fh.writelines(lines)
    if a.broken_output:
        with atomic_file(a.broken_output, "wb") as fh:
            fh.writelines(line + b"\n" for _, line in broken_lines())
    print(f"wrote {a.output}" + (f" and {a.broken_output}" if a.broken_output else ""))


if __name__ == "__main__":
    main()
