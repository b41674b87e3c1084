"""Imported once by stage 1's fork server so every worker forked from it starts ready.

Workers are forked from a clean server process (never from the main process, whose Arrow and
tqdm threads could be mid-operation), after this module loaded the worker code and the ~235 MB
tokenizer: each worker then starts in milliseconds and shares the vocab pages instead of
importing and loading it again (~0.9 s of CPU and 235 MB per worker).
"""
import os

# One rayon thread per process (see long_ctx.stage1.records.init_worker); the pool does not exist yet, forking
# from here is safe, and each worker creates its own on first use.
os.environ["RAYON_NUM_THREADS"] = "1"

import long_ctx.stage1.records  # noqa: E402,F401  (the workers' code)
from long_ctx.world_tokenizer import get_tokenizer  # noqa: E402

get_tokenizer()
