"""Flags shared by the scripts that load a trained cross-encoder (evaluate, rerank): one
definition so their names, defaults and help can never drift apart."""
from __future__ import annotations

import argparse


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_file", required=True, help="base RWKV-5 .pth the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter folder (OUT/final, OUT/checkpoint-<step>) or the training OUT folder")


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch_size", type=int, default=32, help="documents per forward pass")
    p.add_argument("--max_batch_tokens", type=int, default=32768, help="documents x padded length per forward pass at most (bounds memory)")
    p.add_argument("--question_batch", type=int, default=16, help="questions whose documents share forward passes (fills batches when pools are small)")
    p.add_argument("--max_length", type=int, default=None, help="row length limit; longer documents lose their tail (default: the training rows' max_length)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
