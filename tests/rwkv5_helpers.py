"""Shared helpers for the RWKV-5 tests: an O(T^2) definitional WKV, perturbed random checkpoints, the pip oracle."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from cross_encoder.rwkv5 import write_random_checkpoint




def naive_wkv(r, k, v, log_w, u, state=None):
    """out_t = r_t . (sum_{s<t} w^(t-1-s) k_s^T v_s + u k_t^T v_t + w^t S0), straight from the definition.

    float64, O(T^2); shares no code with cross_encoder.rwkv5.ops. Shapes as there: [B, T, H, N].
    """
    r, k, v = (x.double() for x in (r, k, v))
    log_w, u = log_w.double(), u.double()
    B, T, H, N = r.shape
    out = torch.zeros(B, T, H, N, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            wt = u if s == t else torch.exp(log_w * (t - 1 - s))  # [H, N] weight per key channel
            score = (r[:, t] * wt * k[:, s]).sum(-1, keepdim=True)  # [B, H, 1]
            out[:, t] += score * v[:, s]
        if state is not None:
            out[:, t] += torch.einsum("bhi,bhij->bhj", r[:, t] * torch.exp(log_w * t), state.double())
    final = torch.zeros(B, H, N, N, dtype=torch.float64) if state is None else state.double() * torch.exp(log_w * T)[..., None]
    for s in range(T):
        final += torch.exp(log_w * (T - 1 - s))[..., None] * k[:, s, :, :, None] * v[:, s, :, None, :]
    return out, final


def random_wkv_inputs(B, T, H, N, seed=0, decay_range=(-6.0, 1.0), strong=False, dtype=torch.float32):
    """r, k, v, log_w, u with time_decay uniform in decay_range; `strong` adds w ~ 1e-9 .. 0 channels."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    time_decay = torch.empty(H, N, dtype=torch.float64).uniform_(*decay_range, generator=g)
    if strong:
        # exp(-exp(3)) ~ 2e-9 and exp(-exp(5)) ~ 1e-65 (0 in float32)
        time_decay[:, : N // 2] = torch.empty(H, N // 2, dtype=torch.float64).uniform_(3.0, 5.0, generator=g)
    log_w = -torch.exp(time_decay)
    u = torch.randn(H, N, generator=g, dtype=torch.float64) * 0.5
    return tuple(x.to(dtype) for x in (r, k, v, log_w, u))


def perturbed_checkpoint(path, n_layer=2, n_embd=64, head_size=16, vocab_size=300, version="5.2", seed=0,
                         noise=0.1, strong_decay=False, bonus_key="time_faaaa"):
    """A random official-layout checkpoint with every tensor jittered, so that no path (zero-initialised
    in RWKV-LM) is trivially inactive; optionally some channels with w ~ 1e-9."""
    write_random_checkpoint(path, n_layer, n_embd, head_size=head_size, vocab_size=vocab_size, version=version,
                            seed=seed, dtype=torch.float32)
    sd = torch.load(path, weights_only=True)
    g = torch.Generator().manual_seed(seed + 1000)
    sd = {k: t + noise * torch.randn(t.shape, generator=g) for k, t in sd.items()}
    if strong_decay:
        for k in sd:
            if k.endswith("att.time_decay"):
                sd[k].view(-1)[::3] = 3.0  # w = exp(-exp(3)) ~ 2e-9
    if bonus_key == "time_first":
        sd = {k.replace("time_faaaa", "time_first"): t for k, t in sd.items()}
    torch.save(sd, path)
    return Path(path)


def pip_rwkv_class(monkeypatch):
    """rwkv.model.RWKV with its JIT and CUDA switched off; it reads these flags at import time."""
    # Its loader calls gc.collect() per layer, seconds each inside a large pytest process.
    monkeypatch.setattr("gc.collect", lambda *args: 0)
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    monkeypatch.delenv("RWKV_V7_ON", raising=False)
    if "rwkv.model" in sys.modules:
        return sys.modules["rwkv.model"].RWKV
    return importlib.import_module("rwkv.model").RWKV
