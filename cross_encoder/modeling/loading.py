"""Load a trained cross-encoder: base RWKV-5 checkpoint + adapter folder -> model and its config.

Also the checks made before any work: `check_model_file` (is the base .pth an RWKV-5 checkpoint
at all) and `model_fingerprint` (which base a run was trained on).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import torch
from peft import PeftModel

from cross_encoder.modeling.adapter_dirs import CE_CONFIG_NAME, find_adapter
from cross_encoder.modeling.model import CrossEncoder
from cross_encoder.rwkv5 import RWKV5Config, config_from_state_dict, load_rwkv5
from long_ctx.common.cli import UsageError

# How torch.save files begin: a zip archive (torch >= 1.6), or the legacy pickle whose first
# object is torch's magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
ARCHITECTURE_KEYS = ("version", "n_layer", "n_embd", "n_head", "head_size", "dim_att", "dim_ffn", "vocab_size")


def check_model_file(path: str | Path, flag: str = "--model_file") -> RWKV5Config | None:
    """Refuse, before any data is read, a base model file that is not an RWKV-5 checkpoint.

    Returns the architecture read off its keys (memory-mapped: cheap), or None for a legacy
    (pre-zip) torch file, which cannot be inspected without loading it whole and is checked when
    it is loaded. Raises `UsageError` with one line saying what is wrong.
    """
    p = Path(path)
    hint = "pass an RWKV-5 .pth such as RWKV-5-World-0.4B-v2-20231113-ctx4096.pth"
    if not p.exists():
        raise FileNotFoundError(f"{flag} {p} not found; {hint} (or make a tiny one with "
                         "cross_encoder.rwkv5.write_random_checkpoint)")
    if not p.is_file():
        raise UsageError(f"{flag} {p} is not a file; {hint}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as exc:
        raise UsageError(f"{flag} {p} cannot be read ({exc.strerror})") from None
    if not head:
        raise UsageError(f"{flag} {p} is empty; {hint}")
    if head.startswith(_LEGACY_MAGIC):
        return None
    if not head.startswith(_ZIP_MAGIC):
        raise UsageError(f"{flag} {p} is not a PyTorch checkpoint (it starts with {head[:8]!r}); {hint}")
    try:
        sd = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # any failure here is the file's: truncated, damaged, not tensors
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{flag} {p} is not a readable PyTorch checkpoint ({first}); {hint}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{flag} {p} holds no state dict of tensors; {hint}")
    try:
        return config_from_state_dict(sd)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise UsageError(f"{flag} {p}: {exc}") from None


def architecture(config: RWKV5Config) -> dict[str, Any]:
    """The fields of a trunk config that decide whether an adapter fits it."""
    return {k: getattr(config, k) for k in ARCHITECTURE_KEYS if hasattr(config, k)}


def model_fingerprint(path: str | Path, blocks: int = 16, block_bytes: int = 1 << 18) -> str:
    """A cheap identity of a base model file: its size and `blocks` evenly spread 256 KiB samples.

    Reads ~4 MiB whatever the size (a full hash of a 7B checkpoint would add seconds to every
    start). Two different trainings of one architecture differ in every tensor, so the samples
    tell them apart; a file re-saved byte for byte identical keeps its fingerprint.
    """
    size = os.path.getsize(path)
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        if size <= blocks * block_bytes:
            h.update(fh.read())
        else:
            for i in range(blocks):
                fh.seek(i * (size - block_bytes) // (blocks - 1))
                h.update(fh.read(block_bytes))
    return h.hexdigest()


def load_ce_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / CE_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {CE_CONFIG_NAME}: pass a checkpoint-<step>/ or "
                                "final/ folder written by cross_encoder/1_peft_training_ce.py")
    return orjson.loads(path.read_bytes())


def resolve_adapter_dir(adapter_dir: str | Path) -> Path:
    """A checkpoint folder as given, or for a training output folder the adapter to use: best/
    (the best evaluation by --metric_for_best_model), else final/, else the newest
    checkpoint-<step>/; damaged ones are skipped with a note on stderr. Only the adapter is
    needed here, not the training state."""
    p = Path(adapter_dir)
    if not p.exists():
        raise FileNotFoundError(f"--adapter {adapter_dir} not found; pass OUT/best, OUT/final, OUT/checkpoint-<step> "
                                "or the training output folder OUT")
    found = find_adapter(p, need_state=False, prefer_best=True)
    if found is None:
        raise FileNotFoundError(f"no adapter in {adapter_dir}: expected adapter_config.json, or a "
                                "training output folder with best/, final/ or checkpoint-<step>/")
    for note in found.skipped:
        print(f"note: skipping damaged {p / note}", file=sys.stderr)
    if found.skipped:
        print(f"note: using {found.path} (step {found.step}), the first intact adapter in {p} "
              "(best/, final/, newest checkpoint-<step>/)", file=sys.stderr)
    return found.path


def load_cross_encoder(model_file: str | Path, adapter_dir: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, merge: bool = True) -> tuple[CrossEncoder, dict[str, Any]]:
    """Base checkpoint + trained adapter -> (model in eval mode, cross_encoder_config dict).

    The config holds sep_token_id / cls_token_id / pad_token_id / max_length (build rows with
    them), plus the LoRA and loss settings and the trunk shape. With merge=True the LoRA
    matrices are folded into the trunk and a plain CrossEncoder is returned (fastest); with
    merge=False it is the peft model, whose CrossEncoder methods are reachable the same way.
    """
    adapter_dir = resolve_adapter_dir(adapter_dir)
    ce_config = load_ce_config(adapter_dir)
    check_model_file(model_file)
    rwkv = load_rwkv5(str(model_file), device=device, dtype=dtype, with_head=False)
    check_architecture(rwkv.config, ce_config, model_file, adapter_dir)
    peft_model = PeftModel.from_pretrained(CrossEncoder(rwkv), str(adapter_dir), is_trainable=False)
    model = peft_model.merge_and_unload() if merge else peft_model
    model.eval()
    return model, ce_config


def check_architecture(config: RWKV5Config, ce_config: dict[str, Any], model_file: str | Path,
                       adapter_dir: str | Path) -> None:
    """A one-line error when the base model is not the architecture the adapter was trained on."""
    want = ce_config.get("model", {})
    have = architecture(config)
    diff = [f"{k}={have[k]} (adapter: {want[k]})" for k in have if k in want and want[k] != have[k]]
    if diff:
        raise ValueError(f"{model_file} is another architecture than the base the adapter in {adapter_dir} was "
                         f"trained on: {', '.join(diff)}; pass the matching base model")
