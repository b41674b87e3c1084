"""RWKV-5 (5.0 / 5.1 / 5.2) as a trainable nn.Module with the official parameter names.

Module and parameter names equal the keys of the official checkpoints, so `state_dict()` round-trips
with them and peft can target `att.receptance` / `att.key` / ... by name. The math follows the
`rwkv` pip package (ChatRWKV), which the tests use as the oracle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ops import IMPLS, wkv5

Tensor = torch.Tensor
# Per layer: (time-mix shift [B, C], WKV state [B, H, N, N] float32, channel-mix shift [B, C]).
LayerState = tuple[Tensor, Tensor, Tensor]
State = list[LayerState]

VERSIONS = ("5.0", "5.1", "5.2")
# On CPU, inputs longer than this run as consecutive segments with the state carried between them:
# identical results, but every [B, segment, C] activation stays in cache. Measured on one core
# (6 x 512): 1.3x faster forward+backward at T = 8k-16k and 1.6x forward at 16k than one pass,
# and per-token cost at 16k equal to T = 512's; 1024 and 4096 were slower.
DEFAULT_CPU_SEGMENT_LEN = 2048
# ChatRWKV's group-norm epsilon; equals RWKV-LM's ln_x(x / head_size_divisor=8) with eps 1e-5.
LN_X_EPS = 64e-5


@dataclass
class RWKV5Config:
    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    dim_att: int
    dim_ffn: int
    vocab_size: int
    version: str = "5.2"
    # "time_faaaa": the bonus u is stored as is (all released World models); "time_first": early
    # 5.0 previews stored log(u).
    bonus_key: str = "time_faaaa"

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.n_head * self.head_size != self.dim_att:
            raise ValueError(f"n_head * head_size = {self.n_head} * {self.head_size} != dim_att = {self.dim_att}")
        if self.bonus_key not in ("time_faaaa", "time_first"):
            raise ValueError(f"bonus_key must be 'time_faaaa' or 'time_first', got {self.bonus_key!r}")

    @property
    def gated(self) -> bool:
        return self.version != "5.0"

    @property
    def per_channel_decay(self) -> bool:
        """5.2 has a decay per channel ([H, N]); 5.0 / 5.1 one per head ([H])."""
        return self.version == "5.2"

    def to_dict(self) -> dict:
        """Plain dict (peft and loggers read model configs this way)."""
        return {"model_type": "rwkv5", **dataclasses.asdict(self)}


def _token_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Previous token's input for every position: [B, T, C] with row 0 from `shift` [B, C]."""
    return torch.cat([shift.unsqueeze(1), x[:, :-1]], dim=1)


def _mix(x: Tensor, xx: Tensor, m: Tensor) -> Tensor:
    """x * m + xx * (1 - m), as one pass over [B, T, C] (three separate ops at long T cost ~8 % of a forward)."""
    return torch.lerp(xx, x, m)


class _ReluSquare(torch.autograd.Function):
    """relu(k) ** 2 keeping only k for backward: autograd through relu then pow would save three
    [B, T, dim_ffn] tensors (k, relu(k), its square), the largest activations of a block."""

    @staticmethod
    def forward(ctx, k: Tensor) -> Tensor:
        ctx.save_for_backward(k)
        return torch.relu(k).square_()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (k,) = ctx.saved_tensors
        return torch.relu(k).mul_(grad).mul_(2)


def relu_square(k: Tensor) -> Tensor:
    """relu(k) ** 2 (the channel-mix activation), with a memory-lean backward; without autograd it
    overwrites k (the fresh output of ffn.key), sparing a [B, T, dim_ffn] allocation."""
    if torch.is_grad_enabled() and k.requires_grad:
        return _ReluSquare.apply(k)
    return k.relu_().square_() if not torch.is_grad_enabled() else torch.relu(k).square_()


class TimeMix(nn.Module):
    def __init__(self, config: RWKV5Config) -> None:
        super().__init__()
        self.config = config
        C, A, H, N = config.n_embd, config.dim_att, config.n_head, config.head_size
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        if config.gated:
            self.time_mix_g = nn.Parameter(torch.empty(1, 1, C))
        shape = (H, N) if config.per_channel_decay else (H,)
        self.time_decay = nn.Parameter(torch.empty(shape))
        # Registered under the checkpoint's own name so state_dict keys stay official.
        self.register_parameter(config.bonus_key, nn.Parameter(torch.empty(shape)))
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        if config.gated:
            self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=LN_X_EPS)
        self.wkv_impl = "auto"

    def decay_and_bonus(self) -> tuple[Tensor, Tensor]:
        """(log_w, u), both [H, N] float32; log_w = -exp(time_decay) so that w = exp(log_w)."""
        H, N = self.config.n_head, self.config.head_size
        log_w = -torch.exp(self.time_decay.float())
        u = getattr(self, self.config.bonus_key).float()
        if self.config.bonus_key == "time_first":
            u = torch.exp(u)
        if not self.config.per_channel_decay:
            log_w, u = log_w.view(H, 1).expand(H, N), u.view(H, 1).expand(H, N)
        return log_w.reshape(H, N), u.reshape(H, N)

    def forward(self, x: Tensor, shift: Tensor, wkv_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, C] (after ln1) -> (output [B, T, C], new shift [B, C], new WKV state [B, H, N, N])."""
        B, T, _ = x.shape
        H, N = self.config.n_head, self.config.head_size
        xx = _token_shift(x, shift)
        mix = lambda m: _mix(x, xx, m)  # noqa: E731
        r = self.receptance(mix(self.time_mix_r)).view(B, T, H, N)
        k = self.key(mix(self.time_mix_k)).view(B, T, H, N)
        v = self.value(mix(self.time_mix_v)).view(B, T, H, N)
        log_w, u = self.decay_and_bonus()
        out, wkv_state = wkv5(r, k, v, log_w, u, wkv_state, impl=self.wkv_impl)  # [B, T, H, N] float32
        # Group norm in float32 like ChatRWKV, also when the weights are bf16.
        out = F.group_norm(out.reshape(B * T, H * N), H, self.ln_x.weight.float(), self.ln_x.bias.float(),
                           self.ln_x.eps).view(B, T, H * N).to(x.dtype)
        if self.config.gated:
            out = out * F.silu(self.gate(mix(self.time_mix_g)))
        return self.output(out), x[:, -1], wkv_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKV5Config) -> None:
        super().__init__()
        C, F_ = config.n_embd, config.dim_ffn
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, F_, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def forward(self, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, C] (after ln2) -> (output [B, T, C], new shift [B, C])."""
        xx = _token_shift(x, shift)
        xk = _mix(x, xx, self.time_mix_k)
        xr = _mix(x, xx, self.time_mix_r)
        kv = self.value(relu_square(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * kv, x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV5Config, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(config.n_embd)
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.att = TimeMix(config)
        self.ffn = ChannelMix(config)

    def forward(self, x: Tensor, att_shift: Tensor, wkv_state: Tensor, ffn_shift: Tensor) -> tuple[Tensor, LayerState]:
        if self.layer_id == 0:
            x = self.ln0(x)
        a, att_shift, wkv_state = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + f, (att_shift, wkv_state, ffn_shift)


class RWKV5(nn.Module):
    """RWKV-5 language model. `forward` gives logits, `hidden` the states after ln_out (plus a resumable state)."""

    def __init__(self, config: RWKV5Config, with_head: bool = True) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False) if with_head else None
        self.gradient_checkpointing = False
        self.segment_len = DEFAULT_CPU_SEGMENT_LEN

    @property
    def wkv_impl(self) -> str:
        return self.blocks[0].att.wkv_impl

    @wkv_impl.setter
    def wkv_impl(self, impl: str) -> None:
        """'auto' (fused on CUDA when installed, else chunked), 'chunked', 'reference' or 'fused'."""
        if impl not in IMPLS:
            raise ValueError(f"unknown WKV implementation {impl!r}; choose one of {IMPLS}")
        for block in self.blocks:
            block.att.wkv_impl = impl

    def zero_state(self, batch_size: int) -> State:
        """The state before any token: all zeros (on the model's device; shifts in the model's dtype)."""
        c = self.config
        p = self.emb.weight
        shift = lambda: torch.zeros(batch_size, c.n_embd, device=p.device, dtype=p.dtype)  # noqa: E731
        wkv = lambda: torch.zeros(batch_size, c.n_head, c.head_size, c.head_size, device=p.device,  # noqa: E731
                                  dtype=torch.float32)
        return [(shift(), wkv(), shift()) for _ in range(c.n_layer)]

    def hidden(self, input_ids: Tensor, state: State | None = None,
               return_state: bool = False) -> Tensor | tuple[Tensor, State]:
        """input_ids [B, T] -> hidden [B, T, C] after ln_out; with return_state also the state after the
        last token, from which a later call continues exactly as if both parts had been one input.
        On CPU an input longer than `segment_len` runs in segments that way (see DEFAULT_CPU_SEGMENT_LEN)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        B = input_ids.shape[0]
        if state is None:
            state = self.zero_state(B)
        elif len(state) != self.config.n_layer or state[0][0].shape[0] != B:
            raise ValueError(f"state must hold {self.config.n_layer} layers of batch {B}; "
                             f"use expand_state(state, {B}) to repeat a batch-1 state")
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        T = input_ids.shape[1]
        seg = self._segment_len(input_ids.device, T)
        outs = []
        for start in range(0, max(T, 1), seg):
            x = self.emb(input_ids[:, start:start + seg])  # [B, seg, C]
            new_state: State = []
            for block, layer_state in zip(self.blocks, state):
                if use_ckpt:
                    x, layer_state = checkpoint(block, x, *layer_state, use_reentrant=False)
                else:
                    x, layer_state = block(x, *layer_state)
                new_state.append(layer_state)
            state = new_state
            outs.append(self.ln_out(x))
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return (x, state) if return_state else x

    def _segment_len(self, device: torch.device, T: int) -> int:
        """Tokens per segment: `segment_len` on CPU; on CUDA (large kernels are what it wants) all of T."""
        seg = self.segment_len
        if seg is not None and (not isinstance(seg, int) or seg < 1 or seg % 64):
            raise ValueError(f"segment_len must be a positive multiple of 64 (the WKV chunk) or None, got {seg!r}")
        return seg if seg is not None and device.type == "cpu" and T > seg else max(T, 1)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids [B, T] -> logits [B, T, vocab_size] (float32 only if the model is float32)."""
        if self.head is None:
            raise RuntimeError("this model was loaded without its LM head (with_head=False); use hidden(), "
                               "or load with with_head=True for logits")
        return self.head(self.hidden(input_ids))


def expand_state(state: State, batch_size: int) -> State:
    """An independent copy of a batch-1 state repeated `batch_size` times (one prefix, many suffixes)."""
    if state[0][0].shape[0] != 1:
        raise ValueError(f"expand_state takes a batch-1 state, got batch {state[0][0].shape[0]}")
    return [tuple(t.expand(batch_size, *t.shape[1:]).clone() for t in layer) for layer in state]
