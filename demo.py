"""One command, the whole product on the bundled sample: stages 0-2, a tiny random RWKV-5, LoRA training
on CPU, and evaluation against BM25 on held-out records. A smoke run, not a useful model (see README)."""
import argparse
import sys

from cross_encoder.demo import DemoConfig, DemoError, main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo_out", help="output folder for every stage's files (default: demo_out/)")
    p.add_argument("--quick", action="store_true", help="reduced size (a few records, a few steps; under a minute) for CI")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split, the random model and training")
    a = p.parse_args()
    try:
        main(DemoConfig(out=a.out, quick=a.quick, seed=a.seed))
    except DemoError as exc:
        sys.exit(f"demo failed: {exc}")
