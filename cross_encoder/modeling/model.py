"""The cross-encoder: RWKV-5 without its LM head plus a `score` head read at each row's CLS.

A row is `question + [SEP] + document + [CLS]`, right-padded; its score is
`score(hidden[length-1])`, the final hidden state at the CLS token. A pool row
`question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS]` has a score at every CLS (`forward` with
`score_rows`/`score_pos`); each sees the question and the documents before it. Because RWKV is causal,
padding after the CLS never changes that state, which is what makes batch trimming exact and
lets the evaluator run `question + [SEP]` once and continue every document from its state:

    model, cfg = load_cross_encoder("base.pth", "OUT/final")
    h, state = model.rwkv.hidden(q_ids[None], return_state=True)   # [1, Tq, C]
    hd = model.rwkv.hidden(doc_ids, state=expand_state(state, n_docs))  # [n, Td, C]
    scores = model.score_hidden(hd[torch.arange(n_docs), doc_lengths - 1])  # [n]

LoRA comes from Hugging Face `peft`; the score head is a peft `modules_to_save` module, so it is
trained and stored inside `adapter_model.safetensors` next to the LoRA matrices.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

from cross_encoder.rwkv5 import RWKV5

HEAD_NAME = "score"


class CrossEncoder(nn.Module):
    """RWKV-5 trunk (`self.rwkv`, no LM head) + `self.score = Linear(n_embd, 1)`."""

    def __init__(self, rwkv: RWKV5, head_seed: int | None = None):
        super().__init__()
        self.rwkv = rwkv
        device = next(rwkv.parameters()).device
        gen = torch.Generator().manual_seed(head_seed) if head_seed is not None else None
        head = nn.Linear(rwkv.config.n_embd, 1, dtype=torch.float32)
        with torch.no_grad():
            # ln_out makes hidden channels ~unit scale, so std 1/sqrt(C) starts scores near ±1
            # rather than saturating the sigmoid.
            head.weight.normal_(0.0, rwkv.config.n_embd ** -0.5, generator=gen)
            head.bias.zero_()
        # The head stays fp32 even over a bf16 trunk: it is trained, and it is tiny.
        self.score = head.to(device)

    @staticmethod
    def pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, C], lengths [B] -> [B, C] at each row's CLS (index length-1)."""
        idx = (lengths.to(hidden.device).long() - 1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]

    def score_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states at CLS [B, C] -> float32 scores [B]."""
        return self.score(h.float()).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None,
                score_rows: torch.Tensor | None = None, score_pos: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] right-padded -> scores: [B] at each row's CLS (length-1, `lengths` [B]),
        or [S] at the given (row, position) pairs (`score_rows`, `score_pos` [S]: every CLS of pool rows)."""
        h = self.rwkv.hidden(input_ids)  # [B, T, C]
        if score_pos is None:
            return self.score_hidden(self.pool(h, lengths))
        return self.score_hidden(h[score_rows.to(h.device), score_pos.to(h.device)])

    @torch.no_grad()
    def score_rows(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Inference scores [B] for right-padded rows; trims padding past the longest row."""
        was_training = self.training
        self.eval()
        try:
            lengths = torch.as_tensor(lengths, device=input_ids.device)
            width = int(lengths.max())
            dev = next(self.rwkv.parameters()).device
            return self(input_ids[:, :width].to(dev), lengths.to(dev))
        finally:
            self.train(was_training)


def linear_module_names(rwkv: nn.Module) -> list[str]:
    """Names of the nn.Linear modules of the trunk (what --lora_targets can name)."""
    return [n for n, m in rwkv.named_modules() if isinstance(m, nn.Linear)]


def make_lora_config(r: int, alpha: float, dropout: float, targets: Sequence[str]) -> LoraConfig:
    """peft LoraConfig on the trunk's projections; the score head is saved with the adapter."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=list(targets), modules_to_save=[HEAD_NAME])


def check_lora_targets(model: CrossEncoder, targets: Sequence[str]) -> None:
    """Fail early, listing the valid names, when a target matches no Linear of the trunk."""
    names = linear_module_names(model.rwkv)
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            kinds = sorted({".".join(n.split(".")[-2:]) for n in names if n.startswith("blocks.")})
            raise ValueError(f"--lora_targets {t!r} matches no projection of the model; valid: {' '.join(kinds)}")


def attach_lora(model: CrossEncoder, config: LoraConfig) -> PeftModel:
    """Wrap in peft: LoRA + head trainable, every trunk weight frozen."""
    check_lora_targets(model, config.target_modules)
    return get_peft_model(model, config)
