"""What the trainer leaves in its output folder: `checkpoints` (atomic checkpoint folders with
their model card, training state, rotation, leftovers of killed runs), `run_dir` (what in the
folder is the trainer's own, checked before any work, and which checkpoint a resume continues)
and `log` (metrics.jsonl and the loss plot). Imports `cross_encoder.modeling`,
`cross_encoder.training.config` and `long_ctx.common`; never the trainer loop.
"""
