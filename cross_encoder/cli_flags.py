"""Flags shared by the scripts that load a trained cross-encoder (evaluate, rerank, serve): one
definition (config dataclasses whose fields are the flags, `long_ctx.common.cli.flag`) so their
names, defaults and help can never drift apart; and the checks of their output paths made before
any work."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from long_ctx.common.atomic import check_output_file
from long_ctx.common.cli import UsageError, add_config_flags, flag


@dataclass
class ModelFlags:
    """The base model and the adapter a script loads."""

    model_file: str = flag(None, "base RWKV-5 .pth the adapter was trained on", required=True)
    adapter: str = flag(None, "adapter folder (OUT/best, OUT/final, OUT/checkpoint-<step>) or the training OUT folder: its best/, else final/, else newest checkpoint-<step>/", required=True)


@dataclass
class ScoringFlags(ModelFlags):
    """How a script that scores documents with the cross-encoder batches them and where it runs."""

    batch_size: int = flag(32, "documents per forward pass")
    max_batch_tokens: int = flag(32_768, "documents x padded length per forward pass at most (bounds memory)")
    question_batch: int = flag(16, "questions whose documents share forward passes (fills batches when pools are small)")
    max_length: int | None = flag(None, "row length limit; longer documents lose their tail (default: the training rows' max_length)")
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda or cuda:N")
    precision: str = flag("auto", "auto: fp32 on CPU, bf16 on CUDA", choices=("auto", "fp32", "bf16"))


def add_model_flags(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, ModelFlags)


def model_inputs(model_file: str, adapter: str) -> list[Path]:
    """The files a scoring run reads besides its input: the base model and the adapter folder's
    files (also those of its final/ and checkpoint-<step>/), which no output may replace."""
    found = [Path(model_file)]
    root = Path(adapter)
    if root.is_dir():
        found += [p for p in root.iterdir() if p.is_file()]
        found += [p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
    return found


def check_outputs(outputs: dict[str, str | Path | None], inputs: list[str | Path]) -> None:
    """Before any work: every output path writable, none an input, no two the same file."""
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        check_output_file(path, inputs, name)
        key = Path(path).resolve()
        if key in seen:
            raise UsageError(f"{name} and {seen[key]} are the same file {path}; give each output its own path")
        seen[key] = name
