"""Benchmark the trainer's padding handling on CPU: untrimmed vs trimmed vs length-grouped.

Builds padded rows shaped like NQ passages in L = 8192 (question 8-20 tokens + a ~100-word
passage, ~190 real tokens per row, 1 positive + 1 negative per group as stage 0's default),
plus a "wide" variant whose passages range 60-340 tokens, and a tiny random RWKV-5. Then
trains a few steps per variant with the real trainer (`trainer.main`), all in this one run:

  * untrimmed: every row processed at full width L (the reference, what the original did);
  * trimmed: each batch cut to its longest real row (rows shuffled individually);
  * trimmed + --group_by_length (groups kept intact).

Prints a markdown table: steps/s, real and processed tokens, processed/real, and the speed-up
over the untrimmed reference.

    python bench/bench_trainer.py [--bs 8] [--steps 30] [--ref_steps 4] [--threads 1]
"""
import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from long_ctx.stage2 import OUTPUT_SCHEMA

SEP, CLS, PAD, L = 2, 1, 0, 8192


def write_rows(out: Path, n_groups: int, doc_len: tuple[int, int, int], seed: int, max_length: int = L) -> Path:
    """Stage-2 layout with `n_groups` groups of 2 rows padded to `max_length`; doc_len = (mean, sd, half-range clip)."""
    rng = np.random.default_rng(seed)
    mean, sd, clip = doc_len
    ids, labels, lengths, groups = [], [], [], []
    for g in range(n_groups):
        q = rng.integers(10, 65000, rng.integers(8, 21)).tolist()
        for label in (1, 0):
            n = int(np.clip(rng.normal(mean, sd), mean - clip, mean + clip))
            row = q + [SEP] + rng.integers(10, 65000, n).tolist() + [CLS]
            ids.append(np.pad(np.array(row, np.uint16), (0, max_length - len(row))))
            labels.append(label)
            lengths.append(len(row))
            groups.append(g)
    out.mkdir(parents=True, exist_ok=True)
    schema = OUTPUT_SCHEMA  # the real stage-2 column types
    pq.write_table(pa.table({"input_ids": [a.tolist() for a in ids], "labels": labels, "length": lengths,
                             "group": groups}, schema=schema), out / "train-00000-of-00001.parquet")
    meta = {"max_length": max_length, "sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
            "is_truncate": True, "num_rows": len(ids), "num_groups": n_groups}
    (out / "padding.json").write_bytes(orjson.dumps(meta))
    return out


def run(model: Path, ds: Path, out: Path, steps: int, bs: int, **kw) -> dict:
    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main

    cfg = TrainConfig(model_file=str(model), ds_dir=str(ds), output_dir=str(out), ctx_len=L, bs=bs,
                      max_steps=steps, lora_r=8, lora_alpha=16, eval_fraction=0.0, save_every=0,
                      log_every=1, seed=0, **kw)
    summary = main(cfg)
    rows = [orjson.loads(line) for line in (out / "metrics.jsonl").read_bytes().splitlines()]
    # Rates over steps 2..N: the first step pays one-off allocation and warm-up costs.
    first, last = rows[0], rows[-1]
    dt = last["elapsed_s"] - first["elapsed_s"]
    return {"steps_s": (last["step"] - first["step"]) / dt,
            "tok_s": (last["tokens_real"] - first["tokens_real"]) / dt,
            "real": summary["tokens_real"], "processed": summary["tokens_processed"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bs", type=int, default=8, help="rows per batch (default 8)")
    p.add_argument("--steps", type=int, default=30, help="steps for the trimmed variants (default 30)")
    p.add_argument("--ref_steps", type=int, default=4, help="steps for the untrimmed reference (default 4)")
    p.add_argument("--groups", type=int, default=800, help="groups (2 rows each) per dataset (default 800)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on shared cores a second thread mostly adds contention)")
    p.add_argument("--n_layer", type=int, default=2, help="tiny model layers (default 2)")
    p.add_argument("--n_embd", type=int, default=64, help="tiny model width (default 64)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from cross_encoder.rwkv5 import write_random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        model = work / "m.pth"
        write_random_checkpoint(str(model), n_layer=a.n_layer, n_embd=a.n_embd, head_size=16, seed=0)
        shapes = {"NQ-like (passage ~170±15 tok)": (170, 15, 45), "wide (passage 60-340 tok)": (200, 80, 140)}
        lines = ["| rows | variant | steps/s | real tok/s | real tokens | processed tokens | processed/real | "
                 "speed-up (steps/s) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for shape, doc_len in shapes.items():
            ds = write_rows(work / f"ds_{doc_len[0]}_{doc_len[1]}", a.groups, doc_len, seed=0)
            variants = [("untrimmed (reference)", a.ref_steps, {"trim_batches": False}),
                        ("trimmed", a.steps, {}),
                        ("trimmed + group_by_length", a.steps, {"group_by_length": True})]
            ref = None
            for name, steps, kw in variants:
                r = run(model, ds, work / f"out_{len(lines)}", steps, a.bs, **kw)
                ref = ref or r["steps_s"]
                lines.append(f"| {shape} | {name} | {r['steps_s']:.2f} | {r['tok_s']:,.0f} | {r['real']:,.0f} | "
                             f"{r['processed']:,.0f} | "
                             f"{r['processed'] / r['real']:.2f}x | {r['steps_s'] / ref:.1f}x |")
        print(f"\ntiny RWKV-5 ({a.n_layer} layers, n_embd {a.n_embd}, head 16), bs {a.bs}, L {L}, "
              f"{a.threads} CPU thread(s), fp32, LoRA r 8 on att/ffn r/k/v\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
