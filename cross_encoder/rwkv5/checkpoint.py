"""Official RWKV-5 checkpoints: infer the config, load (memory-mapped), save, and write random ones."""
from __future__ import annotations

import math
import os
import re
from typing import Mapping

import torch
from torch import nn

from long_ctx.common.atomic import atomic_file

from .model import RWKV5, RWKV5Config

Tensor = torch.Tensor


def config_from_state_dict(sd: Mapping[str, Tensor]) -> RWKV5Config:
    """Read the architecture off the official keys (version from ln_x / att.gate / 2-D time_decay)."""
    if "emb.weight" not in sd or "blocks.0.att.key.weight" not in sd:
        raise ValueError("not an RWKV checkpoint: it has no emb.weight / blocks.0.att.key.weight")
    if any("time_maa" in k for k in sd) or any(".att.x_r" in k or ".att.w0" in k for k in sd):
        raise ValueError("this is an RWKV-6/7 checkpoint; only RWKV-5 (5.0 / 5.1 / 5.2) is supported")
    if "blocks.0.att.ln_x.weight" not in sd:
        raise ValueError("this looks like an RWKV-4 checkpoint (no att.ln_x); only RWKV-5 is supported")
    vocab_size, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    decay = sd["blocks.0.att.time_decay"]
    n_head = decay.shape[0]
    dim_att = sd["blocks.0.att.key.weight"].shape[0]
    version = "5.0"
    if "blocks.0.att.gate.weight" in sd:
        version = "5.1"
    if decay.dim() > 1 and decay.shape[1] > 1:  # the rule ChatRWKV uses
        version = "5.2"
    bonus_key = "time_faaaa" if "blocks.0.att.time_faaaa" in sd else "time_first"
    if f"blocks.0.att.{bonus_key}" not in sd:
        raise ValueError("checkpoint has neither att.time_faaaa nor att.time_first")
    return RWKV5Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, head_size=dim_att // n_head,
                       dim_att=dim_att, dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0],
                       vocab_size=vocab_size, version=version, bonus_key=bonus_key)


def make_config(n_layer: int, n_embd: int, head_size: int = 64, vocab_size: int = 65536,
                version: str = "5.2") -> RWKV5Config:
    """The official shape rules: dim_att = n_embd, dim_ffn = 3.5 * n_embd rounded down to 32."""
    if n_embd % head_size:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of head_size ({head_size})")
    return RWKV5Config(n_layer=n_layer, n_embd=n_embd, n_head=n_embd // head_size, head_size=head_size,
                       dim_att=n_embd, dim_ffn=max(32, int(n_embd * 3.5) // 32 * 32), vocab_size=vocab_size,
                       version=version)


def _ratio(i: int, n: int) -> float:
    """i / (n - 1), defined as 0 for n == 1 (one layer or one head)."""
    return i / (n - 1) if n > 1 else 0.0


def init_state_dict(config: RWKV5Config, seed: int = 0, exact_rwkv_lm_init: bool = False,
                    with_head: bool = True) -> dict[str, Tensor]:
    """float32 weights initialised like RWKV-LM's v5 `generate_init_weight` and layer constructors.

    Per-layer time-mix curves from i / n_embd raised to depth-dependent powers, decay speeds spread
    -6 .. -1 over channels (5.2) or heads (5.0 / 5.1), a zig-zag bonus, ln_x scaled by depth, tiny
    uniform embeddings, orthogonal matrices. RWKV-LM zero-initialises att.output, ffn.value and
    ffn.receptance; a checkpoint written that way ignores context entirely, so unless
    exact_rwkv_lm_init is set those get a small orthogonal init (gain 0.1) instead.
    """
    c = config
    gen = torch.Generator().manual_seed(seed)
    C, A, H, N, L = c.n_embd, c.dim_att, c.n_head, c.head_size, c.n_layer
    ddd = (torch.arange(C, dtype=torch.float64) / C).view(1, 1, C)
    sd: dict[str, Tensor] = {}

    def matrix(name: str, rows: int, cols: int) -> None:
        gain, scale = (math.sqrt(rows / cols) if rows > cols else 1.0), 1.0
        if name in ("head.weight",):
            scale = 0.5
        elif any(z in name for z in (".att.output.", ".ffn.value.", ".ffn.receptance.")):
            scale = 0.0 if exact_rwkv_lm_init else 0.1
        w = torch.empty(rows, cols)
        if scale == 0.0:
            w.zero_()
        else:
            nn.init.orthogonal_(w, gain=gain * scale, generator=gen)
        sd[name] = w

    def layer_norm(name: str, dim: int, weight: float = 1.0) -> None:
        sd[f"{name}.weight"] = torch.full((dim,), weight)
        sd[f"{name}.bias"] = torch.zeros(dim)

    sd["emb.weight"] = torch.empty(c.vocab_size, C).uniform_(-1e-4, 1e-4, generator=gen)
    for i in range(L):
        p = f"blocks.{i}."
        r01, r10 = _ratio(i, L), 1.0 - i / L  # 0 -> 1 and 1 -> ~0 over depth
        if i == 0:
            layer_norm(p + "ln0", C)
        layer_norm(p + "ln1", C)
        layer_norm(p + "ln2", C)
        a = p + "att."
        sd[a + "time_mix_k"] = ddd ** r10
        sd[a + "time_mix_v"] = ddd ** r10 + 0.3 * r01
        sd[a + "time_mix_r"] = ddd ** (0.5 * r10)
        if c.gated:
            sd[a + "time_mix_g"] = ddd ** (0.5 * r10)
        if c.per_channel_decay:
            n = torch.arange(A, dtype=torch.float64)
            frac = n / max(A - 1, 1)
            sd[a + "time_decay"] = (-6 + 5 * frac ** (0.7 + 1.3 * r01)).view(H, N)
            zigzag = ((n + 1) % 3 - 1) * 0.1
            bonus = (r01 * (1 - frac) + zigzag).view(H, N)
        else:
            frac = torch.tensor([_ratio(h, H) for h in range(H)], dtype=torch.float64)
            sd[a + "time_decay"] = -6 + 5 * frac ** (0.7 + 1.3 * r01)
            bonus = r01 * (1 - frac)
        # A "time_first" checkpoint stores log(u); keep u > 0 there.
        sd[a + c.bonus_key] = bonus if c.bonus_key == "time_faaaa" else torch.full((H,), -3.0, dtype=torch.float64)
        for name in ("receptance", "key", "value") + (("gate",) if c.gated else ()):
            matrix(f"{a}{name}.weight", A, C)
        matrix(a + "output.weight", C, A)
        sd[a + "ln_x.weight"] = torch.full((A,), ((1 + i) / L) ** 0.7)
        sd[a + "ln_x.bias"] = torch.zeros(A)
        f = p + "ffn."
        sd[f + "time_mix_k"] = ddd ** r10
        sd[f + "time_mix_r"] = ddd ** r10
        matrix(f + "key.weight", c.dim_ffn, C)
        matrix(f + "receptance.weight", C, C)
        matrix(f + "value.weight", C, c.dim_ffn)
    layer_norm("ln_out", C)
    if with_head:
        matrix("head.weight", c.vocab_size, C)
    return {k: v.float().contiguous() for k, v in sd.items()}


def write_random_checkpoint(path: str | os.PathLike, n_layer: int, n_embd: int, head_size: int = 64,
                            vocab_size: int = 65536, version: str = "5.2", seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16, exact_rwkv_lm_init: bool = False) -> None:
    """Write a random RWKV-5 checkpoint in the official key layout (see init_state_dict), atomically."""
    config = make_config(n_layer, n_embd, head_size, vocab_size, version)
    sd = {k: v.to(dtype) for k, v in init_state_dict(config, seed, exact_rwkv_lm_init).items()}
    with atomic_file(path, "wb") as fh:
        torch.save(sd, fh)


def _open_state_dict(path: str | os.PathLike) -> Mapping[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; pass the path of an RWKV-5 .pth file") from None
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        # Legacy (pre-zipfile) .pth files cannot be memory-mapped; they load fully, once.
        return torch.load(path, map_location="cpu", weights_only=True)


def model_from_state_dict(sd: Mapping[str, Tensor], device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, with_head: bool = True) -> RWKV5:
    """Build a model on `device` in `dtype` and copy `sd` into it one tensor at a time."""
    config = config_from_state_dict(sd)
    if with_head and "head.weight" not in sd:
        raise ValueError("checkpoint has no head.weight; load it with with_head=False")
    with torch.device("meta"):
        model = RWKV5(config, with_head=with_head)
    # Allocated once, in the target dtype; each source tensor is cast straight into place, so no
    # second full copy (the mmap'd source pages are file-backed and never all resident).
    model = model.to(dtype=dtype).to_empty(device=device)
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and k != "head.weight"]
    if missing or unexpected:
        raise ValueError(f"checkpoint keys do not match RWKV-{config.version}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, param in expected.items():
            src = sd[name]
            if src.shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != model shape {tuple(param.shape)}")
            param.copy_(src)
    return model


def load_rwkv5(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               with_head: bool = True) -> RWKV5:
    """Load an official RWKV-5 .pth; with_head=False never reads head.weight (65536 x C)."""
    return model_from_state_dict(_open_state_dict(path), device, dtype, with_head)


def save_rwkv5(model: RWKV5, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Save in the official layout (loadable by load_rwkv5 and ChatRWKV), atomically."""
    sd = {k: (v.detach().to("cpu", dtype) if dtype else v.detach().cpu()).contiguous()
          for k, v in model.state_dict().items()}
    with atomic_file(path, "wb") as fh:
        torch.save(sd, fh)


def random_rwkv5(config: RWKV5Config, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, with_head: bool = True,
                 exact_rwkv_lm_init: bool = False) -> RWKV5:
    """A randomly initialised model without a file (benchmarks)."""
    return model_from_state_dict(init_state_dict(config, seed, exact_rwkv_lm_init, with_head), device, dtype,
                                 with_head)
