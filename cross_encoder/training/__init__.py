"""The LoRA trainer: `config` (`TrainConfig`, whose fields define the CLI), `trainer` (`main`:
the loop, evaluation, resume, DDP), `data` (stage 2's rows in memory, splits, batch plans,
collation), `losses`, `metrics` (held-out classification/grouping metrics), `best` (best/ and
early stopping) and `outputs/`
(checkpoints, what in the output folder is the trainer's own, metrics.jsonl and the loss plot).
Imports `cross_encoder.modeling`, `cross_encoder.rwkv5`, `cross_encoder.runtime` and
`long_ctx.common`; never serving or evaluation.
"""
