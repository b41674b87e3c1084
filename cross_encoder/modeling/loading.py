"""Load a trained cross-encoder: base RWKV-5 checkpoint + adapter folder -> model and its config."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import torch
from peft import PeftModel

from cross_encoder.modeling.adapter_dirs import CE_CONFIG_NAME, newest_checkpoint
from cross_encoder.modeling.model import CrossEncoder
from cross_encoder.rwkv5 import load_rwkv5


def load_ce_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / CE_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {CE_CONFIG_NAME}: pass a checkpoint-<step>/ or "
                                "final/ folder written by cross_encoder/1_peft_training_ce.py")
    return orjson.loads(path.read_bytes())


def resolve_adapter_dir(adapter_dir: str | Path) -> Path:
    """A checkpoint folder as given, or for a training output folder its final/ (else newest checkpoint)."""
    p = Path(adapter_dir)
    if (p / "adapter_config.json").is_file():
        return p
    found = newest_checkpoint(p)
    if found is None:
        raise FileNotFoundError(f"no adapter in {adapter_dir}: expected adapter_config.json, or a "
                                "training output folder with final/ or checkpoint-<step>/")
    return found[1]


def load_cross_encoder(model_file: str | Path, adapter_dir: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, merge: bool = True) -> tuple[CrossEncoder, dict[str, Any]]:
    """Base checkpoint + trained adapter -> (model in eval mode, cross_encoder_config dict).

    The config holds sep_token_id / cls_token_id / pad_token_id / max_length (build rows with
    them), plus the LoRA and loss settings and the trunk shape. With merge=True the LoRA
    matrices are folded into the trunk and a plain CrossEncoder is returned (fastest); with
    merge=False it is the peft model, whose CrossEncoder methods are reachable the same way.
    """
    adapter_dir = resolve_adapter_dir(adapter_dir)
    ce_config = load_ce_config(adapter_dir)
    if not Path(model_file).is_file():
        raise FileNotFoundError(f"model file {model_file} not found; pass the base RWKV-5 .pth the adapter was trained on")
    rwkv = load_rwkv5(str(model_file), device=device, dtype=dtype, with_head=False)
    want = ce_config.get("model", {})
    for key in ("n_layer", "n_embd", "head_size"):
        if key in want and getattr(rwkv.config, key) != want[key]:
            raise ValueError(f"{model_file} has {key}={getattr(rwkv.config, key)} but the adapter in "
                             f"{adapter_dir} was trained on {key}={want[key]}; pass the matching base model")
    peft_model = PeftModel.from_pretrained(CrossEncoder(rwkv), str(adapter_dir), is_trainable=False)
    model = peft_model.merge_and_unload() if merge else peft_model
    model.eval()
    return model, ce_config
