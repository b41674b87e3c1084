"""Export a trained cross-encoder as one RWKV-5 `.pth` with the LoRA merged, plus its score head:
`main(ExportConfig)`, the code behind `cross_encoder/5_export.py`.

    EXPORT/model.pth                  trunk with LoRA merged, official RWKV-5 keys (+ the base's
                                      head.weight when it had one), each tensor in the base's dtype
                                      (or --dtype)
    EXPORT/score_head.safetensors     weight [1, n_embd], bias [1], float32: score = h_CLS @ weight.T + bias
    EXPORT/cross_encoder_config.json  the adapter's config (special ids, max_length, ...) + an `export` block
    EXPORT/README.md                  the model card

The merge runs in float32 (the base upcast, peft's `merge_and_unload`) and is cast once at the
end, so a bf16 export holds the float32 merge rounded once. The folder is written atomically and
only ever replaces an earlier export (its marker: `score_head.safetensors`) with --overwrite.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from cross_encoder.modeling.adapter_dirs import CE_CONFIG_NAME
from cross_encoder.modeling.loading import (check_model_file, load_ce_config, load_cross_encoder, model_fingerprint,
                                            resolve_adapter_dir)
from cross_encoder.modeling.model_card import CARD_NAME, write_model_card
from cross_encoder.rwkv5 import save_rwkv5
from long_ctx.common.atomic import atomic_dir, atomic_file, check_output_dir, write_json

MODEL_NAME = "model.pth"
SCORE_HEAD_NAME = "score_head.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExportConfig:
    model_file: str
    adapter: str
    output_dir: str
    dtype: str | None = None  # fp32 | bf16 | fp16; None: each tensor in the base file's dtype
    overwrite: bool = False


def _open_base(path: str | Path) -> dict[str, torch.Tensor]:
    """The base's tensors, memory-mapped (a legacy pre-zip file is read whole)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def _dtype_name(dtypes: set[torch.dtype]) -> str:
    names = {v: k for k, v in DTYPES.items()}
    return "+".join(sorted(names.get(d, str(d).removeprefix("torch.")) for d in dtypes))


def main(config: ExportConfig) -> dict[str, Any]:
    """Merge the adapter into the base and write the export folder; returns a summary."""
    if config.dtype is not None and config.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    check_model_file(config.model_file)
    adapter_dir = resolve_adapter_dir(config.adapter)
    out = check_output_dir(config.output_dir, markers=(SCORE_HEAD_NAME,), what="cross-encoder export",
                           inputs=[config.model_file, adapter_dir], overwrite=config.overwrite)
    ce_config = load_ce_config(adapter_dir)
    trained_on = (ce_config.get("base_model") or {}).get("fingerprint")
    if trained_on and trained_on != model_fingerprint(config.model_file):
        print(f"note: {config.model_file} is not byte for byte the base file the adapter was trained on "
              f"({ce_config['base_model'].get('file')}); the architecture matches, so it is merged anyway",
              file=sys.stderr)
    base = _open_base(config.model_file)
    model, _ = load_cross_encoder(config.model_file, adapter_dir, dtype=torch.float32, merge=True)
    rwkv = model.rwkv
    with torch.no_grad():
        if "head.weight" in base:
            # The LM head is no part of the cross-encoder: it goes out as the base had it.
            rwkv.head = torch.nn.Linear(rwkv.config.n_embd, rwkv.config.vocab_size, bias=False, device="meta")
            rwkv.head.weight = torch.nn.Parameter(base["head.weight"], requires_grad=False)
        for name, p in rwkv.named_parameters():
            p.data = p.data.to(DTYPES[config.dtype] if config.dtype else base[name].dtype)
        head = {"weight": model.score.weight.detach().float().contiguous(),  # [1, C]
                "bias": model.score.bias.detach().float().contiguous()}  # [1]
    dtypes = {p.dtype for p in rwkv.parameters()}
    info = {"adapter": str(adapter_dir), "step": ce_config.get("step"), "base_model_file": Path(config.model_file).name,
            "dtype": _dtype_name(dtypes), "lm_head": "head.weight" in base, "model_file": MODEL_NAME,
            "score_head_file": SCORE_HEAD_NAME, "score": "ln_out hidden state at the CLS @ weight.T + bias"}
    out_config = {**ce_config, "export": info}
    with atomic_dir(out) as tmp:
        save_rwkv5(rwkv, tmp / MODEL_NAME)
        with atomic_file(tmp / SCORE_HEAD_NAME) as fh:  # not save_file: that makes the file 0600
            fh.write(safetensors_bytes(head, metadata={"format": "pt", "score": info["score"]}))
        write_json(tmp / CE_CONFIG_NAME, out_config)
        write_model_card(tmp / CARD_NAME, out_config, ce_config.get("eval_metrics"), export=info)
    n_params = sum(p.numel() for p in rwkv.parameters())
    print(f"exported {adapter_dir} (step {info['step']}) merged into {Path(config.model_file).name} -> {out}: "
          f"{MODEL_NAME} ({n_params:,} parameters, {info['dtype']}, LM head {'kept' if info['lm_head'] else 'none'}), "
          f"{SCORE_HEAD_NAME}, {CE_CONFIG_NAME}, {CARD_NAME}")
    return {"output_dir": str(out), "parameters": n_params, **info}
