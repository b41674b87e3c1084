"""Benchmark the trainer's padding on real window rows: untrimmed vs trimmed vs length-grouped.

Runs the real pipeline on the bundled sample: stage 0 `--mode window --context_tokens T` (negatives
within +-5 % of each positive), stage 1, stage 2 at L = 8192 (the README's example row length),
then trains a few steps of a tiny random RWKV-5 per variant with the real trainer
(`bench_trainer.run`, all in this one run):

  * untrimmed: every row processed at full width L (the reference);
  * trimmed: each batch cut to its longest real row (rows shuffled individually);
  * trimmed + --group_by_length (groups kept intact).

Prints a markdown table: steps/s, real and processed tokens, processed/real (the target is
<= 1.1x), and the speed-up over the untrimmed reference.

    python bench/bench_window_rows.py [--context_tokens 4096] [--bs 8] [--steps 8] [--ref_steps 2]
"""
import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from bench_trainer import L, run

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "nq_sample.jsonl.zst"


def window_rows(work: Path, context_tokens: int, num_negatives: int) -> tuple[Path, dict]:
    from long_ctx.stage0.driver import Stage0Config
    from long_ctx.stage0.driver import main as stage0
    from long_ctx.stage1 import Stage1Config
    from long_ctx.stage1 import main as stage1
    from long_ctx.stage2 import Stage2Config
    from long_ctx.stage2 import main as stage2

    qpn = work / "win.jsonl"
    stats = stage0(Stage0Config(str(SAMPLE), str(qpn), mode="window", context_tokens=context_tokens,
                                num_negatives=num_negatives, num_splits=1, progress=False))
    stage1(Stage1Config(str(qpn), str(work / "s1"), num_proc=1, progress=False))
    stage2(Stage2Config(str(work / "s1"), L, output_dir=str(work / "s2"), progress=False))
    return work / "s2", stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context_tokens", type=int, default=4096, help="stage 0 --context_tokens (default 4096)")
    p.add_argument("--num_negatives", type=int, default=3, help="stage 0 --num_negatives (default 3)")
    p.add_argument("--bs", type=int, default=8, help="rows per batch (default 8: two groups of 4)")
    p.add_argument("--steps", type=int, default=8, help="steps for the trimmed variants (default 8)")
    p.add_argument("--ref_steps", type=int, default=2, help="steps for the untrimmed reference (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from cross_encoder.rwkv5 import write_random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench_window_rows_"))
    try:
        ds, stats = window_rows(work, a.context_tokens, a.num_negatives)
        model = work / "m.pth"
        write_random_checkpoint(str(model), n_layer=1, n_embd=64, head_size=16, seed=0)
        lines = ["| variant | steps/s | real tok/s | real tokens | processed tokens | processed/real | "
                 "speed-up (steps/s) |", "|---|---:|---:|---:|---:|---:|---:|"]
        ref = None
        for name, steps, kw in [("untrimmed (reference)", a.ref_steps, {"trim_batches": False}),
                                ("trimmed", a.steps, {}), ("trimmed + group_by_length", a.steps, {"group_by_length": True})]:
            r = run(model, ds, work / f"out_{len(lines)}", steps, a.bs, **kw)
            ref = ref or r["steps_s"]
            lines.append(f"| {name} | {r['steps_s']:.3f} | {r['tok_s']:,.0f} | {r['real']:,.0f} | {r['processed']:,.0f} | "
                         f"{r['processed'] / r['real']:.2f}x | {r['steps_s'] / ref:.1f}x |")
        pos, neg = stats["positive_tokens"], stats["negative_tokens"]
        print(f"\nwindow rows: stage 0 --mode window --context_tokens {a.context_tokens} --num_negatives "
              f"{a.num_negatives} on the sample: {stats['records_written']} records, positives {pos['min']}-{pos['max']} "
              f"tokens, negatives {neg['min']}-{neg['max']}; rows in L = {L}; tiny RWKV-5 (1 layer, n_embd 64), "
              f"bs {a.bs}, {a.threads} CPU thread(s), fp32\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
