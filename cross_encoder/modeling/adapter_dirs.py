"""The layout of an adapter folder (`OUT/checkpoint-<step>/`, `OUT/final/`) and how to find one.

A checkpoint folder holds:
- `adapter_config.json`, `adapter_model.safetensors`: the peft adapter (LoRA + score head);
- `cross_encoder_config.json`: special ids, max_length, LoRA/loss settings, trunk shape, step;
- `training_state.pt`: optimizer, scheduler, step, epoch, sampler position, RNG per process.
The first three are all an evaluator needs (with the base .pth); the last makes it resumable.
The trainer writes them (`cross_encoder.training.checkpoints`); everything that loads a trained
model finds them here.
"""
from __future__ import annotations

import re
from pathlib import Path

import orjson

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
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
