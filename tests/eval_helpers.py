"""Shared helpers for the evaluation / rerank tests: a tiny random base model, a real adapter, NQ files.

The adapter is produced by the real trainer (a few steps on a toy padded dataset written straight
in stage 2's format), so the tests read exactly what `1_peft_training_ce.py` writes. Its LoRA
matrices are then perturbed so that a wrongly applied (or ignored) adapter changes the scores.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from long_ctx.stage2 import OUTPUT_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "nq_sample.jsonl.zst"
BROKEN = REPO / "data" / "nq_broken.jsonl"
SEP, CLS, PAD = 2, 1, 0
TINY = dict(n_layer=2, n_embd=64, head_size=16)


def tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A random RWKV-5 with the full World vocab (real token ids must fit)."""
    from cross_encoder.rwkv5 import write_random_checkpoint

    write_random_checkpoint(str(path), seed=seed, **TINY)
    return Path(path)


def toy_padded_dataset(out: Path, max_length: int, n_groups: int = 6, seed: int = 0) -> Path:
    """Stage-2 layout (parquet shard + padding.json) with random rows: only the trainer needs it."""
    rng = np.random.default_rng(seed)
    ids, labels, lengths, groups = [], [], [], []
    for g in range(n_groups):
        q = rng.integers(10, 60000, 4).tolist()
        for label in (1, 0):
            row = q + [SEP] + rng.integers(10, 60000, int(rng.integers(3, 12))).tolist() + [CLS]
            ids.append(row + [PAD] * (max_length - len(row)))
            labels.append(label)
            lengths.append(len(row))
            groups.append(g)
    out.mkdir(parents=True, exist_ok=True)
    schema = OUTPUT_SCHEMA  # the real stage-2 column types
    pq.write_table(pa.table({"input_ids": ids, "labels": labels, "length": lengths, "group": groups},
                            schema=schema), out / "train-00000-of-00001.parquet")
    meta = {"max_length": max_length, "sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
            "is_truncate": True, "num_rows": len(ids), "num_groups": n_groups}
    (out / "padding.json").write_bytes(orjson.dumps(meta))
    return out


def trained_adapter(work: Path, model_file: Path, max_length: int = 48, seed: int = 0, ds: Path | None = None) -> Path:
    """Train 2 steps with the real trainer (on `ds`, default a toy passage dataset), then perturb
    the LoRA B matrices (zero at init, and tiny after 2 steps) so the adapter clearly changes the
    trunk. Returns the final/ folder."""
    from safetensors.torch import load_file, save_file

    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main

    ds = ds or toy_padded_dataset(work / "toy_ds", max_length)
    out = work / "train"
    main(TrainConfig(model_file=str(model_file), ds_dir=str(ds), output_dir=str(out), ctx_len=max_length, bs=4,
                     max_steps=2, lr=1e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_fraction=0.0,
                     save_every=0, log_every=1, seed=seed, device="cpu"))
    final = out / "final"
    weights = load_file(str(final / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name, t in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.2
    save_file(weights, str(final / "adapter_model.safetensors"))
    return final


def sample_lines(n: int) -> list[bytes]:
    """The first n raw lines of the bundled sample."""
    from long_ctx.common.line_reader import iter_lines

    out = []
    for _, line in iter_lines(SAMPLE):
        out.append(line)
        if len(out) == n:
            break
    return out


@functools.lru_cache(maxsize=None)
def shared_assets(max_length: int = 48) -> tuple[Path, Path]:
    """(base .pth, adapter folder), built once per test process and shared by the eval test modules
    (a session fixture defined outside conftest.py would be rebuilt in every module)."""
    work = Path(tempfile.mkdtemp(prefix="eval_assets_"))
    atexit.register(shutil.rmtree, work, True)
    model = tiny_checkpoint(work / "tiny.pth")
    return model, trained_adapter(work, model, max_length=max_length)


@functools.lru_cache(maxsize=None)
def shared_pool_assets(max_length: int = 256, pool_docs: int = 4) -> tuple[Path, Path]:
    """(base .pth, adapter trained on pool rows of `pool_docs` documents), built once per process."""
    from trainer_helpers import toy_pool_rows, write_pool_dataset

    work = Path(tempfile.mkdtemp(prefix="pool_assets_"))
    atexit.register(shutil.rmtree, work, True)
    model = tiny_checkpoint(work / "tiny.pth")
    ds = write_pool_dataset(work / "pool_ds", toy_pool_rows(8, pool_docs, vocab=60000), max_length, n_shards=1)
    return model, trained_adapter(work, model, max_length=max_length, ds=ds)


def stub_ce_config(max_length: int = 64) -> dict:
    return {"sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD, "max_length": max_length, "step": 0}
