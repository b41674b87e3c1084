"""The trainer's configuration: one dataclass whose field metadata also defines the CLI.

Keeping the help text next to each field means `1_peft_training_ce.py --help`, `config.json`
and the Python API (`trainer.main(TrainConfig(...))`) can never disagree about a flag.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from cross_encoder.training.losses import LOSSES
from long_ctx.common.cli import config_parser, flag, parse_config

DEFAULT_LORA_TARGETS = ("att.receptance", "att.key", "att.value",
                        "ffn.receptance", "ffn.key", "ffn.value")
#: Flags that decide what a run computes (its batches, schedule, updates, split): a resume with any
#: of them changed is refused, since it would silently mix two runs. Every other flag (device,
#: precision, saving/eval/log cadence, workers, paths) may change; config.json records both values.
RESUME_FIXED = ("bs", "grad_accum", "lr", "epochs", "max_steps", "warmup_steps", "min_lr_ratio", "weight_decay",
                "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "loss", "group_by_length",
                "seed", "eval_fraction", "metric_for_best_model", "greater_is_better")


@dataclass
class TrainConfig:
    model_file: str = flag(None, "RWKV-5 checkpoint (.pth, official key layout) used as the frozen base", required=True)
    ds_dir: str = flag(None, "padded dataset folder from long_ctx/2_create_padded_data.py (parquet shards + padding.json)", required=True)
    output_dir: str = flag(None, "where checkpoint-<step>/, final/, metrics.jsonl, config.json and loss.png go", required=True)
    ctx_len: int = flag(8192, "longest real row (tokens incl. CLS) accepted; a longer row is an error")
    bs: int = flag(2, "rows per micro-batch per process (with --loss grouped: at most this many rows of whole groups)")
    lora_ckpt: str | None = flag(None, "resume: folder with checkpoint-<step>/ (or one checkpoint folder); the newest is loaded; a missing or empty folder starts fresh")
    lr: float = flag(3e-4, "peak AdamW learning rate")
    epochs: int = flag(1, "passes over the training split (ignored when --max_steps is given)")
    max_steps: int | None = flag(None, "total optimizer steps; overrides --epochs and sets the LR schedule length")
    warmup_steps: int = flag(0, "linear warmup steps before the cosine decay")
    min_lr_ratio: float = flag(0.0, "cosine decay floor as a fraction of --lr")
    grad_accum: int = flag(1, "micro-batches per optimizer step")
    weight_decay: float = flag(0.0, "AdamW weight decay on the LoRA matrices and the score head")
    max_grad_norm: float = flag(1.0, "gradient clipping norm (0 disables clipping)")
    lora_r: int = flag(64, "LoRA rank")
    lora_alpha: float = flag(16.0, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = flag(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = flag(DEFAULT_LORA_TARGETS, "module name suffixes that get LoRA, e.g. att.receptance att.key att.value att.gate att.output ffn.receptance ffn.key ffn.value")
    loss: str = flag("auto", "auto: bce for passage rows, listwise for pool rows; bce: BCE on logits (per CLS on pool rows); mse: squared error of the raw score (the original); grouped: softmax over each group's positive + negatives; listwise (pool rows): softmax over a row's documents, target the gold", choices=("auto", *LOSSES))
    group_by_length: bool = flag(False, "length-grouped sampler: shuffled groups sorted by length inside mega-batches, groups kept together (less padding)")
    trim_batches: bool = flag(True, "cut each batch to its longest real row (identical loss, far less compute); --no-trim_batches only for benchmarks")
    grad_cp: bool = flag(False, "gradient checkpointing per RWKV block: memory linear in row length at a small constant, each block run twice (measured 1.2-1.5x slower on CPU)")
    precision: str = flag("auto", "auto: fp32 on CPU, bf16 autocast on CUDA; fp32; bf16 (frozen base stored in bf16, LoRA/head in fp32)", choices=("auto", "fp32", "bf16"))
    device: str = flag("auto", "auto: CUDA when available, else CPU", choices=("auto", "cpu", "cuda"))
    seed: int = flag(42, "seed for the head/LoRA init, data order, eval split and dropout")
    save_every: int = flag(500, "save OUT/checkpoint-<step>/ every this many steps (0: only final/)")
    save_total_limit: int = flag(3, "keep only the newest K checkpoint-<step>/ folders (0: keep all)")
    eval_every: int = flag(500, "evaluate on the held-out split every this many steps (0: only at the end)")
    eval_fraction: float = flag(0.02, "fraction of groups (questions) held out for evaluation (0: no evaluation)")
    eval_bs: int | None = flag(None, "rows per evaluation batch (default: --bs)")
    eval_at_start: bool = flag(False, "also evaluate before the first step (a baseline row in metrics.jsonl)")
    metric_for_best_model: str | None = flag(None, "eval metric that picks OUT/best/ (any eval_* the trainer logs, e.g. eval_loss, eval_roc_auc, eval_mrr@10 with --eval_input_file); default eval_group_top1 (pool rows: eval_row_top1) with a held-out split, eval_mrr@10 with only --eval_input_file")
    greater_is_better: bool | None = flag(None, "direction of --metric_for_best_model (default: lower is better for names ending _loss or _rank, else higher)")
    early_stopping_patience: int | None = flag(None, "stop after this many evaluations in a row without an improvement of the best --metric_for_best_model by more than --early_stopping_threshold (default: never stop early)")
    early_stopping_threshold: float = flag(0.0, "how much an evaluation must beat the best so far to reset the patience count")
    eval_input_file: str | None = flag(None, "raw NQ pools (.jsonl[.zst], the input of stage 0): at each evaluation also rank them with the current weights as cross_encoder/2_evaluate_ce.py does and log eval_mrr@10, eval_ndcg@10, eval_recall@k, eval_mean_gold_rank and BM25's (eval_bm25_*)")
    eval_pool_limit: int | None = flag(100, "--eval_input_file: read its first N lines (as 2_evaluate_ce.py --limit N; 0: all)")
    log_every: int = flag(10, "write a metrics.jsonl row (mean loss of the window) every this many steps")
    num_workers: int = flag(0, "DataLoader worker processes building batches (results do not depend on it)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_arg_parser(description: str | None = None) -> argparse.ArgumentParser:
    """argparse parser with one `--<field>` flag per TrainConfig field."""
    return config_parser(TrainConfig, description)


def config_from_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """Parse CLI arguments into a TrainConfig."""
    return parse_config(TrainConfig, argv, description)
