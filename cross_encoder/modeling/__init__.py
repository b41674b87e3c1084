"""The cross-encoder model on an RWKV-5 trunk: `model` (`CrossEncoder`: trunk + score head read at
CLS; the peft LoRA configuration), `adapter_dirs` (what an adapter/checkpoint folder holds and how
one is found), `loading` (base `.pth` + adapter folder -> model in eval mode), `model_card` (the
README.md of every adapter folder) and `export` (the LoRA merged into one official `.pth` + the
score head). Imports `cross_encoder.rwkv5`, peft and torch; never training, evaluation or serving.

    from cross_encoder.modeling import load_cross_encoder

The names below resolve on first use: importing peft takes seconds, and code that only needs
`adapter_dirs` (finding a checkpoint, the server's /info) should not pay for it.
"""
import importlib

_EXPORTS = {
    "check_model_file": "loading", "load_ce_config": "loading", "load_cross_encoder": "loading",
    "resolve_adapter_dir": "loading", "CrossEncoder": "model", "attach_lora": "model",
    "make_lora_config": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
