"""Run flash-linear-attention's chunk_rwkv6 (the fused WKV path) on CPU under Triton's interpreter
and compare it with wkv5_chunked: outputs, final state and the gradients of r, k, v, log_w, u and the
initial state. Started by tests/test_gpu_paths.py in a subprocess with TRITON_INTERPRET=1 (Triton reads
it at import); prints one line `ok <max relative differences>` or fails with an assertion.

Two shims make the interpreter run fla at all; both only change how the interpreter imitates
compiled Triton, not what fla computes:
  * the autotuner benchmarks its configs with a GPU driver, which the interpreter has none of:
    it is made to take the first config;
  * compiled Triton gives loop induction variables tensor type (fla calls `i_t.to(tl.int64)`), the
    interpreter plain Python ints: each for-loop target is re-bound through the interpreter's
    own tensor conversion at the top of the loop body.
Checked with fla-core 0.6.0 + triton 3.9.0.

    TRITON_INTERPRET=1 python tests/fla_interpreter_check.py [T ...]
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def patch_interpreter() -> None:
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interpreter

    def first_config(self, *args, config, **kwargs):
        return [float(self.configs.index(config)) if config in self.configs else 0.0] * 3

    autotuner.Autotuner._bench = first_config

    class LoopIndexAsTensor(interpreter.ASTTransformer):
        def visit_For(self, node):
            node = self.generic_visit(node)
            if isinstance(node.target, ast.Name):
                rebind = ast.Assign(targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                                    value=ast.Name(id=node.target.id, ctx=ast.Load()))
                node.body.insert(0, self.visit_Assign(rebind))
            return node

    interpreter.FunctionRewriter.ast_transformer = LoopIndexAsTensor()


def compare(T: int) -> dict[str, float]:
    from rwkv5_helpers import random_wkv_inputs

    from cross_encoder.rwkv5.ops import wkv5_chunked, wkv5_fused

    inputs = random_wkv_inputs(1, T, 2, 64, seed=T, strong=True)  # strong: channels with w ~ 1e-9 and 0
    s0 = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(T)) * 0.5
    grad_out = torch.randn(1, T, 2, 64, generator=torch.Generator().manual_seed(T + 1))

    def run(fn):
        leaves = [x.clone().requires_grad_(True) for x in (*inputs, s0)]
        out, state = fn(*leaves)
        ((out * grad_out).sum() + state.sum()).backward()
        return [out.detach(), state.detach()] + [x.grad for x in leaves]

    names = ["out", "state", "d_r", "d_k", "d_v", "d_log_w", "d_u", "d_state0"]
    diffs = {}
    for name, f, c in zip(names, run(wkv5_fused), run(wkv5_chunked)):
        assert f is not None and f.shape == c.shape, name
        rel = float((f - c).abs().max() / c.abs().max().clamp(min=1e-6))
        # fla computes in float32 (no tf32 under the interpreter): agreement to float32 rounding
        assert rel < 1e-4, (name, T, rel)
        diffs[name] = rel
    return diffs


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (Triton reads it at import)")
    patch_interpreter()
    lengths = [int(a) for a in sys.argv[1:]] or [100]
    worst: dict[str, float] = {}
    for T in lengths:
        for name, rel in compare(T).items():
            worst[name] = max(worst.get(name, 0.0), rel)
    print("ok " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
