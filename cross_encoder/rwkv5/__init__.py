"""RWKV-5 in plain PyTorch: official checkpoints, exact chunked WKV, resumable state, random init.

    from cross_encoder.rwkv5 import load_rwkv5
    model = load_rwkv5("RWKV-5-World-0.4B-v2-20231113-ctx4096.pth", device="cpu", dtype=torch.float32)
    logits = model(input_ids)                          # [B, T, 65536]
    h, state = model.hidden(prefix, return_state=True)  # [B, T, C] after ln_out, and the state
    h2 = model.hidden(suffix, state=expand_state(state, 8))
"""
from .checkpoint import (config_from_state_dict, init_state_dict, load_rwkv5, make_config, random_rwkv5,
                         save_rwkv5, write_random_checkpoint)
from .model import RWKV5, RWKV5Config, State, expand_state
from .ops import fused_available, wkv5, wkv5_chunked, wkv5_fused, wkv5_reference

__all__ = [
    "RWKV5", "RWKV5Config", "State", "config_from_state_dict", "expand_state", "fused_available",
    "init_state_dict", "load_rwkv5", "make_config", "random_rwkv5", "save_rwkv5", "wkv5", "wkv5_chunked",
    "wkv5_fused", "wkv5_reference", "write_random_checkpoint",
]
