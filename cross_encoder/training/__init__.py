"""The LoRA trainer: `config` (`TrainConfig`, whose fields define the CLI), `trainer` (`main`:
the loop, evaluation, resume, DDP), `data` (stage 2's rows in memory, splits, batch plans,
collation), `losses`, `metrics` (held-out classification/grouping metrics), `checkpoints`
(atomic save, training state, rotation) and `log` (metrics.jsonl, loss plot). Imports
`cross_encoder.modeling`, `cross_encoder.rwkv5`, `cross_encoder.runtime` and `long_ctx.common`.
"""
