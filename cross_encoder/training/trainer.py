"""LoRA training of the RWKV-5 cross-encoder: `main(TrainConfig)`.

One optimizer step = `grad_accum` micro-batches of `bs` rows on every process (DDP under
torchrun). Everything that decides what a step sees — the batch plan (seed, epoch), the
position in it, the optimizer/scheduler state and the RNG — is saved in each checkpoint, so a
killed run resumed from its newest checkpoint ends with the weights of an uninterrupted one.

Before any work: the flags, the base model file, the output folder (`run_dir`: only the
trainer's own files are ever replaced), the checkpoint to continue and whether this run matches
it; then the dataset's shards against padding.json. Every process takes part in each check and
they fail together. A step whose loss or gradient is not finite makes no update (all processes
agree); NONFINITE_LIMIT such steps in a row stop the run with an error, and non-finite weights
are never saved.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import torch
from peft import PeftModel
from torch.nn.parallel import DistributedDataParallel as DDP

from cross_encoder.modeling import CrossEncoder, attach_lora, check_model_file, load_ce_config, make_lora_config
from cross_encoder.modeling.model import HEAD_NAME
from cross_encoder.modeling.adapter_dirs import CE_CONFIG_NAME, adapter_problem
from cross_encoder.modeling.loading import architecture, check_architecture, model_fingerprint
from cross_encoder.runtime import Runtime, maybe_no_sync, setup_runtime, teardown_runtime
from cross_encoder.rwkv5 import load_rwkv5
from cross_encoder.training.best import BestTracker, infer_greater_is_better, resolve_metric
from cross_encoder.training.outputs.checkpoints import (BEST_NAME, CHECKPOINT_RE, FINAL_NAME, checkpoint_step,
                                                        load_training_state, remove_stale_dirs, rotate_checkpoints,
                                                        save_checkpoint)
from cross_encoder.training.config import TrainConfig
from cross_encoder.training.data import (BatchDataset, PaddedRows, collate, dataset_fingerprint, group_spans,
                                         load_padded_dataset, plan_epoch, plan_eval, read_padding_meta, row_format,
                                         shard_for_rank, split_groups)
from cross_encoder.training.outputs.log import MetricsWriter, plot_loss, truncate_metrics
from cross_encoder.training.losses import ACCURACY_THRESHOLD, NEEDS_WHOLE_GROUPS, get_loss, resolve_loss
from cross_encoder.training.metrics import all_metrics, metric_names, pool_metrics
from cross_encoder.training.outputs.run_dir import (flag_differences, newest_note, other_differences, plan_resume,
                                            refuse_resume, saved_flags)
from long_ctx.common.atomic import atomic_dir, write_json
from long_ctx.common.cli import UsageError
from long_ctx.common.progress import progress_bar

STATE_FORMAT = 1
#: Optimizer steps in a row whose loss or gradient may be non-finite (each skipped: no update)
#: before training stops with an error. Isolated overflow steps are survived; divergence is not.
NONFINITE_LIMIT = 3


class TrainingDiverged(UsageError):
    """The loss or the gradients stayed non-finite (too high a learning rate, no clipping)."""


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the peak LR after `step` scheduler steps: linear warmup, then cosine decay."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def _check_config(c: TrainConfig) -> None:
    for name in ("model_file", "ds_dir", "output_dir"):
        if not getattr(c, name):
            raise ValueError(f"--{name} is required")
    for name in ("bs", "grad_accum", "ctx_len", "lora_r", "log_every"):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    for name in ("save_every", "eval_every", "save_total_limit", "warmup_steps", "num_workers"):
        if getattr(c, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    if c.max_steps is not None and c.max_steps < 1:
        raise ValueError("--max_steps must be at least 1")
    if c.max_steps is None and c.epochs < 1:
        raise ValueError("--epochs must be at least 1 (or pass --max_steps)")
    if c.early_stopping_patience is not None and c.early_stopping_patience < 1:
        raise ValueError("--early_stopping_patience must be at least 1")
    if c.early_stopping_threshold < 0 or not math.isfinite(c.early_stopping_threshold):
        raise ValueError("--early_stopping_threshold must be a finite number >= 0")
    if c.eval_pool_limit is not None and c.eval_pool_limit < 0:
        raise ValueError("--eval_pool_limit must be >= 0 (0: every line)")


class _Trainer:
    def __init__(self, config: TrainConfig, rt: Runtime, on_step: Callable[[int], None] | None,
                 pool_eval: Any = None):
        self.c, self.rt, self.on_step, self.pool_eval_cls = config, rt, on_step, pool_eval
        self.out = Path(config.output_dir)
        self.log = print if rt.is_main else (lambda *a, **k: None)

    # ---------------------------------------------------------------- setup
    def preflight(self) -> None:
        """Everything that can refuse before the data is read (see the module docstring)."""
        _check_config(self.c)
        arch = check_model_file(self.c.model_file)
        # `--loss auto` is resolved from the rows' format before anything is compared or recorded.
        self.row_format = row_format(read_padding_meta(self.c.ds_dir))
        self.c = c = dataclasses.replace(self.c, loss=resolve_loss(self.c.loss, self.row_format))
        self.resolve_best_metric()
        c = self.c
        self.base = {"file": Path(c.model_file).name, "fingerprint": model_fingerprint(c.model_file)}
        plan = plan_resume(c)
        for note in plan.notes:
            self.log(note)
        self.resume = plan.found.path if plan.found else None
        self.changed_flags: dict[str, Any] = {}
        if self.resume is None:
            return
        try:
            self.resume_state = load_training_state(self.resume)
        except Exception as exc:  # the CRCs passed, yet it does not unpickle: not our format
            raise ValueError(f"{self.resume / 'training_state.pt'} cannot be read ({str(exc)[:100]}); move the "
                             "folder away to resume from an older checkpoint") from None
        self.resume_ce = load_ce_config(self.resume)
        fixed, self.changed_flags = flag_differences(saved_flags(self.resume_ce, self.resume_state), c)
        base = other_differences(self.resume_ce, {}, self.base, architecture(arch) if arch else {})
        if fixed or base:
            refuse_resume(self.resume, fixed + base)
        for key, v in self.changed_flags.items():
            self.log(f"note: --{key} is {v['now']} now, {v['checkpoint']} when {self.resume.name} was written")

    def resolve_best_metric(self) -> None:
        """--metric_for_best_model checked against what this run logs, defaulted, with its
        direction; recorded in the flags (a resume must select on the same)."""
        c = self.c
        if c.eval_input_file and self.pool_eval_cls is None:
            raise UsageError("--eval_input_file needs the raw-pool evaluator: call trainer.main(config, "
                             "pool_eval=cross_encoder.evaluation.raw_pools.RawPoolEval), as 1_peft_training_ce.py does")
        is_pool = self.row_format == "pool"
        self.row_metrics = metric_names(is_pool) if c.eval_fraction > 0 else []
        pool = self.pool_eval_cls.metric_names() if c.eval_input_file else []
        metric, greater = resolve_metric(c.metric_for_best_model, c.greater_is_better, self.row_metrics, pool,
                                         "eval_row_top1" if is_pool else "eval_group_top1")
        if c.early_stopping_patience is not None and metric is None:
            raise UsageError("--early_stopping_patience needs an evaluation: --eval_fraction > 0 or --eval_input_file")
        self.metric_given = c.metric_for_best_model is not None
        self.c = dataclasses.replace(c, metric_for_best_model=metric, greater_is_better=greater)

    def check_resume_data(self) -> None:
        if self.resume is not None:
            diff = other_differences(self.resume_ce, self.dataset_fp, self.base, {})
            if diff:
                refuse_resume(self.resume, diff)

    def load_data(self) -> None:
        c = self.c
        read_padding_meta(c.ds_dir)  # its errors say how to build the dataset
        self.rows: PaddedRows = load_padded_dataset(c.ds_dir, progress=self.rt.is_main)
        self.dataset_fp = dataset_fingerprint(self.rows)
        if self.rows.n_rows == 0:
            raise ValueError(f"{c.ds_dir} holds no rows")
        longest = int(self.rows.lengths.max())
        if longest > c.ctx_len:
            raise ValueError(f"{c.ds_dir} has rows of up to {longest} real tokens but --ctx_len is {c.ctx_len}; "
                             f"pass --ctx_len {longest} or more, or rebuild the rows with "
                             f"long_ctx/2_create_padded_data.py --max_length {c.ctx_len} --is_truncate")
        if not c.trim_batches and self.rows.max_length > c.ctx_len:
            raise ValueError(f"--no-trim_batches feeds full {self.rows.max_length}-token rows but --ctx_len is "
                             f"{c.ctx_len}; pass --ctx_len {self.rows.max_length} or keep trimming on")
        self.spans = group_spans(self.rows)
        self.train_groups, self.eval_groups = split_groups(self.spans.n_groups, c.eval_fraction, c.seed)
        if c.metric_for_best_model in self.row_metrics and self.eval_groups.size == 0 and not self.metric_given \
                and c.early_stopping_patience is None:
            # Only the default was unavailable (a tiny dataset): select on the raw pools, or on nothing.
            pool = self.pool_eval_cls.metric_names() if c.eval_input_file else []
            metric = pool[0] if pool else None
            c = self.c = dataclasses.replace(c, metric_for_best_model=metric,
                                             greater_is_better=infer_greater_is_better(metric) if metric else None)
        if c.metric_for_best_model in self.row_metrics and self.eval_groups.size == 0:
            raise ValueError(f"--eval_fraction {c.eval_fraction} holds out no group of {self.spans.n_groups}, so "
                             f"{c.metric_for_best_model} is never computed; raise --eval_fraction or pick an "
                             "--eval_input_file metric")
        self.pool_eval = None
        if c.eval_input_file:
            self.pool_eval = self.pool_eval_cls(c.eval_input_file, c.eval_pool_limit, self.scoring_config(),
                                                self.rt.rank, self.rt.world_size)
        self.has_eval = bool(self.eval_groups.size) or self.pool_eval is not None
        self.best = BestTracker(c.metric_for_best_model, c.greater_is_better, c.early_stopping_patience,
                                c.early_stopping_threshold) if c.metric_for_best_model else None
        self.whole_groups = NEEDS_WHOLE_GROUPS[c.loss]
        self.width = None if c.trim_batches else self.rows.max_length
        eval_batches = plan_eval(self.spans, self.rows.lengths, self.eval_groups, c.eval_bs or c.bs)
        self.eval_batches = eval_batches[self.rt.rank::self.rt.world_size]
        self._plans: dict[int, list[np.ndarray]] = {}

    def rank_plan(self, epoch: int) -> list[np.ndarray]:
        """This process's micro-batches of an epoch (cached: plans are pure functions of the epoch)."""
        if epoch not in self._plans:
            self._plans.clear()
            full = plan_epoch(self.spans, self.rows.lengths, self.train_groups, self.c.bs, self.c.seed, epoch,
                              self.whole_groups, self.c.group_by_length)
            self._plans[epoch] = shard_for_rank(full, self.rt.rank, self.rt.world_size)
        return self._plans[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return math.ceil(len(self.rank_plan(epoch)) / self.c.grad_accum)

    def build_model(self, resume: Path | None) -> None:
        c, rt = self.c, self.rt
        torch.manual_seed(c.seed)
        rwkv = load_rwkv5(c.model_file, device=rt.device, dtype=rt.base_dtype, with_head=False)
        self.model_config = rwkv.config
        rt.agree(lambda: self.check_model_fits(rwkv, resume))
        rwkv.gradient_checkpointing = c.grad_cp
        ce = CrossEncoder(rwkv, head_seed=c.seed)
        if resume is not None:
            # LoRA settings were compared with the flags before (a difference is refused).
            self.peft_model = PeftModel.from_pretrained(ce, str(resume), is_trainable=True)
        else:
            self.peft_model = attach_lora(ce, make_lora_config(c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets))
        lc = self.peft_model.peft_config["default"]
        self.lora_settings = {"r": lc.r, "alpha": lc.lora_alpha, "dropout": lc.lora_dropout,
                              "targets": sorted(lc.target_modules)}
        self.peft_model.train()
        # A listwise loss is a softmax within each row: adding a constant to every score changes
        # nothing, so the head's bias has a true gradient of exactly 0, and Adam would blow up its
        # rounding noise (~1e-9) into steps of size lr. It stays at its initial 0.
        frozen = {n for n, p in self.peft_model.named_parameters()
                  if c.loss == "listwise" and n.endswith(f"{HEAD_NAME}.modules_to_save.default.bias")}
        self.trainable = [p for n, p in self.peft_model.named_parameters() if p.requires_grad and n not in frozen]
        self.n_trainable = sum(p.numel() for p in self.trainable)
        self.n_total = sum(p.numel() for p in self.peft_model.parameters())
        self.model = DDP(self.peft_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) \
            if rt.distributed else self.peft_model
        self.loss_fn = get_loss(c.loss)

    def reconcile_best(self) -> None:
        """best/ holds this run's best step or nothing. A best/ written by the interrupted run after
        the step resumed from (an evaluation the resumed run may never repeat, e.g. with another
        --eval_every), or by an earlier run in this folder, would otherwise win `--adapter OUT`:
        it is rebuilt from checkpoint-<best step> when that is kept, else removed."""
        best = self.out / BEST_NAME
        if not best.is_dir():
            return
        try:
            step = checkpoint_step(best)
        except (OSError, KeyError, TypeError, ValueError):
            step = None
        want = self.best.step if self.best is not None else None
        if step is not None and step == want:
            return
        src = self.out / f"checkpoint-{want}"
        if want is not None and adapter_problem(src) is None:
            with atomic_dir(best) as tmp:
                for f in src.iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
                ce = orjson.loads((tmp / CE_CONFIG_NAME).read_bytes())
                write_json(tmp / CE_CONFIG_NAME, {**ce, "best": self.best.summary()})
            what = f"rebuilt from {src.name}"
        else:
            gone = best.with_name(f".{best.name}.old-{os.getpid()}")  # removed as one rename, then deleted
            os.replace(best, gone)
            shutil.rmtree(gone)
            what = "removed" + (f" (checkpoint-{want} is gone; best/ is written again at the next improvement)"
                                if want is not None else "")
        self.log(f"note: {best} was from step {step}, not this run's best so far "
                 f"({'none yet' if want is None else f'step {want}'}): {what}")

    def check_model_fits(self, rwkv, resume: Path | None) -> None:
        top = int(self.rows.tokens.max()) if self.rows.tokens.size else 0
        if top >= rwkv.config.vocab_size:
            raise ValueError(f"the dataset has token id {top} but the model's vocabulary is {rwkv.config.vocab_size}; "
                             "use a base model with the RWKV World vocabulary (65536)")
        if self.pool_eval is not None and self.pool_eval.max_token_id >= rwkv.config.vocab_size:
            raise ValueError(f"--eval_input_file has RWKV World token id {self.pool_eval.max_token_id} but the model's "
                             f"vocabulary is {rwkv.config.vocab_size}; use a base model with the World vocabulary "
                             "(65536)")
        if resume is not None:  # a legacy .pth is only inspected now that it is loaded
            check_architecture(rwkv.config, self.resume_ce, self.c.model_file, resume)

    def build_optimizer(self) -> None:
        c = self.c
        first = self.steps_in_epoch(0)
        if first == 0:
            raise ValueError(f"the training split ({self.train_groups.size} groups) gives fewer batches than "
                             f"processes ({self.rt.world_size}); use more data, a smaller --bs or fewer processes")
        self.total_steps = c.max_steps if c.max_steps is not None else sum(self.steps_in_epoch(e) for e in range(c.epochs))
        self.optimizer = torch.optim.AdamW(self.trainable, lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(c.warmup_steps, self.total_steps, c.min_lr_ratio))

    # ---------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        rngs = self.rt.gather_objects(rng)
        real, proc = self.rt.all_reduce_sum([self.real_local, self.proc_local])
        return {"format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.pos,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rngs, "world_size": self.rt.world_size, "seed": self.c.seed,
                "tokens_real": self.real_base + real, "tokens_processed": self.proc_base + proc,
                "nonfinite": {"total": self.bad_total, "in_a_row": self.bad_in_a_row, "recent": self.bad_recent},
                "best": self.best.state() if self.best else None}

    def restore(self, st: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.pos = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        bad = st.get("nonfinite") or {}
        self.bad_total, self.bad_in_a_row = int(bad.get("total", 0)), int(bad.get("in_a_row", 0))
        self.bad_recent = list(bad.get("recent", []))
        if self.best is not None:
            self.best.restore(st.get("best"))
        if self.rt.is_main:
            self.real_base, self.proc_base = float(st["tokens_real"]), float(st["tokens_processed"])
        if st["world_size"] == self.rt.world_size:
            rng = st["rng"][self.rt.rank]
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.rt.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.rt.device)
        else:
            # Positions are per-process batch indices, meaningless for another process count.
            self.log(f"note: checkpoint was written by {st['world_size']} processes, now {self.rt.world_size}: "
                     f"epoch {self.epoch} restarts from its first batch and dropout is re-seeded, so results "
                     "will differ from a run that kept its process count")
            torch.manual_seed(self.c.seed + 1 + self.rt.rank + 1000 * self.step)
            self.pos = 0

    def scoring_config(self) -> dict[str, Any]:
        """What a Reranker needs of cross_encoder_config.json: special ids, row length and format."""
        meta = self.rows.meta
        return {"sep_token_id": int(meta["sep_token_id"]), "cls_token_id": int(meta["cls_token_id"]),
                "pad_token_id": int(meta["pad_token_id"]), "max_length": int(meta["max_length"]),
                **self.row_format_config()}

    def ce_config(self) -> dict[str, Any]:
        meta = self.rows.meta
        return {
            "format": "rwkv5-cross-encoder", "format_version": 1, "step": self.step, "epoch": self.epoch,
            **self.scoring_config(), "is_truncate": meta.get("is_truncate"), "ctx_len": self.c.ctx_len,
            "loss": self.c.loss, "accuracy_threshold": ACCURACY_THRESHOLD[self.c.loss],
            "lora": self.lora_settings, "model": dataclasses.asdict(self.model_config),
            "base_model_file": Path(self.c.model_file).name, "dataset": str(self.c.ds_dir),
            # What a resume must match (run_dir.flag_differences / other_differences).
            "flags": self.c.to_dict(), "dataset_fingerprint": self.dataset_fp, "base_model": self.base,
        }

    def row_format_config(self) -> dict[str, Any]:
        """What cross_encoder_config.json says about the rows (the Reranker scores in that format)."""
        if not self.rows.is_pool:
            return {"row_format": "question + [SEP] + document + [CLS], right-padded; score read at length-1"}
        meta = self.rows.meta
        return {"row_format": "pool",
                "pool": {"layout": "question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS], right-padded; a score read "
                                   "at every CLS",
                         # stage 0's K (0: every usable document) and order, when every row shares them
                         "pool_docs": meta.get("pool_docs"), "doc_order": meta.get("doc_order"),
                         "documents_per_row": meta.get("documents_per_row"),
                         "max_length": int(meta["max_length"])}}

    def save(self, path: Path, metrics: dict[str, Any] | None = None) -> None:
        # Parameters are identical on every process (DDP), so all take this decision alike.
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable):
            raise TrainingDiverged(f"the weights are not finite after step {self.step}, so {path.name} was not "
                                   f"saved; {newest_note(self.c)}. Lower --lr or keep --max_grad_norm > 0")
        state = self.training_state()  # collective: every process takes part
        if self.rt.is_main:
            ce_config = self.ce_config()
            if path.name == BEST_NAME:  # which evaluation made it the best (the card shows its metrics)
                ce_config["best"] = self.best.summary()
            save_checkpoint(path, self.peft_model, ce_config, state, metrics)
            if CHECKPOINT_RE.match(path.name):
                rotate_checkpoints(self.out, self.c.save_total_limit)
        self.rt.barrier()

    # ---------------------------------------------------------------- steps
    def train_step(self, micro: list[dict[str, torch.Tensor]]) -> tuple[float, float, bool]:
        """Forward/backward over one accumulation window, then one optimizer step -> (loss, grad
        norm, whether the step was taken: not when the loss or gradient is non-finite anywhere)."""
        dev, n = self.rt.device, len(micro)
        loss_sum = 0.0
        for j, mb in enumerate(micro):
            with maybe_no_sync(self.model, skip_sync=j < n - 1):
                with self.rt.autocast():
                    scores = self.model(**self.model_inputs(mb))  # [S]: one per row, or per CLS of pool rows
                loss = self.loss_fn(scores.float(), mb["labels"].to(dev), mb["groups"].to(dev))
                # Dividing by the window's actual size keeps a short last window of an epoch a mean.
                (loss / n).backward()
            loss_sum += float(loss.detach())
            self.real_local += float(mb["lengths"].sum())
            self.proc_local += float(mb["input_ids"].numel())
        if self.c.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.c.max_grad_norm))
        else:
            norm = float(torch.norm(torch.stack([p.grad.norm() for p in self.trainable if p.grad is not None])))
        loss = loss_sum / n
        # The gradients are all-reduced, the loss is not: one process's inf loss must stop all.
        if self.rt.any_true(not (math.isfinite(loss) and math.isfinite(norm))):
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()  # the schedule stays a function of the step number
            return loss, norm, False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, norm, True

    def model_inputs(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = self.rt.device
        return {k: mb[k].to(dev) for k in ("input_ids", "lengths", "score_rows", "score_pos")}

    def evaluate(self) -> dict[str, float]:
        """The held-out split's metrics and the raw pools' (--eval_input_file); every process
        scores a share, and all continue with rank 0's numbers (which decide best/ and early
        stopping, so every process must take the same decision)."""
        out: dict[str, float] = self.evaluate_rows() if self.eval_groups.size else {}
        if self.pool_eval is not None:
            with self.rt.autocast():
                out.update(self.pool_eval.evaluate(self.peft_model, self.rt.gather_objects))
            self.peft_model.train()
        return self.rt.gather_objects(out)[0]

    def track_best(self) -> dict[str, Any]:
        """After an evaluation: rewrite best/ when it is the best so far; the row's best_* fields."""
        if self.best is None:
            return {}
        if self.best.update(self.step, self.last_eval):
            self.save(self.out / BEST_NAME, self.last_eval)
        row = self.best.row()
        if self.best.stop_reason:
            row["early_stop"] = self.best.stop_reason
        return row

    @torch.no_grad()
    def evaluate_rows(self) -> dict[str, float]:
        """Loss and metrics on the held-out groups (every process scores a share)."""
        model = self.peft_model  # not the DDP wrapper: no gradient sync in evaluation
        model.eval()
        scores, labels, groups = [], [], []
        for idx in self.eval_batches:
            mb = collate(self.rows, idx, None)
            with self.rt.autocast():
                s = model(**self.model_inputs(mb))
            scores.append(s.float().cpu().numpy())
            labels.append(mb["labels"].numpy())
            groups.append(mb["groups"].numpy())
        model.train()
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
        parts = self.rt.gather_objects((cat(scores, np.float32), cat(labels, np.int64), cat(groups, np.int64)))
        s = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        g = np.concatenate([p[2] for p in parts])
        loss = float(self.loss_fn(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(g)))
        if self.rows.is_pool:  # a score is one CLS, a group one row
            n_rows = int(np.unique(g).size)
            out = {"eval_loss": loss, "eval_rows": n_rows, "eval_groups": n_rows, "eval_documents": int(s.size)}
            out.update({f"eval_{k}": v for k, v in pool_metrics(s, y, g).items()})
            return out
        out = {"eval_loss": loss, "eval_rows": int(s.size), "eval_groups": int(np.unique(g).size)}
        out.update({f"eval_{k}": v for k, v in all_metrics(s, y, g, ACCURACY_THRESHOLD[self.c.loss]).items()})
        return out

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        c, rt = self.c, self.rt
        rt.agree(self.preflight)
        rt.agree(self.load_data)
        rt.agree(self.check_resume_data)
        resume = self.resume
        self.build_model(resume)
        rt.agree(self.build_optimizer)
        self.step, self.epoch, self.pos = 0, 0, 0
        self.real_local = self.proc_local = 0.0
        self.real_base = self.proc_base = 0.0
        self.bad_total, self.bad_in_a_row, self.bad_recent = 0, 0, []
        # Dropout draws from the global RNG: seed it per process after the model is built (the
        # init above also draws from it), or restore the exact stream of the interrupted run.
        torch.manual_seed(c.seed + 1 + rt.rank)
        if resume is not None:
            self.restore(self.resume_state)
        start_step = self.step
        if rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if remove_stale_dirs(self.out):
                self.log(f"removed half-written checkpoint folders left in {self.out} by a killed run")
            self.reconcile_best()
            dropped = truncate_metrics(self.out / "metrics.jsonl", self.step) if resume is not None else 0
            if dropped:
                self.log(f"dropped {dropped} metrics.jsonl rows after step {self.step} (that work is redone)")
            write_json(self.out / "config.json", self.run_config(resume))
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", fresh=resume is None) if rt.is_main else None
        kind = f"pool rows ({self.rows.score_pos.size} documents)" if self.rows.is_pool else "rows"
        pools = f" + {self.pool_eval.describe()} of {c.eval_input_file}" if self.pool_eval else ""
        self.log(f"{self.rows.n_rows} {kind} in {self.spans.n_groups} groups: {self.train_groups.size} groups train, "
                 f"{self.eval_groups.size} eval{pools} | trainable {self.n_trainable:,} of {self.n_total:,} params | "
                 f"{self.total_steps} steps, {rt.world_size} process(es) on {rt.device}, {rt.precision}")
        if self.best is not None:
            self.log(f"best checkpoint: {self.best.metric} ({'higher' if self.best.greater_is_better else 'lower'} is "
                     f"better) -> {self.out / BEST_NAME}"
                     + (f"; early stopping after {c.early_stopping_patience} evaluations without improvement"
                        if c.early_stopping_patience else ""))
        try:
            self.loop()
            return self.finish(start_step)
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def loop(self) -> None:
        c, rt = self.c, self.rt
        self.t0 = time.perf_counter()
        self.last_eval_step, self.last_eval = -1, {}
        self.stopped_early = self.best.stop_reason if self.best else None
        if self.stopped_early:  # a run that stopped early, resumed: nothing left to do
            self.log(self.stopped_early)
            return
        if c.eval_at_start and self.step == 0 and self.has_eval:
            self.last_eval = self.evaluate()
            self.write_row({"step": 0, "loss": None, "lr": self.scheduler.get_last_lr()[0], **self.last_eval,
                            **self.track_best()})
        win_loss, win_steps = 0.0, 0
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="training", unit="step",
                           disable=not rt.is_main)
        while self.step < self.total_steps:
            plan = self.rank_plan(self.epoch)
            if self.pos >= len(plan):
                self.epoch, self.pos = self.epoch + 1, 0
                if c.max_steps is None and self.epoch >= c.epochs:
                    break
                continue
            # An explicit generator: DataLoader would otherwise draw its base seed from the global
            # RNG, shifting dropout differently in a resumed run than in an uninterrupted one.
            loader = torch.utils.data.DataLoader(
                BatchDataset(self.rows, plan[self.pos:], self.width), batch_size=None, shuffle=False,
                num_workers=c.num_workers, generator=torch.Generator().manual_seed(c.seed))
            it = iter(loader)
            while self.pos < len(plan) and self.step < self.total_steps:
                n = min(c.grad_accum, len(plan) - self.pos)
                loss, norm, taken = self.train_step([next(it) for _ in range(n)])
                self.step += 1
                self.pos += n
                epoch_ended = self.pos >= len(plan)
                if epoch_ended:  # checkpoints taken now must point at the next epoch
                    self.epoch, self.pos = self.epoch + 1, 0
                if taken:
                    win_loss, win_steps = win_loss + loss, win_steps + 1
                    self.bad_in_a_row = 0
                else:
                    self.skipped(loss, norm)
                lr = self.scheduler.get_last_lr()[0]
                elapsed = max(time.perf_counter() - self.t0, 1e-9)
                bar.update(1)
                if rt.is_main:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                    tok_s=f"{self.real_local * rt.world_size / elapsed:,.0f}")
                last = self.step >= self.total_steps or self.epoch_done()
                do_eval = self.has_eval and (last or (c.eval_every > 0 and self.step % c.eval_every == 0))
                if self.step % c.log_every == 0 or do_eval or last:
                    row = self.train_row(win_loss / win_steps if win_steps else None, norm, lr, elapsed)
                    if do_eval:
                        self.last_eval = self.evaluate()
                        row.update(self.last_eval)
                        self.last_eval_step = self.step
                        row.update(self.track_best())
                    self.write_row(row)
                    win_loss, win_steps = 0.0, 0
                if c.save_every > 0 and self.step % c.save_every == 0:
                    at_step = self.last_eval if self.last_eval_step == self.step else None
                    self.save(self.out / f"checkpoint-{self.step}", at_step)
                if self.on_step is not None:
                    self.on_step(self.step)
                self.stopped_early = self.best.stop_reason if do_eval and self.best else None
                if epoch_ended or self.stopped_early:
                    break
            del it, loader
            if self.epoch_done() or self.stopped_early:
                break
        bar.close()
        if self.stopped_early:
            self.log(f"step {self.step}: {self.stopped_early}")

    def skipped(self, loss: float, norm: float) -> None:
        """Count a step that made no update; stop once NONFINITE_LIMIT came in a row."""
        self.bad_total += 1
        self.bad_in_a_row += 1
        self.bad_recent = (self.bad_recent + [self.step])[-NONFINITE_LIMIT:]
        where = " on some process" if self.rt.distributed else ""
        self.log(f"warning: step {self.step}: the loss or gradient is not finite{where} (here: loss {loss:.4g}, "
                 f"gradient norm {norm:.4g}); no update was made ({self.bad_in_a_row} in a row, {self.bad_total} in "
                 f"all; training stops at {NONFINITE_LIMIT} in a row)")
        if self.bad_in_a_row >= NONFINITE_LIMIT:
            steps = ", ".join(map(str, self.bad_recent))
            raise TrainingDiverged(f"training diverged: the loss or gradients were not finite at steps {steps} "
                                   f"({NONFINITE_LIMIT} in a row), so it stopped at step {self.step} without saving; "
                                   f"{newest_note(self.c)}. Lower --lr, or clip with --max_grad_norm 1")

    def epoch_done(self) -> bool:
        return self.c.max_steps is None and self.epoch >= self.c.epochs

    def train_row(self, loss: float | None, norm: float, lr: float, elapsed: float) -> dict[str, Any]:
        real, proc = self.rt.all_reduce_sum([self.real_local, self.proc_local])
        if loss is not None:  # None (every step of the window skipped) on all processes alike
            loss = self.rt.all_reduce_sum([loss])[0] / self.rt.world_size
        return {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
                "grad_norm": norm if math.isfinite(norm) else None, "skipped_steps": self.bad_total,
                "tokens_real": self.real_base + real, "tokens_processed": self.proc_base + proc,
                "processed_over_real": proc / real if real else None,
                "real_tokens_per_s": real / elapsed, "elapsed_s": elapsed}

    def write_row(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(row)

    def run_config(self, resume: Path | None) -> dict[str, Any]:
        return {**self.c.to_dict(), "resolved": {
            "device": str(self.rt.device), "precision": self.rt.precision, "world_size": self.rt.world_size,
            "total_steps": self.total_steps, "resumed_from": str(resume) if resume else None,
            "rows": self.rows.n_rows, "groups": self.spans.n_groups, "train_groups": int(self.train_groups.size),
            "eval_groups": int(self.eval_groups.size), "padding": self.rows.meta,
            "model": dataclasses.asdict(self.model_config), "lora": self.lora_settings,
            "trainable_params": self.n_trainable, "base_model": self.base, "dataset_fingerprint": self.dataset_fp,
            "changed_on_resume": self.changed_flags}}

    def finish(self, start_step: int) -> dict[str, Any]:
        rt = self.rt
        final_eval = {}
        if self.has_eval and self.last_eval_step != self.step:
            # Only when no step ran (a finished run resumed again); otherwise the last step evaluated.
            # The same step again: not another evaluation for best/ or the patience count.
            final_eval = self.evaluate()
            self.write_row({"step": self.step, "loss": None, "lr": self.scheduler.get_last_lr()[0], **final_eval})
        elif self.has_eval:
            final_eval = self.last_eval
        self.save(self.out / FINAL_NAME, final_eval)
        elapsed = time.perf_counter() - self.t0
        real, proc = rt.all_reduce_sum([self.real_local, self.proc_local])
        summary = {"steps_run": self.step - start_step, "step": self.step, "epoch": self.epoch,
                   "skipped_steps": self.bad_total,
                   "tokens_real": real, "tokens_processed": proc,
                   "processed_over_real": proc / real if real else None, "elapsed_s": elapsed,
                   "final_dir": str(self.out / FINAL_NAME), **final_eval}
        outcome = {"best": self.best.summary() if self.best else None, "stopped_early": self.stopped_early}
        # best/ can be missing: a resume whose best step's checkpoint was rotated away (reconcile_best).
        has_best = self.best is not None and self.best.step is not None and (self.out / BEST_NAME).is_dir()
        summary.update(outcome, best_dir=str(self.out / BEST_NAME) if has_best else None)
        if rt.is_main:
            write_json(self.out / "config.json", {**self.run_config(self.resume), "outcome": outcome})
            plot_loss(self.out / "metrics.jsonl", self.out / "loss.png")
            ev = " | ".join(f"{k[5:]} {v:.4f}" for k, v in final_eval.items()
                            if isinstance(v, float) and k != "eval_rows")
            self.log(f"done: steps {start_step}->{self.step} in {elapsed:.1f}s | tokens real {real:,.0f}, "
                     f"processed {proc:,.0f} ({summary['processed_over_real'] or 0:.2f}x) | "
                     f"{real / max(elapsed, 1e-9):,.0f} real tok/s" + (f"\neval: {ev}" if ev else ""))
            if self.best is not None and self.best.step is not None:
                self.log(f"best: step {self.best.step}, {self.best.metric} {self.best.value:.4f} -> "
                         + (summary["best_dir"] or "not kept (its checkpoint was gone when this run resumed); "
                            "--adapter OUT uses final/"))
            self.log(f"outputs: {self.out / FINAL_NAME}, {self.out / 'metrics.jsonl'}, {self.out / 'loss.png'}, "
                     f"{self.out / 'config.json'}")
        return summary


def main(config: TrainConfig, on_step: Callable[[int], None] | None = None, pool_eval: Any = None) -> dict[str, Any]:
    """Train (or continue training) a cross-encoder adapter; returns a summary dict.

    `on_step(step)` runs after every optimizer step (after any checkpoint of that step), e.g. to
    stop or inspect a run from Python. `pool_eval`: the raw-pool evaluator that --eval_input_file
    needs (`cross_encoder.evaluation.raw_pools.RawPoolEval`: training never imports evaluation).
    """
    rt = setup_runtime(config.device, config.precision)
    try:
        return _Trainer(config, rt, on_step, pool_eval).run()
    finally:
        teardown_runtime(rt)
