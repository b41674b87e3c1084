"""Checkpoint folders of the trainer: find, save atomically, load, rotate.

A checkpoint folder (`OUT/checkpoint-<step>/` or `OUT/final/`) holds:
- `adapter_config.json`, `adapter_model.safetensors`: the peft adapter (LoRA + score head);
- `cross_encoder_config.json`: special ids, max_length, LoRA/loss settings, trunk shape, step;
- `training_state.pt`: optimizer, scheduler, step, epoch, sampler position, RNG per process.
The first three are all an evaluator needs (with the base .pth); the last makes it resumable.
Folders appear under their final name only once complete (`long_ctx.atomic.atomic_dir`), so
any folder with a checkpoint name can be trusted after a crash.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import torch

from long_ctx.atomic import atomic_dir, write_json

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Leftovers of a process killed while writing/replacing/deleting a checkpoint (atomic_dir's temp
# folder, a replaced copy, rotate_checkpoints' renamed folder).
STALE_RE = re.compile(r"^\.(checkpoint-\d+|final)\..+")
FINAL_NAME = "final"
STATE_NAME = "training_state.pt"
CE_CONFIG_NAME = "cross_encoder_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def is_checkpoint_dir(path: str | Path) -> bool:
    """A complete checkpoint folder: adapter files, cross-encoder config and training state."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in (*ADAPTER_FILES, CE_CONFIG_NAME, STATE_NAME))


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    return int(orjson.loads((Path(path) / CE_CONFIG_NAME).read_bytes())["step"])


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete `checkpoint-<step>` folders in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and is_checkpoint_dir(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(folder: str | Path) -> tuple[int, Path] | None:
    """The checkpoint to resume from: `folder` itself if it is one, else the highest step among
    its checkpoint-<step>/ and final/ (final wins a tie: it is written last)."""
    folder = Path(folder)
    if is_checkpoint_dir(folder):
        return checkpoint_step(folder), folder
    candidates = [(step, 0, p) for step, p in list_checkpoints(folder)]
    if is_checkpoint_dir(folder / FINAL_NAME):
        candidates.append((checkpoint_step(folder / FINAL_NAME), 1, folder / FINAL_NAME))
    if not candidates:
        return None
    step, _, path = max(candidates)
    return step, path


def save_checkpoint(path: str | Path, peft_model: Any, ce_config: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write adapter + config + training state into `path` as one atomic folder."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json(tmp / CE_CONFIG_NAME, ce_config)
        torch.save(state, tmp / STATE_NAME)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint folder (tensors on CPU)."""
    return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)


def rotate_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoint-<step>/ folders (keep <= 0: keep all)."""
    if keep <= 0:
        return []
    removed = []
    for _, p in list_checkpoints(folder)[:-keep]:
        # Rename first so a crash mid-delete never leaves a half folder under a checkpoint name.
        doomed = p.with_name(f".{p.name}.deleting")
        p.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    return removed


def remove_stale_dirs(folder: str | Path) -> int:
    """Delete half-written checkpoint folders a killed run left behind; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.is_dir() and STALE_RE.match(p.name)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)
