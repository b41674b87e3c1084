"""Checkpoint folders of the trainer: save atomically, load the training state, rotate.

What a checkpoint folder holds and how one is found is `cross_encoder.modeling.adapter_dirs`.
Folders appear under their final name only once complete (`long_ctx.common.atomic.atomic_dir`),
so any folder with a checkpoint name can be trusted after a crash.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from cross_encoder.modeling.adapter_dirs import (  # noqa: F401
    ADAPTER_FILES,
    BEST_NAME,
    CE_CONFIG_NAME,
    CHECKPOINT_RE,
    FINAL_NAME,
    STATE_NAME,
    checkpoint_step,
    is_checkpoint_dir,
    list_checkpoints,
    newest_checkpoint,
)
from cross_encoder.modeling.model_card import CARD_NAME, write_model_card
from long_ctx.common.atomic import atomic_dir, remove_stale_temps, write_json

# Leftovers of a process killed while writing/replacing/deleting a checkpoint: atomic_dir's
# `.NAME.<pid>.<random>.tmp` and `.NAME.old-<pid>`, rotate_checkpoints' `.NAME.<pid>.deleting.tmp`.
STALE_RE = re.compile(r"^\.(checkpoint-\d+|final|best)\.")

_UMASK = os.umask(0)
os.umask(_UMASK)


def save_checkpoint(path: str | Path, peft_model: Any, ce_config: dict[str, Any], state: dict[str, Any],
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write adapter + config + training state + model card into `path` as one atomic folder.

    `metrics`: the eval row of this step (None when the step was not evaluated); the config
    records it as `eval_metrics` and the card shows it.
    """
    path = Path(path)
    ce_config = {**ce_config, "eval_metrics": metrics or None}
    settings = {"folder": str(path), "world_size": state.get("world_size"), "tokens_real": state.get("tokens_real"),
                "skipped_steps": (state.get("nonfinite") or {}).get("total")}
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json(tmp / CE_CONFIG_NAME, ce_config)
        torch.save(state, tmp / STATE_NAME)
        # Replaces the card peft just wrote (no description beyond its template).
        write_model_card(tmp / CARD_NAME, ce_config, metrics, settings)
        # safetensors creates adapter_model.safetensors 0600; every output follows the umask.
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~_UMASK)
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
        # Rename first so a crash mid-delete never leaves a half folder under a checkpoint name;
        # the pid in the name lets a later run remove it only once this process is gone.
        doomed = p.with_name(f".{p.name}.{os.getpid()}.deleting.tmp")
        p.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    return removed


def remove_stale_dirs(folder: str | Path) -> int:
    """Delete what killed runs left half-written in `folder` (never the work of a live process,
    e.g. a second trainer writing there); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    names = {m.group(1) for p in folder.iterdir() if (m := STALE_RE.match(p.name))}
    return sum(len(remove_stale_temps(folder / name)) for name in names)
