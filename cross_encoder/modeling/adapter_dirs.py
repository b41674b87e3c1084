"""The layout of an adapter folder (`OUT/checkpoint-<step>/`, `OUT/final/`, `OUT/best/`), how one is
found, and how a damaged one is told apart.

A checkpoint folder holds:
- `adapter_config.json`, `adapter_model.safetensors` (and peft's `README.md`): the peft adapter
  (LoRA + score head);
- `cross_encoder_config.json`: special ids, max_length, LoRA/loss settings, trunk shape, step, and
  the run's flags and fingerprints (what a resume is compared against);
- `training_state.pt`: optimizer, scheduler, step, epoch, sampler position, RNG per process.
The adapter files and the cross-encoder config are all an evaluator needs (with the base .pth);
the training state makes it resumable. The trainer writes them (`cross_encoder.training.outputs.checkpoints`);
everything that loads a trained model finds them here.

Folders are written atomically, so a damaged one comes from the disk or a user (a truncated copy,
a half-finished `cp`), never from a killed trainer. `adapter_problem` / `state_problem` say what is
wrong; `find_adapter` skips such folders and falls back to the next newest, with a note.

Which folder of a training output folder `OUT` is used: a resume continues the newest
(`find_adapter(OUT, need_state=True)`: final/, else the newest checkpoint-<step>/; never best/,
which is an earlier step); everything that loads a model for use (`find_adapter(OUT, False,
prefer_best=True)`: the evaluator, reranker, server, export) takes best/ (the best evaluation so
far, by --metric_for_best_model), else final/, else the newest checkpoint-<step>/.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import orjson

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
FINAL_NAME = "final"
#: The checkpoint with the best evaluation so far (written by the trainer after each evaluation).
BEST_NAME = "best"
STATE_NAME = "training_state.pt"
CE_CONFIG_NAME = "cross_encoder_config.json"
CE_FORMAT = "rwkv5-cross-encoder"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: Every file the trainer writes into a checkpoint folder (peft adds a model card README.md).
OWN_FILES = frozenset((*ADAPTER_FILES, CE_CONFIG_NAME, STATE_NAME, "README.md"))


def is_checkpoint_dir(path: str | Path) -> bool:
    """A checkpoint folder with all its files: adapter, cross-encoder config and training state
    (present, not checked for damage: see `adapter_problem` / `state_problem`)."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in (*ADAPTER_FILES, CE_CONFIG_NAME, STATE_NAME))


def has_adapter_files(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in (*ADAPTER_FILES, CE_CONFIG_NAME))


def foreign_entries(path: str | Path) -> list[str]:
    """Names in a checkpoint-named folder that the trainer never writes (the user's files)."""
    p = Path(path)
    return sorted(e.name for e in p.iterdir() if e.name not in OWN_FILES or not e.is_file())


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    return int(orjson.loads((Path(path) / CE_CONFIG_NAME).read_bytes())["step"])


def adapter_problem(path: str | Path) -> str | None:
    """Why the adapter in `path` cannot be loaded (a missing, unreadable or truncated file), or None."""
    p = Path(path)
    for name in (*ADAPTER_FILES, CE_CONFIG_NAME):
        if not (p / name).is_file():
            return f"{name} is missing"
    for name in ("adapter_config.json", CE_CONFIG_NAME):
        try:
            obj = orjson.loads((p / name).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            return f"{name} is not readable JSON ({str(exc)[:60]})"
        if not isinstance(obj, dict):
            return f"{name} is not a JSON object"
    try:
        int(orjson.loads((p / CE_CONFIG_NAME).read_bytes())["step"])
    except (KeyError, TypeError, ValueError):
        return f"{CE_CONFIG_NAME} has no step"
    from safetensors import SafetensorError, safe_open

    try:
        # The header lists every tensor's byte range; safetensors checks that the file covers them
        # all, which is what a truncated copy fails.
        with safe_open(str(p / "adapter_model.safetensors"), "pt") as fh:
            if not list(fh.keys()):
                return "adapter_model.safetensors holds no tensors"
    except (SafetensorError, OSError) as exc:
        return f"adapter_model.safetensors is damaged ({str(exc)[:80]})"
    return None


def state_problem(path: str | Path) -> str | None:
    """Why `training_state.pt` in `path` cannot be restored, or None.

    torch.save writes a zip archive with a CRC per member: reading every member checks a
    truncated or bit-flipped file without unpickling it.
    """
    f = Path(path) / STATE_NAME
    if not f.is_file():
        return f"{STATE_NAME} is missing"
    try:
        with zipfile.ZipFile(f) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{STATE_NAME} is damaged ({str(exc)[:80]})"
    if bad is not None:
        return f"{STATE_NAME} is damaged (member {bad} fails its checksum)"
    return None


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the `checkpoint-<step>` folders in `folder` with all their files, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and is_checkpoint_dir(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def candidate_dirs(folder: str | Path) -> list[Path]:
    """final/ and every checkpoint-<step>/ in a training output folder that is not empty, newest
    first by the step in the name (final/, written last, first among equals; its step is read
    from its config)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keyed = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and any(p.iterdir()):
            keyed.append(((int(m.group(1)), 0), p))
    final = folder / FINAL_NAME
    if final.is_dir() and any(final.iterdir()):
        try:
            step = checkpoint_step(final)
        except (OSError, KeyError, TypeError, ValueError):
            step = 1 << 62  # unreadable: tried first, so its problem is reported
        keyed.append(((step, 1), final))
    return [p for _, p in sorted(keyed, key=lambda kp: kp[0], reverse=True)]


@dataclass
class Found:
    """The adapter folder chosen, its step, and the newer folders skipped (with why)."""

    path: Path
    step: int
    skipped: list[str] = field(default_factory=list)


def _problem(p: Path, need_state: bool) -> str | None:
    return adapter_problem(p) or (state_problem(p) if need_state else None)


def find_adapter(folder: str | Path, need_state: bool, prefer_best: bool = False) -> Found | None:
    """The folder to load: `folder` itself when it holds adapter files (it must then be intact:
    the user chose it), else the newest intact final/ or checkpoint-<step>/ in it, with
    `prefer_best` its intact best/ before those. `need_state`: a resume also needs an intact
    training_state.pt. None when there is no candidate at all; a `ValueError` naming every
    problem when all candidates are damaged."""
    folder = Path(folder)
    if has_adapter_files(folder):
        problem = _problem(folder, need_state)
        if problem:
            raise ValueError(f"{folder}: {problem}; pass an intact checkpoint folder (or the training output "
                             "folder, whose newest intact checkpoint is then used)")
        return Found(folder, checkpoint_step(folder))
    skipped = []
    best = folder / BEST_NAME
    first = [best] if prefer_best and best.is_dir() and any(best.iterdir()) else []
    for p in first + candidate_dirs(folder):
        problem = _problem(p, need_state)
        if problem is None:
            return Found(p, checkpoint_step(p), skipped)
        skipped.append(f"{p.name}: {problem}")
    if skipped:
        raise ValueError(f"no intact checkpoint in {folder} ({'; '.join(skipped)}); move the damaged folders "
                         "away, or pass another folder")
    return None


def newest_checkpoint(folder: str | Path) -> tuple[int, Path] | None:
    """(step, path) of the newest intact resumable checkpoint (see `find_adapter`), or None."""
    found = find_adapter(folder, need_state=True)
    return None if found is None else (found.step, found.path)
