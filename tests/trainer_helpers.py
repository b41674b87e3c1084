"""Shared fixtures for the trainer tests: tiny padded datasets and tiny RWKV-5 checkpoints.

`write_padded_dataset` writes stage 2's output format directly (independently of
long_ctx/stage2.py, so the trainer's loader is checked against the contract, not against the
writer); `pipeline_padded_dataset` runs the real pipeline on the bundled NQ sample when it exists.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from long_ctx.stage2 import OUTPUT_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SEP, CLS, PAD = 2, 1, 0
# Tokens of the toy task: a positive document ends with POS_MARK, a negative with NEG_MARK.
POS_MARK, NEG_MARK = 7, 8
TOY_VOCAB = 64




# (tokens without padding incl. SEP/CLS, label) per row; a group is a list of rows.
Row = tuple[list[int], int]


def make_row(question: Sequence[int], doc: Sequence[int]) -> list[int]:
    return [*question, SEP, *doc, CLS]


def toy_groups(n_groups: int, n_neg: int = 2, seed: int = 0, q_len: tuple[int, int] = (3, 8),
               d_len: tuple[int, int] = (4, 20), vocab: int = TOY_VOCAB) -> list[list[Row]]:
    """A learnable toy set: the positive's last document token is POS_MARK, negatives' NEG_MARK.

    Other tokens are random ids >= 10 (never a special id or a marker).
    """
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_groups):
        q = rng.integers(10, vocab, rng.integers(*q_len)).tolist()
        rows = []
        for label in [1] + [0] * n_neg:
            d = rng.integers(10, vocab, rng.integers(*d_len)).tolist()
            d.append(POS_MARK if label else NEG_MARK)
            rows.append((make_row(q, d), label))
        groups.append(rows)
    return groups


def write_padded_dataset(out_dir: str | Path, groups: list[list[Row]], max_length: int,
                         n_shards: int = 2, is_truncate: bool = True) -> Path:
    """Stage-2 layout: train-XXXXX-of-YYYYY.parquet shards + padding.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, labels, lengths, gids = [], [], [], []
    for g, rows in enumerate(groups):
        for toks, label in rows:
            assert len(toks) <= max_length
            ids.append(toks + [PAD] * (max_length - len(toks)))
            labels.append(label)
            lengths.append(len(toks))
            gids.append(g)
    schema = OUTPUT_SCHEMA  # the real stage-2 column types
    # Cut shards at group boundaries, as the real writer does.
    bounds = np.linspace(0, len(groups), n_shards + 1).astype(int)
    row_of_group = np.searchsorted(np.asarray(gids), np.arange(len(groups) + 1))
    for s in range(n_shards):
        a, b = row_of_group[bounds[s]], row_of_group[bounds[s + 1]]
        table = pa.table({"input_ids": ids[a:b], "labels": labels[a:b], "length": lengths[a:b],
                          "group": gids[a:b]}, schema=schema)
        pq.write_table(table, out / f"train-{s:05d}-of-{n_shards:05d}.parquet")
    meta = {"max_length": max_length, "sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
            "is_truncate": is_truncate, "num_rows": len(ids), "num_groups": len(groups)}
    (out / "padding.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return out


# A pool row: (tokens without padding, CLS positions, labels one per document).
PoolRow = tuple[list[int], list[int], list[int]]


def toy_pool_rows(n_rows: int, n_docs: int = 4, seed: int = 0, q_len: tuple[int, int] = (3, 8),
                  d_len: tuple[int, int] = (3, 10), vocab: int = TOY_VOCAB) -> list[PoolRow]:
    """The toy task as pool rows `q [SEP] d_1 [CLS] ... d_k [CLS]`: the gold (at a random position)
    ends with POS_MARK, the other documents with NEG_MARK."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        toks = rng.integers(10, vocab, rng.integers(*q_len)).tolist() + [SEP]
        gold = int(rng.integers(n_docs))
        positions, labels = [], []
        for i in range(n_docs):
            toks += rng.integers(10, vocab, rng.integers(*d_len)).tolist() + [POS_MARK if i == gold else NEG_MARK]
            positions.append(len(toks))
            toks.append(CLS)
            labels.append(int(i == gold))
        rows.append((toks, positions, labels))
    return rows


def write_pool_dataset(out_dir: str | Path, rows: list[PoolRow], max_length: int, n_shards: int = 2) -> Path:
    """Stage 2's pool layout (docs/stage2.md), written directly: shards + padding.json."""
    from long_ctx.stage2.pool_rows import POOL_SCHEMA  # the real column types

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = {"input_ids": [], "length": [], "cls_positions": [], "labels": [], "group": [], "doc_ids": []}
    for g, (toks, positions, labels) in enumerate(rows):
        assert len(toks) <= max_length
        cols["input_ids"].append(toks + [PAD] * (max_length - len(toks)))
        cols["length"].append(len(toks))
        cols["cls_positions"].append(positions)
        cols["labels"].append(labels)
        cols["group"].append(g)
        cols["doc_ids"].append(list(range(1, len(labels) + 1)))
    bounds = np.linspace(0, len(rows), n_shards + 1).astype(int)
    for s in range(n_shards):
        a, b = bounds[s], bounds[s + 1]
        pq.write_table(pa.table({k: v[a:b] for k, v in cols.items()}, schema=POOL_SCHEMA),
                       out / f"train-{s:05d}-of-{n_shards:05d}.parquet")
    docs = [len(r[2]) for r in rows]
    meta = {"max_length": max_length, "sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
            "is_truncate": True, "row_format": "pool", "num_rows": len(rows), "num_groups": len(rows),
            "pool_docs": max(docs), "doc_order": "shuffled",
            "documents_per_row": {"min": min(docs), "max": max(docs), "mean": float(np.mean(docs))}}
    (out / "padding.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return out


def toy_pool_dataset(out_dir: str | Path, n_rows: int = 24, n_docs: int = 4, seed: int = 0,
                     max_length: int = 64) -> Path:
    return write_pool_dataset(out_dir, toy_pool_rows(n_rows, n_docs, seed), max_length)


def toy_dataset(out_dir: str | Path, n_groups: int = 24, n_neg: int = 2, seed: int = 0,
                max_length: int = 40) -> Path:
    return write_padded_dataset(out_dir, toy_groups(n_groups, n_neg, seed), max_length)


def tiny_model(path: str | Path, vocab_size: int = TOY_VOCAB, n_layer: int = 2, n_embd: int = 64,
               head_size: int = 16, seed: int = 0) -> Path:
    from cross_encoder.rwkv5 import write_random_checkpoint

    write_random_checkpoint(str(path), n_layer=n_layer, n_embd=n_embd, head_size=head_size,
                            vocab_size=vocab_size, seed=seed)
    return Path(path)


def pipeline_padded_dataset(work: str | Path, max_length: int = 160, limit: int | None = None) -> Path | None:
    """Run the real pipeline (sample -> stage 0 -> 1 -> 2) via its CLIs; None if a piece is missing."""
    sample = REPO / "data" / "nq_sample.jsonl.zst"
    scripts = [REPO / "long_ctx" / f for f in ("0_create_q_p_n.py", "1_create_datasets.py",
                                               "2_create_padded_data.py")]
    if not sample.is_file() or not all(s.is_file() for s in scripts):
        return None
    work = Path(work)
    qpn, ds, padded = work / "qpn.jsonl", work / "ds", work / "padded"
    extra = ["--limit", str(limit)] if limit else []
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], check=True, capture_output=True)  # noqa: E731
    run(scripts[0], "--input_file", sample, "--output_file", qpn, "--num_splits", 1, "--no_progress", *extra)
    run(scripts[1], "--input_file", qpn, "--output_dir", ds, "--num_proc", 1, "--no_progress")
    run(scripts[2], "--ds_dir", ds, "--max_length", max_length, "--output_dir", padded, "--is_truncate",
        "--no_progress")
    return padded


TRAIN_SCRIPT = REPO / "cross_encoder" / "1_peft_training_ce.py"


def cli_args(config) -> list[str]:
    """The trainer's command line for a TrainConfig (what a user would type)."""
    argv = []
    for k, v in config.to_dict().items():
        if v is None:
            continue
        if isinstance(v, bool):
            argv.append(f"--{k}" if v else f"--no-{k}")
        else:
            argv += [f"--{k}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return argv


HOOK_SCRIPT = '''
import os, runpy, signal, sys, torch
torch.set_num_threads(1)
import cross_encoder.training.trainer as t
{setup}
real_main = t.main
def on_step(step):
{body}
t.main = lambda config, **kw: real_main(config, on_step=on_step, **kw)
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
'''


def hooked_trainer(path: str | Path, on_step: str, setup: str = "") -> Path:
    """A script that runs the real trainer CLI (its own parsing, run_cli, signals) with
    `on_step(step)` (the body, indented 4) called after every optimizer step: e.g. a real
    SIGKILL or SIGINT at a fixed step. Run it as `python PATH ARGS...` or under torchrun."""
    path = Path(path)
    path.write_text(HOOK_SCRIPT.format(setup=setup, body=on_step, script=str(TRAIN_SCRIPT)))
    return path


def lora_model(model_file, seed=0, targets=("att.receptance", "att.key", "att.value",
                                           "ffn.receptance", "ffn.key", "ffn.value")):
    """The tiny model with a LoRA whose matrices are non-zero (so it changes the outputs), in eval mode."""
    import torch

    from cross_encoder.modeling import CrossEncoder, attach_lora, make_lora_config
    from cross_encoder.rwkv5 import load_rwkv5

    torch.manual_seed(seed)
    ce = CrossEncoder(load_rwkv5(str(model_file), with_head=False), head_seed=seed)
    pm = attach_lora(ce, make_lora_config(4, 8, 0.0, targets))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter actually change the outputs
        for name, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return pm.eval()


def toy_config(assets, out, **kw):
    """The TrainConfig the trainer tests start from: (tiny model, toy dataset) of `assets`, tiny LoRA."""
    from cross_encoder.training.config import TrainConfig

    base = dict(model_file=str(assets[0]), ds_dir=str(assets[1]), output_dir=str(out), ctx_len=64, bs=6,
                lr=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.1, eval_fraction=0.25, eval_every=0,
                log_every=1, save_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def adapter_weights(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def assert_same_adapter(a: dict, b: dict, atol: float = 1e-6) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def read_metrics_rows(out: str | Path) -> list[dict]:
    return [orjson.loads(line) for line in (Path(out) / "metrics.jsonl").read_bytes().splitlines()]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def ddp_args(model_file, ds, out, bs: int = 3) -> list[str]:
    """The trainer flags of the DDP tests: 4 steps, eval and save every 2, dropout off (so runs on
    different process layouts are comparable); best/ by the highest eval loss, stopping after one
    evaluation without improvement (all processes must take both decisions together)."""
    return ["--model_file", str(model_file), "--ds_dir", str(ds), "--output_dir", str(out), "--ctx_len", "64",
            "--lr", "5e-3", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--eval_fraction", "0.25",
            "--eval_every", "2", "--log_every", "1", "--save_every", "2", "--seed", "0", "--max_steps", "4",
            "--device", "cpu", "--bs", str(bs), "--metric_for_best_model", "eval_loss", "--greater_is_better",
            "--early_stopping_patience", "1"]


def torchrun_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@functools.lru_cache(maxsize=None)
def two_process_run() -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    """(model file, dataset, output folder, process) of one 2-process gloo run on one node
    (`torchrun --standalone --nproc_per_node 2`), made once per session: the DDP and the multi-node
    tests compare against it."""
    work = Path(tempfile.mkdtemp(prefix="ddp-run-"))
    atexit.register(shutil.rmtree, work, True)
    model_file = tiny_model(work / "m.pth")
    ds = toy_dataset(work / "ds", n_groups=24, max_length=40)
    out = work / "ddp"
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(TRAIN_SCRIPT),
                           *ddp_args(model_file, ds, out)], capture_output=True, text=True, env=torchrun_env(),
                          timeout=300)
    return model_file, ds, out, proc
