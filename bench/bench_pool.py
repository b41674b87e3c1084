"""Benchmark pool rows on CPU: one-pass pool scoring vs pointwise scoring, and training on long rows.

Scoring (same run, same pools): 100-document pools of the bundled sample (the first 100 documents
of its 200-document pools), a random RWKV-5 + score head, three ways:

  * per-pair, batch 1 (the reference): every `question [SEP] document [CLS]` row on its own;
  * pointwise with question-state reuse (what a passage adapter's `Reranker.score_many` does):
    `question + [SEP]` once per pool, every document continued from its state, length-sorted batches;
  * pool one-pass (what a pool adapter's `Reranker` does): `question [SEP] d_1 [CLS] ... d_k [CLS]`,
    one pass per window of `--window` documents (100 = the whole pool in one pass).

Reported: documents/s, tokens processed per document (every position the trunk ran, padding
included) and the speed-up over the reference. Pool scores are not comparable to pointwise ones
(a document sees the documents before it), so no score difference is shown.

Training (same run): the real trainer (`trainer.main`) on random pool rows of ~4k and ~16k tokens
(30 and 120 documents of ~130 tokens), bs 1, listwise loss, each variant in a fresh process so its
peak memory (VmHWM) is its own; against passage rows of ~145 tokens (bs 8, bce) as the reference.

    python bench/bench_pool.py [--pools 3] [--threads 1] [--train_steps 4] [--skip_train]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cross_encoder.modeling import CrossEncoder
from cross_encoder.rwkv5 import make_config, random_rwkv5
from cross_encoder.serving.reranker import Reranker
from long_ctx.common.line_reader import iter_lines
from long_ctx.stage0.nq_format import parse_line
from long_ctx.world_tokenizer import get_tokenizer

SAMPLE = "data/nq_sample.jsonl.zst"
MODELS = {"tiny (2 x 128)": (2, 128, 32), "small (6 x 512)": (6, 512, 64)}
SEP, CLS, PAD = 2, 1, 0
DOCS = 100


def load_pools(n: int) -> list[tuple[list[int], list[list[int]]]]:
    tok = get_tokenizer()
    pools = []
    for _, line in iter_lines(SAMPLE):
        rec = parse_line(line)
        if len(rec.documents) >= DOCS:
            pools.append((tok.encode(rec.question), tok.encode_batch(rec.documents[:DOCS])))
        if len(pools) == n:
            break
    return pools


class TokenCounter:
    """Counts the token positions (padding included) every forward pass of the trunk processes."""

    def __init__(self, rwkv) -> None:
        self.inner, self.tokens = rwkv.hidden, 0
        rwkv.hidden = self

    def __call__(self, input_ids, *args, **kw):
        self.tokens += input_ids.numel()
        return self.inner(input_ids, *args, **kw)


def scoring(a) -> list[str]:
    pools = load_pools(a.pools)
    n_docs = sum(len(d) for _, d in pools)
    base = {"sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD, "max_length": 32768}
    lines = ["| model | method | docs | tokens processed per doc | docs/s | speed-up |", "|---|---|---:|---:|---:|---:|"]
    for name in a.models:
        n_layer, n_embd, head = MODELS[name]
        rwkv = random_rwkv5(make_config(n_layer, n_embd, head), seed=0, with_head=False)
        model = CrossEncoder(rwkv, head_seed=0).eval()
        counter = TokenCounter(rwkv)
        passage = Reranker(model, base, batch_size=a.batch_size)
        methods = [("per-pair, batch 1 (reference)", lambda ps: [passage.score_ids_per_pair(q, d) for q, d in ps]),
                   ("pointwise, question-state reuse (score_many)", passage.score_ids_many)]
        for w in a.windows:
            pool = Reranker(model, {**base, "row_format": "pool", "pool": {"pool_docs": w}}, batch_size=a.batch_size)
            methods.append((f"pool one-pass, windows of {w} documents", pool.score_ids_many))
        passage.score_ids_many(pools[:1])  # warm-up
        ref = None
        for label, fn in methods:
            counter.tokens = 0
            start = time.perf_counter()
            fn(pools)
            seconds = time.perf_counter() - start
            ref = ref or seconds
            lines.append(f"| {name} | {label} | {n_docs:,} | {counter.tokens / n_docs:,.1f} | {n_docs / seconds:,.1f} | "
                         f"{ref / seconds:.2f}x |")
            print(lines[-1], flush=True)
    return lines


# ---------------------------------------------------------------------------------------------
# Training


def write_dataset(out: Path, kind: str, n_rows: int, docs: int, seed: int) -> Path:
    """Random rows in stage 2's layout: `pool` rows of `docs` documents, or passage groups of 2."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from long_ctx.stage2 import OUTPUT_SCHEMA
    from long_ctx.stage2.pool_rows import POOL_SCHEMA

    rng = np.random.default_rng(seed)
    doc = lambda: rng.integers(10, 65000, int(np.clip(rng.normal(130, 30), 40, 220))).tolist()  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for g in range(n_rows):
        q = rng.integers(10, 65000, rng.integers(8, 21)).tolist()
        if kind == "passage":
            rows += [(q + [SEP] + doc() + [CLS], label, g) for label in (1, 0)]
            continue
        toks, pos = q + [SEP], []
        for _ in range(docs):
            toks += doc()
            pos.append(len(toks))
            toks.append(CLS)
        labels = [0] * docs
        labels[int(rng.integers(docs))] = 1
        rows.append((toks, pos, labels, g))
    L = max(len(r[0]) for r in rows)
    if kind == "passage":
        table = pa.table({"input_ids": [r[0] + [PAD] * (L - len(r[0])) for r in rows], "labels": [r[1] for r in rows],
                          "length": [len(r[0]) for r in rows], "group": [r[2] for r in rows]}, schema=OUTPUT_SCHEMA)
        meta = {}
    else:
        table = pa.table({"input_ids": [r[0] + [PAD] * (L - len(r[0])) for r in rows],
                          "length": [len(r[0]) for r in rows], "cls_positions": [r[1] for r in rows],
                          "labels": [r[2] for r in rows], "group": [r[3] for r in rows],
                          "doc_ids": [list(range(1, docs + 1))] * len(rows)}, schema=POOL_SCHEMA)
        meta = {"row_format": "pool", "pool_docs": docs}
    pq.write_table(table, out / "train-00000-of-00001.parquet")
    meta.update({"max_length": L, "sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
                 "num_rows": table.num_rows})
    (out / "padding.json").write_bytes(orjson.dumps(meta))
    return out


def train_child(spec: dict) -> None:
    """Runs in a fresh process: train, print rates and the process's peak RSS as JSON."""
    import orjson

    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main

    torch.set_num_threads(spec["threads"])
    cfg = TrainConfig(model_file=spec["model"], ds_dir=spec["ds"], output_dir=spec["out"], ctx_len=1 << 20,
                      bs=spec["bs"], max_steps=spec["steps"], lora_r=8, lora_alpha=16, eval_fraction=0.0,
                      save_every=0, log_every=1, seed=0, grad_cp=spec["grad_cp"])
    main(cfg)
    rows = [orjson.loads(x) for x in (Path(spec["out"]) / "metrics.jsonl").read_bytes().splitlines()]
    first, last = rows[0], rows[-1]  # rates over steps 2..N (step 1 pays one-off allocations)
    dt = last["elapsed_s"] - first["elapsed_s"]
    print("RESULT " + json.dumps({"tok_s": (last["tokens_real"] - first["tokens_real"]) / dt,
                                  "s_step": dt / (last["step"] - first["step"]),
                                  "tokens_per_row": last["tokens_real"] / last["step"] / spec["bs"],
                                  "max_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training(a, work: Path) -> list[str]:
    from cross_encoder.rwkv5 import write_random_checkpoint

    lines = ["| model | rows | bs | real tokens/row | s/step | real tok/s | vs passage rows | peak RSS (MB) | "
             "over the reference's (MB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    variants = [("passage rows (2 per question), reference", "passage", 0, 8, False),
                ("pool rows, 30 docs (~4k tok)", "pool", 30, 1, False),
                ("pool rows, 120 docs (~16k tok)", "pool", 120, 1, False),
                ("pool rows, 120 docs (~16k tok), --grad_cp", "pool", 120, 1, True)]
    for name in a.train_models:
        n_layer, n_embd, head = MODELS[name]
        model = work / f"m_{n_layer}.pth"
        write_random_checkpoint(str(model), n_layer=n_layer, n_embd=n_embd, head_size=head, seed=0)
        ref = ref_rss = None
        for label, kind, docs, bs, grad_cp in variants:
            ds = work / f"ds_{kind}_{docs}"
            if not ds.exists():
                write_dataset(ds, kind, 8 if kind == "pool" else 64, docs, seed=0)
            out = work / f"out_{n_layer}_{kind}_{docs}_{grad_cp}"
            spec = {"model": str(model), "ds": str(ds), "out": str(out), "bs": bs, "steps": a.train_steps,
                    "grad_cp": grad_cp, "threads": a.threads}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
            if proc.returncode:
                raise RuntimeError(proc.stderr[-2000:])
            r = json.loads(proc.stdout.split("RESULT ", 1)[1])
            ref = ref or r["tok_s"]
            ref_rss = ref_rss or r["max_rss_mb"]
            lines.append(f"| {name} | {label} | {bs} | {r['tokens_per_row']:,.0f} | {r['s_step']:.2f} | "
                         f"{r['tok_s']:,.0f} | {r['tok_s'] / ref:.2f}x | {r['max_rss_mb']:,.0f} | "
                         f"{r['max_rss_mb'] - ref_rss:+,.0f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", type=int, default=3, help="100-document pools from the sample (at most 10)")
    p.add_argument("--windows", type=int, nargs="+", default=[100, 16], help="pool window sizes (documents)")
    p.add_argument("--batch_size", type=int, default=32, help="documents (pointwise) or windows (pool) per pass")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="scoring model shapes")
    p.add_argument("--train_models", nargs="+", default=list(MODELS), choices=list(MODELS), help="training model shapes")
    p.add_argument("--train_steps", type=int, default=4, help="training steps per variant (rates over steps 2..N)")
    p.add_argument("--skip_train", action="store_true", help="only the scoring table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return train_child(json.loads(a.child))
    torch.set_num_threads(a.threads)
    print(f"CPU, {a.threads} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start\n")
    out = scoring(a)
    if not a.skip_train:
        work = Path(tempfile.mkdtemp(prefix="bench_pool_"))
        try:
            out += [""] + training(a, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
