"""RWKV-5 WKV kernels: a step-by-step reference, an exact chunked PyTorch version, an optional fused one.

All kernels compute, per batch row and head (S is the [N_key, N_value] state, w = exp(log_w)):

    out_t = r_t @ (diag(u) k_t^T v_t + S_t)
    S_{t+1} = k_t^T v_t + diag(w) S_t

Shapes (all kernels): r, k, v [B, T, H, N]; log_w, u [H, N]; state [B, H, N, N] float32.
They return (out [B, T, H, N] float32, final state [B, H, N, N] float32). Inputs of any float dtype
are computed in float32 (float64 stays float64), because the state accumulates over thousands of tokens.

Decays are passed as log_w = -exp(time_decay) <= 0, never as w: official checkpoints have heads with
w ~ 1e-9, whose powers underflow, so the chunked kernel only ever evaluates exp(log_w * d) for d >= 0.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from functools import lru_cache, wraps
from typing import Callable

import torch

Tensor = torch.Tensor

# Chunk length of the chunked kernel. Intra-chunk cost grows with it and the sequential inter-chunk
# loop shrinks with it; 64 was fastest on CPU for T = 512 .. 8192 (bench/bench_rwkv5.py --kernel).
DEFAULT_CHUNK_LEN = 64

# fla's chunk kernels raise for T < H and gain nothing on short inputs.
FUSED_MIN_T = 64

IMPLS = ("auto", "chunked", "reference", "fused")


def _float32_math(kernel: Callable) -> Callable:
    """Run `kernel` with autocast off: under torch.autocast (the trainer's bf16 default on CUDA) its
    matmuls would otherwise run in bf16 and return a bf16 output, while the state and the products
    that feed it must stay float32 over thousands of tokens."""
    @wraps(kernel)
    def wrapper(r: Tensor, *args, **kwargs):
        with torch.autocast(device_type=r.device.type, enabled=False):
            return kernel(r, *args, **kwargs)
    return wrapper


def _prepare(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None):
    if r.dim() != 4 or r.shape != k.shape or r.shape != v.shape:
        raise ValueError(f"r, k, v must all be [B, T, H, N]; got {tuple(r.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, N = r.shape
    if log_w.shape != (H, N) or u.shape != (H, N):
        raise ValueError(f"log_w and u must be [H, N] = [{H}, {N}]; got {tuple(log_w.shape)}, {tuple(u.shape)}")
    # float32 at least; float64 inputs stay float64 so tests can compare against an exact oracle.
    dtype = torch.promote_types(r.dtype, torch.float32)
    if state is None:
        state = r.new_zeros((B, H, N, N), dtype=dtype)
    elif state.shape != (B, H, N, N):
        raise ValueError(f"state must be [B, H, N, N] = [{B}, {H}, {N}, {N}]; got {tuple(state.shape)}")
    return tuple(x.to(dtype) for x in (r, k, v, log_w, u, state))


@_float32_math
def wkv5_reference(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
                   state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence one token at a time: the readable definition the other kernels are tested against."""
    r, k, v, log_w, u, S = _prepare(r, k, v, log_w, u, state)
    w = torch.exp(log_w).unsqueeze(-1)  # [H, N, 1]: decays the key rows of S
    uu = u.unsqueeze(-1)  # [H, N, 1]
    outs = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, N, N]
        outs.append((r[:, t, :, None, :] @ (uu * kv + S)).squeeze(-2))  # [B, H, N]
        S = kv + w * S
    out = torch.stack(outs, dim=1) if outs else r.new_zeros(r.shape)
    return out, S


def _powers(log_w: Tensor, exponents: Tensor) -> Tensor:
    """w ** exponents per channel as exp(log_w * e), e >= 0: [H, N] x [L] -> [H, L, N]."""
    return torch.exp(log_w.unsqueeze(1) * exponents.unsqueeze(-1))


def _level(rc: Tensor, kc: Tensor, vc: Tensor, log_w: Tensor, h: int):
    """One halving level: views of the halves and the decay factors. Shapes [B, H, C, nb, 2, h, N]."""
    B, H, C, L, N = rc.shape
    shape = (B, H, C, L // (2 * h), 2, h, N)
    pos = torch.arange(h, device=rc.device, dtype=rc.dtype)
    wq = _powers(log_w, pos).view(1, H, 1, 1, h, N)  # w^(t - mid), t in the second half
    wk = _powers(log_w, h - 1 - pos).view(1, H, 1, 1, h, N)  # w^(mid - 1 - s), s in the first half
    return shape, pos, wq, wk, rc.view(shape), kc.view(shape), vc.view(shape)


class _WithinChunk(torch.autograd.Function):
    """(r_t . u k_t) v_t + sum_{s<t in the same chunk} (sum_i r_t[i] k_s[i] w_i^(t-1-s)) v_s, exactly.

    rc, kc, vc [B, H, C, L, N] (contiguous, L a power of two), log_w, u [H, N] -> [B, H, C, L, N].
    Recursive halving: in every block of size 2h the second half attends to the first half with the
    reference point at the boundary, w^(t-1-s) = w^(t-mid) * w^(mid-1-s), so both factors have
    exponents in [0, h-1] and nothing is ever divided by an underflowing decay power. Summed over
    log2(L) levels this is the work of one dense L x L product per chunk.

    Hand-written backward: autograd through the half-block slices would zero-fill a full-size
    gradient per slice and level, which made backward several times slower than forward.
    """

    @staticmethod
    def forward(ctx, rc: Tensor, kc: Tensor, vc: Tensor, log_w: Tensor, u: Tensor) -> Tensor:
        H, N = u.shape
        out = (rc * kc * u.view(1, H, 1, 1, N)).sum(-1, keepdim=True) * vc  # the current token's bonus
        h = rc.shape[3] // 2
        while h >= 1:
            shape, _, wq, wk, r2, k2, v2 = _level(rc, kc, vc, log_w, h)
            q, kk, vv = r2[..., 1, :, :] * wq, k2[..., 0, :, :] * wk, v2[..., 0, :, :]
            if h == 1:  # batched 1x1 matmuls are mostly overhead; broadcasting is much faster
                contrib = (q * kk).sum(-1, keepdim=True) * vv
            else:
                contrib = (q @ kk.transpose(-1, -2)) @ vv  # [.., h, h] @ [.., h, N]
            out.view(shape)[..., 1, :, :] += contrib
            h //= 2
        ctx.save_for_backward(rc, kc, vc, log_w, u)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        rc, kc, vc, log_w, u = ctx.saved_tensors
        H, N = u.shape
        grad = grad.contiguous()
        uu = u.view(1, H, 1, 1, N)
        dbonus = (grad * vc).sum(-1, keepdim=True)  # [B, H, C, L, 1]
        dv = (rc * kc * uu).sum(-1, keepdim=True) * grad
        dr, dk = dbonus * uu * kc, dbonus * uu * rc
        du = (dbonus * rc * kc).sum((0, 2, 3)) if ctx.needs_input_grad[4] else None
        dlog_w = torch.zeros_like(log_w)
        h = rc.shape[3] // 2
        while h >= 1:
            shape, pos, wq, wk, r2, k2, v2 = _level(rc, kc, vc, log_w, h)
            q, kk, vv = r2[..., 1, :, :] * wq, k2[..., 0, :, :] * wk, v2[..., 0, :, :]
            g = grad.view(shape)[..., 1, :, :]  # d contrib
            if h == 1:
                att = (q * kk).sum(-1, keepdim=True)
                datt = (g * vv).sum(-1, keepdim=True)
                dvv, dq, dkk = att * g, datt * kk, datt * q
            else:
                att = q @ kk.transpose(-1, -2)
                datt = g @ vv.transpose(-1, -2)
                dvv, dq, dkk = att.transpose(-1, -2) @ g, datt @ kk, datt.transpose(-1, -2) @ q
            dv.view(shape)[..., 0, :, :] += dvv
            dr.view(shape)[..., 1, :, :] += dq * wq
            dk.view(shape)[..., 0, :, :] += dkk * wk
            if ctx.needs_input_grad[3]:
                # d/dlog_w of exp(log_w * e) is e * exp(log_w * e): weight the products by exponent
                per_pos_q = (dq * q).sum((0, 2, 3))  # [H, h, N]
                per_pos_k = (dkk * kk).sum((0, 2, 3))
                dlog_w += (per_pos_q * pos.view(1, h, 1)).sum(1) + (per_pos_k * (h - 1 - pos).view(1, h, 1)).sum(1)
            h //= 2
        return dr, dk, dv, dlog_w, du


@_float32_math
def wkv5_chunked(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
                 state: Tensor | None = None, chunk_len: int = DEFAULT_CHUNK_LEN) -> tuple[Tensor, Tensor]:
    """Chunked parallel form in PyTorch (autograd; CPU and GPU): exact for any decay.

    Chunks of `chunk_len` tokens: inside a chunk the exact halving scheme of _WithinChunk, across
    chunks a short sequential loop carrying the state (T / chunk_len steps).
    """
    if chunk_len < 1 or chunk_len & (chunk_len - 1):
        raise ValueError(f"chunk_len must be a power of two, got {chunk_len}")
    r, k, v, log_w, u, S = _prepare(r, k, v, log_w, u, state)
    B, T, H, N = r.shape
    if T == 0:
        return r.new_zeros(r.shape), S
    L = min(chunk_len, 1 << (T - 1).bit_length())  # short inputs get one small chunk
    C = -(-T // L)
    pad = C * L - T
    last = L - pad  # valid length of the last chunk

    def chunks(x: Tensor) -> Tensor:  # [B, T, H, N] -> [B, H, C, L, N], contiguous
        # Contiguous once here, so that every half-block slice below collapses into a plain
        # batched-matmul operand instead of being copied again at every level.
        x = x.transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.contiguous().view(B, H, C, L, N)

    rc, kc, vc = chunks(r), chunks(k), chunks(v)

    out = _WithinChunk.apply(rc, kc, vc, log_w, u)

    # Each chunk's contribution to the state after it: sum_s w^(len-1-s) k_s^T v_s. The padded tail
    # of the last chunk has k = 0; its exponents are clamped at 0 so they stay finite.
    pos = torch.arange(L, device=r.device, dtype=r.dtype)
    kv = (kc * _powers(log_w, L - 1 - pos).view(1, H, 1, L, N)).transpose(-1, -2) @ vc  # [B, H, C, N, N]
    decay = torch.exp(log_w * L).view(1, H, N, 1)
    if pad:
        kv_last = (kc[:, :, -1] * _powers(log_w, (last - 1 - pos).clamp(min=0)).unsqueeze(0)).transpose(-1, -2) @ vc[:, :, -1]
        kv = torch.cat([kv[:, :, :-1], kv_last.unsqueeze(2)], dim=2)
    decay_last = torch.exp(log_w * last).view(1, H, N, 1)

    # Sequential over chunks only (T / L small steps); the state entering each chunk is kept.
    # unbind, not kv[:, :, c]: the backward of C separate selects would zero-fill C full-size grads.
    entering = []
    for c, kv_c in enumerate(kv.unbind(2)):
        entering.append(S)
        S = torch.addcmul(kv_c, decay_last if c == C - 1 else decay, S)
    entering = torch.stack(entering, dim=2)  # [B, H, C, N, N]
    # What the state entering its chunk contributes: (r_t w^t) @ S_c, added in the same kernel.
    rq = rc * _powers(log_w, pos).view(1, H, 1, L, N)
    out = torch.baddbmm(out.view(-1, L, N), rq.view(-1, L, N), entering.view(-1, N, N))

    out = out.view(B, H, C * L, N)[:, :, :T].transpose(1, 2)
    return out, S


# The layouts fla's chunk_rwkv6 has taken: its first releases [B, H, T, K] only; later ones a
# `head_first` flag; current ones (0.3+, which also take `cu_seqlens`) [B, T, H, K] only.
HEAD_FIRST, HEAD_FIRST_FLAG, TIME_FIRST = "[B, H, T, K]", "head_first flag", "[B, T, H, K]"


def fla_layout(fn: Callable) -> str:
    """Which of the layouts above `fn` (a chunk_rwkv6) takes, read off its signature."""
    params = inspect.signature(fn).parameters
    if "head_first" in params:
        return HEAD_FIRST_FLAG
    return TIME_FIRST if "cu_seqlens" in params else HEAD_FIRST


@lru_cache(maxsize=1)
def _fla_chunk_rwkv6() -> tuple[Callable, str] | None:
    """flash-linear-attention's RWKV-6 chunk op and its layout, if installed and importable (never
    imported on CPU-only paths). An installed fla that fails to import (e.g. built against another
    Triton) warns once and leaves 'auto' on the chunked kernel instead of failing every forward."""
    if importlib.util.find_spec("fla") is None:
        return None
    try:
        fn = importlib.import_module("fla.ops.rwkv6").chunk_rwkv6
    except Exception as err:  # noqa: BLE001 - any import-time failure of an optional accelerator
        warnings.warn(f"flash-linear-attention is installed but fla.ops.rwkv6.chunk_rwkv6 could not be "
                      f"imported ({type(err).__name__}: {err}); using the chunked WKV kernel", stacklevel=2)
        return None
    return fn, fla_layout(fn)


def fused_available(device: torch.device | str) -> bool:
    """True when the fused CUDA kernel can run on `device` (CUDA and flash-linear-attention installed)."""
    return torch.device(device).type == "cuda" and _fla_chunk_rwkv6() is not None


@_float32_math
def wkv5_fused(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
               state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """RWKV-5 through fla's RWKV-6 chunk op: RWKV-6 with its per-token decay held constant over time.

    Everything is passed in float32: a bf16 log-decay would be off by ~0.4 % per step, which
    compounds over thousands of tokens. fla's state is [B, H, K, V] like ours, its decay argument
    is the natural-log decay per token (log_w broadcast over T), and scale=1 (RWKV has none).
    """
    found = _fla_chunk_rwkv6()
    if found is None:
        raise RuntimeError("the fused WKV kernel needs flash-linear-attention: pip install flash-linear-attention "
                           "(or use impl='chunked')")
    fn, layout = found
    r, k, v, log_w, u, S = (x.float() for x in _prepare(r, k, v, log_w, u, state))
    B, T, H, N = r.shape
    g = log_w.view(1, 1, H, N).expand(B, T, H, N)
    kwargs = {"scale": 1.0, "initial_state": S.contiguous(), "output_final_state": True}
    if layout == HEAD_FIRST:
        to_hf = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731  [B, T, H, N] -> [B, H, T, N]
        out, S = fn(to_hf(r), to_hf(k), to_hf(v), to_hf(g), u.contiguous(), **kwargs)
        return out.transpose(1, 2).float(), S.float()
    if layout == HEAD_FIRST_FLAG:
        kwargs["head_first"] = False
    out, S = fn(r.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), u.contiguous(), **kwargs)
    return out.float(), S.float()


def wkv5(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None,
         impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Dispatch: 'auto' takes the fused kernel on CUDA when installed and T is long enough, else chunked."""
    if impl == "auto":
        impl = "fused" if r.shape[1] >= FUSED_MIN_T and fused_available(r.device) else "chunked"
    if impl == "chunked":
        return wkv5_chunked(r, k, v, log_w, u, state)
    if impl == "reference":
        return wkv5_reference(r, k, v, log_w, u, state)
    if impl == "fused":
        return wkv5_fused(r, k, v, log_w, u, state)
    raise ValueError(f"unknown WKV implementation {impl!r}; choose one of {IMPLS}")
