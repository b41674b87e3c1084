"""Export a trained cross-encoder for other RWKV runtimes: one RWKV-5 .pth with the LoRA merged
(official key layout, the base's LM head kept) plus the score head, its config and a model card.

    python cross_encoder/5_export.py --model_file M.pth --adapter OUT/final --output_dir EXPORT

Writes EXPORT/model.pth, EXPORT/score_head.safetensors, EXPORT/cross_encoder_config.json and
EXPORT/README.md, atomically. Reference: docs/export.md.
"""
import argparse

from cross_encoder.cli_flags import add_model_flags
from cross_encoder.modeling.export import DTYPES, ExportConfig, main
from long_ctx.common.cli import run_cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--output_dir", required=True, help="export folder to create (a new or empty folder, or an earlier export with --overwrite)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="dtype of every tensor of model.pth (default: each tensor as in the base file)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output_dir (any other folder with files is refused)")
    a = p.parse_args()
    run_cli(main, ExportConfig(model_file=a.model_file, adapter=a.adapter, output_dir=a.output_dir, dtype=a.dtype,
                               overwrite=a.overwrite))
