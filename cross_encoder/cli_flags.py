"""Flags shared by the scripts that load a trained cross-encoder (evaluate, rerank): one
definition so their names, defaults and help can never drift apart; and the checks of their
output paths made before any work."""
from __future__ import annotations

import argparse
from pathlib import Path

from long_ctx.common.atomic import check_output_file
from long_ctx.common.cli_errors import UsageError


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_file", required=True, help="base RWKV-5 .pth the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter folder (OUT/final, OUT/checkpoint-<step>) or the training OUT folder")


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch_size", type=int, default=32, help="documents per forward pass")
    p.add_argument("--max_batch_tokens", type=int, default=32768, help="documents x padded length per forward pass at most (bounds memory)")
    p.add_argument("--question_batch", type=int, default=16, help="questions whose documents share forward passes (fills batches when pools are small)")
    p.add_argument("--max_length", type=int, default=None, help="row length limit; longer documents lose their tail (default: the training rows' max_length)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: fp32 on CPU, bf16 on CUDA")


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
    for flag, path in outputs.items():
        if path is None:
            continue
        check_output_file(path, inputs, flag)
        key = Path(path).resolve()
        if key in seen:
            raise UsageError(f"{flag} and {seen[key]} are the same file {path}; give each output its own path")
        seen[key] = flag
