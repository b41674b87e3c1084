"""The trainer's configuration: one dataclass whose field metadata also defines the CLI.

Keeping the help text next to each field means `1_peft_training_ce.py --help`, `config.json`
and the Python API (`trainer.main(TrainConfig(...))`) can never disagree about a flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from cross_encoder.training.losses import LOSSES

DEFAULT_LORA_TARGETS = ("att.receptance", "att.key", "att.value",
                        "ffn.receptance", "ffn.key", "ffn.value")
#: Flags that decide what a run computes (its batches, schedule, updates, split): a resume with any
#: of them changed is refused, since it would silently mix two runs. Every other flag (device,
#: precision, saving/eval/log cadence, workers, paths) may change; config.json records both values.
RESUME_FIXED = ("bs", "grad_accum", "lr", "epochs", "max_steps", "warmup_steps", "min_lr_ratio", "weight_decay",
                "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "loss", "group_by_length",
                "seed", "eval_fraction")


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    model_file: str = _f(None, "RWKV-5 checkpoint (.pth, official key layout) used as the frozen base", required=True)
    ds_dir: str = _f(None, "padded dataset folder from long_ctx/2_create_padded_data.py (parquet shards + padding.json)", required=True)
    output_dir: str = _f(None, "where checkpoint-<step>/, final/, metrics.jsonl, config.json and loss.png go", required=True)
    ctx_len: int = _f(8192, "longest real row (tokens incl. CLS) accepted; a longer row is an error")
    bs: int = _f(2, "rows per micro-batch per process (with --loss grouped: at most this many rows of whole groups)")
    lora_ckpt: str | None = _f(None, "resume: folder with checkpoint-<step>/ (or one checkpoint folder); the newest is loaded; a missing or empty folder starts fresh")
    lr: float = _f(3e-4, "peak AdamW learning rate")
    epochs: int = _f(1, "passes over the training split (ignored when --max_steps is given)")
    max_steps: int | None = _f(None, "total optimizer steps; overrides --epochs and sets the LR schedule length")
    warmup_steps: int = _f(0, "linear warmup steps before the cosine decay")
    min_lr_ratio: float = _f(0.0, "cosine decay floor as a fraction of --lr")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    weight_decay: float = _f(0.0, "AdamW weight decay on the LoRA matrices and the score head")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables clipping)")
    lora_r: int = _f(64, "LoRA rank")
    lora_alpha: float = _f(16.0, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = _f(DEFAULT_LORA_TARGETS, "module name suffixes that get LoRA, e.g. att.receptance att.key att.value att.gate att.output ffn.receptance ffn.key ffn.value")
    loss: str = _f("bce", "bce: BCE on logits; mse: squared error of the raw score (the original); grouped: softmax over each group's positive + negatives", choices=LOSSES)
    group_by_length: bool = _f(False, "length-grouped sampler: shuffled groups sorted by length inside mega-batches, groups kept together (less padding)")
    trim_batches: bool = _f(True, "cut each batch to its longest real row (identical loss, far less compute); --no-trim_batches only for benchmarks")
    grad_cp: bool = _f(False, "gradient checkpointing per RWKV block (less memory, ~30%% more compute)")
    precision: str = _f("auto", "auto: fp32 on CPU, bf16 autocast on CUDA; fp32; bf16 (frozen base stored in bf16, LoRA/head in fp32)", choices=("auto", "fp32", "bf16"))
    device: str = _f("auto", "auto: CUDA when available, else CPU", choices=("auto", "cpu", "cuda"))
    seed: int = _f(42, "seed for the head/LoRA init, data order, eval split and dropout")
    save_every: int = _f(500, "save OUT/checkpoint-<step>/ every this many steps (0: only final/)")
    save_total_limit: int = _f(3, "keep only the newest K checkpoint-<step>/ folders (0: keep all)")
    eval_every: int = _f(500, "evaluate on the held-out split every this many steps (0: only at the end)")
    eval_fraction: float = _f(0.02, "fraction of groups (questions) held out for evaluation (0: no evaluation)")
    eval_bs: int | None = _f(None, "rows per evaluation batch (default: --bs)")
    eval_at_start: bool = _f(False, "also evaluate before the first step (a baseline row in metrics.jsonl)")
    log_every: int = _f(10, "write a metrics.jsonl row (mean loss of the window) every this many steps")
    num_workers: int = _f(0, "DataLoader worker processes building batches (results do not depend on it)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's usage lines as written."""


def build_arg_parser(description: str | None = None) -> argparse.ArgumentParser:
    """argparse parser with one `--<field>` flag per TrainConfig field."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta, typ = dict(f.metadata), hints[f.name]
        kwargs: dict[str, Any] = {"help": meta.pop("help")}
        kwargs.update(meta)
        if f.default is not dataclasses.MISSING and not kwargs.get("required"):
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = f.default_factory()  # type: ignore[misc]
        # `int | None` -> int; `list[str]` stays list[str].
        is_union = get_origin(typ) in (Union, types.UnionType)
        base_t = [a for a in get_args(typ) if a is not type(None)][0] if is_union else typ
        if base_t is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(base_t) is list:
            kwargs.update(nargs="+", type=get_args(base_t)[0])
        else:
            kwargs["type"] = base_t
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def config_from_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """Parse CLI arguments into a TrainConfig."""
    return TrainConfig(**vars(build_arg_parser(description).parse_args(argv)))
