"""The trainer's output folder: what in it is the trainer's own, checked before any work, and
which checkpoint a resume continues (and whether it may).

The trainer writes into --output_dir, never replacing the folder as a whole: `config.json`,
`metrics.jsonl`, `loss.png`, `checkpoint-<step>/`, `final/` and `best/`. It replaces only what it
recognises as its own earlier output:
- `config.json`: a JSON object holding the trainer's keys (`model_file`, `ds_dir`, `output_dir`,
  `lora_ckpt`, `resolved`);
- `metrics.jsonl` and `loss.png`: only beside such a `config.json` (they are written after it),
  and every line of `metrics.jsonl` a JSON object with `step` and `lr`;
- `checkpoint-<step>/`, `final/`, `best/`: empty, or holding nothing but a checkpoint's own files, and not a
  finished adapter without its `training_state.pt` (it cannot be continued, so it would be
  replaced by a retrained one).
Anything else at one of those names is a one-line `UsageError` saying what to do; other files
in the folder are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cross_encoder.modeling.adapter_dirs import (BEST_NAME, CHECKPOINT_RE, FINAL_NAME, Found, adapter_problem, find_adapter,
                                                 foreign_entries)
from cross_encoder.training.config import RESUME_FIXED, TrainConfig
from long_ctx.common.atomic import check_writable, is_inside
from long_ctx.common.cli import UsageError

CONFIG_NAME, METRICS_NAME, PLOT_NAME = "config.json", "metrics.jsonl", "loss.png"
CONFIG_KEYS = frozenset(("model_file", "ds_dir", "output_dir", "lora_ckpt", "resolved"))


def is_own_config(path: Path) -> bool:
    try:
        obj = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(obj, dict) and CONFIG_KEYS <= obj.keys() and isinstance(obj["resolved"], dict)


def is_own_metrics(path: Path) -> bool:
    """Every line a JSON object with `step` and `lr`; a torn last line (a kill mid-write) is allowed."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return False
    for i, line in enumerate(lines):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            return False
        if not (isinstance(row, dict) and "step" in row and "lr" in row):
            return False
    return True


def check_output_dir(out: Path, ds_dir: str | Path) -> list[Path]:
    """Refuse an output folder holding, at a name the trainer writes, something not its own.

    Returns the checkpoint-named folders already there (final/, best/, checkpoint-<step>/, non-empty).
    """
    move = "move it elsewhere or choose another --output_dir"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {out} is a file, not a folder; choose another --output_dir")
    if Path(ds_dir).is_dir() and is_inside(out, Path(ds_dir)):
        raise UsageError(f"--output_dir {out} is inside the dataset folder {ds_dir} (--ds_dir); choose a folder "
                         "outside it")
    check_writable(out, "--output_dir")
    if not out.is_dir():
        return []
    config, metrics, plot = out / CONFIG_NAME, out / METRICS_NAME, out / PLOT_NAME
    own_config = config.is_file() and is_own_config(config)
    if config.exists() and not own_config:
        raise UsageError(f"{config} is not a config.json of this trainer and would be overwritten; {move}")
    for path, ok in ((metrics, metrics.is_file() and is_own_metrics(metrics)), (plot, plot.is_file())):
        if path.exists() and not (ok and own_config):
            raise UsageError(f"{path} was not written by this trainer (no config.json of a run beside it, or rows "
                             f"it never writes) and would be overwritten; {move}")
    existing = []
    for p in sorted(out.iterdir()):
        if not (p.name in (FINAL_NAME, BEST_NAME) or CHECKPOINT_RE.match(p.name)):
            continue
        if not p.is_dir():
            raise UsageError(f"{p} is a file where the trainer writes a checkpoint folder; {move}")
        if not any(p.iterdir()):
            continue
        foreign = foreign_entries(p)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UsageError(f"{p} holds files that are not a checkpoint's ({shown}); it is never replaced — {move}")
        if adapter_problem(p) is None and not (p / "training_state.pt").exists():
            raise UsageError(f"{p} holds a finished adapter without training_state.pt: it cannot be continued and "
                             f"would be replaced by a retrained one; {move} (e.g. mv {p} {p}-kept)")
        existing.append(p)
    return existing


@dataclass
class ResumePlan:
    """Where training continues from (None: from scratch) and the notes to print about it."""

    found: Found | None
    notes: list[str] = field(default_factory=list)


def plan_resume(c: TrainConfig) -> ResumePlan:
    """Check --output_dir and pick the checkpoint --lora_ckpt continues; all before any work."""
    out = Path(c.output_dir)
    existing = check_output_dir(out, c.ds_dir)
    if c.lora_ckpt is None:
        if existing:
            raise FileExistsError(f"{out} already holds checkpoints of an earlier run; pass --lora_ckpt "
                                  f"{out} to continue it, or choose an empty --output_dir")
        return ResumePlan(None)
    src = Path(c.lora_ckpt)
    if existing and not is_inside(src, out):
        raise UsageError(f"{out} already holds checkpoints ({existing[0].name}, ...) of a run other than --lora_ckpt "
                         f"{src}, which later saves would rotate away; choose an empty --output_dir")
    if not src.exists():
        return ResumePlan(None, [f"--lora_ckpt {src} does not exist; starting fresh"])
    if not src.is_dir():
        raise UsageError(f"--lora_ckpt {src} is a file; pass the training output folder or a checkpoint folder")
    found = find_adapter(src, need_state=True)  # ValueError when every candidate is damaged
    if found is None:
        return ResumePlan(None, [f"--lora_ckpt {src} holds no checkpoint-<step>/ or final/ folder; starting fresh"])
    notes = [f"note: skipping damaged {src / s}" for s in found.skipped]
    notes.append(f"resuming from {found.path} (step {found.step})"
                 + (", the newest intact checkpoint" if found.skipped else ""))
    return ResumePlan(found, notes)


def newest_intact(out: Path) -> Found | None:
    try:
        return find_adapter(out, need_state=True) if out.is_dir() else None
    except ValueError:
        return None


def newest_note(c: TrainConfig) -> str:
    found = newest_intact(Path(c.output_dir))
    if found is None:
        return f"no checkpoint was written to {c.output_dir}"
    return f"the newest checkpoint is {found.path} (step {found.step})"


def interrupted_note(c: TrainConfig) -> str:
    """What a stopped run leaves: the checkpoint a rerun continues from."""
    out = Path(c.output_dir)
    found = newest_intact(out)
    if found is None:
        return f"no checkpoint was written to {out} yet (--save_every {c.save_every}); a rerun starts from step 0"
    same = c.lora_ckpt is not None and is_inside(Path(c.lora_ckpt), out)
    how = "rerun the same command" if same else f"rerun the same command with --lora_ckpt {out}"
    return f"{found.path.name} (step {found.step}) is the newest checkpoint in {out}; {how} to continue"


# ---------------------------------------------------------------------------------------------
# What a resume is compared against


def _norm(key: str, value: Any) -> Any:
    if key == "lora_targets" and value is not None:
        return sorted(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def saved_flags(ce_config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The flags a checkpoint was trained with (older checkpoints: what their config records)."""
    if isinstance(ce_config.get("flags"), dict):
        return ce_config["flags"]
    flags: dict[str, Any] = {}
    if "loss" in ce_config:
        flags["loss"] = ce_config["loss"]
    lora = ce_config.get("lora") or {}
    for key, name in (("r", "lora_r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout"),
                      ("targets", "lora_targets")):
        if key in lora:
            flags[name] = lora[key]
    if "seed" in state:
        flags["seed"] = state["seed"]
    return flags


def flag_differences(saved: dict[str, Any], c: TrainConfig) -> tuple[list[str], dict[str, Any]]:
    """(the RESUME_FIXED flags that differ, as `--flag old -> new`; the other flags that differ,
    as {flag: {"checkpoint": old, "now": new}}, which a resume applies and config.json records)."""
    now = c.to_dict()
    fixed, changed = [], {}
    for key, old in saved.items():
        if key not in now or _norm(key, old) == _norm(key, now[key]):
            continue
        if key in RESUME_FIXED:
            fixed.append(f"--{key} {old} -> {now[key]}")
        elif key not in ("output_dir", "lora_ckpt"):
            changed[key] = {"checkpoint": old, "now": now[key]}
    return fixed, changed


def other_differences(ce_config: dict[str, Any], dataset: dict[str, Any], base: dict[str, Any],
                      architecture: dict[str, Any]) -> list[str]:
    """Dataset (special ids, row length, content) and base model differences from a checkpoint."""
    out = []
    saved_ds = ce_config.get("dataset_fingerprint") or {
        k: ce_config[k] for k in ("sep_token_id", "cls_token_id", "pad_token_id", "max_length") if k in ce_config}
    for key, old in saved_ds.items():
        if key in dataset and old != dataset[key]:
            what = "content (hash of every row)" if key == "blake2b" else key
            out.append(f"dataset {what} {old} -> {dataset[key]}" if key != "blake2b" else f"dataset {what}")
    saved_arch = ce_config.get("model") or {}
    arch = [f"{k} {saved_arch[k]} -> {v}" for k, v in architecture.items() if k in saved_arch and saved_arch[k] != v]
    if arch:
        out.append("base model architecture " + ", ".join(arch))
    elif (ce_config.get("base_model") or {}).get("fingerprint") not in (None, base["fingerprint"]):
        out.append(f"base model weights ({base['file']} is not {ce_config['base_model']['file']} the checkpoint "
                   "was trained on)")
    return out


def refuse_resume(path: Path, differences: list[str]) -> None:
    raise UsageError(f"cannot continue {path}: this run differs from the one that wrote it in "
                     f"{'; '.join(differences)}. A resume continues the same run, so rerun with the checkpoint's "
                     "flags, dataset and base model, or start a new run in another --output_dir "
                     "(without --lora_ckpt)")
