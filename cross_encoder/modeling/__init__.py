"""The cross-encoder model on an RWKV-5 trunk: `model` (`CrossEncoder`: trunk + score head read at
CLS; the peft LoRA configuration), `adapter_dirs` (what an adapter/checkpoint folder holds and how
one is found) and `loading` (base `.pth` + adapter folder -> model in eval mode). Imports
`cross_encoder.rwkv5`, peft and torch; never training, evaluation or serving.

    from cross_encoder.modeling import load_cross_encoder
"""
from cross_encoder.modeling.loading import (check_model_file, load_ce_config, load_cross_encoder,
                                           resolve_adapter_dir)
from cross_encoder.modeling.model import CrossEncoder, attach_lora, make_lora_config

__all__ = ["CrossEncoder", "attach_lora", "check_model_file", "load_ce_config", "load_cross_encoder",
           "make_lora_config", "resolve_adapter_dir"]
