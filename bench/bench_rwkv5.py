"""RWKV-5 on CPU: chunked WKV vs the step-by-step reference, measured in the same run.

Prints two markdown tables:
  1. the WKV kernel alone (H=16, N=64, B=1 like the 0.4B model), forward and forward+backward;
  2. the whole model (random weights, no LM head as in the cross-encoder), forward+backward
     tokens/s and peak memory, for a tiny config and a 0.4B-shaped one (24 x 1024, 16 heads x 64).
Each case runs in a fresh process so its peak RSS (VmHWM, reset before the step) is its own.

    python bench/bench_rwkv5.py                # both tables
    python bench/bench_rwkv5.py --skip-0.4b    # without the 0.4B-shaped model (~1 min less)
"""
from __future__ import annotations

import argparse

from measure import run_isolated, timed


def kernel_case(impl: str, T: int, backward: bool, chunk_len: int, reps: int) -> dict:
    import torch

    from cross_encoder.rwkv5.ops import wkv5_chunked, wkv5_reference

    g = torch.Generator().manual_seed(0)
    B, H, N = 1, 16, 64
    r, k, v = (torch.randn(B, T, H, N, generator=g) * 0.5 for _ in range(3))
    log_w = -torch.exp(torch.empty(H, N).uniform_(-6, 1, generator=g))
    u = torch.randn(H, N, generator=g) * 0.5
    fn = wkv5_reference if impl == "reference" else (lambda *a: wkv5_chunked(*a, chunk_len=chunk_len))
    if backward:
        leaves = [x.requires_grad_(True) for x in (r, k, v, log_w, u)]

        def step():
            out, state = fn(*leaves)
            (out.sum() + state.sum()).backward()
    else:
        def step():
            with torch.no_grad():
                fn(r, k, v, log_w, u)
    t = timed(step, reps)
    return {"sec": t["sec"], "peak": t["peak"]}


def model_case(name: str, impl: str, n_layer: int, n_embd: int, B: int, T: int, reps: int) -> dict:
    import torch

    from cross_encoder.rwkv5 import make_config, random_rwkv5

    model = random_rwkv5(make_config(n_layer, n_embd, head_size=64, vocab_size=65536), seed=0, with_head=False)
    model.wkv_impl = impl
    model.train()
    ids = torch.randint(0, 65536, (B, T), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        model.hidden(ids).float().pow(2).mean().backward()
    t = timed(step, reps)
    return {"sec": t["sec"], "peak": t["peak"], "tok_s": B * T / t["sec"]}


def main(args: argparse.Namespace) -> None:
    import torch

    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads\n")
    print("WKV kernel, B=1 H=16 N=64 (seconds per call, median; ratio = reference / chunked)\n")
    print("| T | pass | reference s | chunked s (L=32) | chunked s (L=64) | chunked s (L=128) | speed-up (L=64) |")
    print("|---|---|---|---|---|---|---|")
    for T, backward in ((256, True), (1024, True), (8192, False)):
        ref = run_isolated(args.threads, kernel_case, "reference", T, backward, 0, args.reps)
        ch = {L: run_isolated(args.threads, kernel_case, "chunked", T, backward, L, args.reps) for L in (32, 64, 128)}
        print(f"| {T} | {'fwd+bwd' if backward else 'fwd'} | {ref['sec']:.3f} | {ch[32]['sec']:.3f} | "
              f"{ch[64]['sec']:.3f} | {ch[128]['sec']:.3f} | {ref['sec'] / ch[64]['sec']:.1f}x |", flush=True)

    print("\nWhole model, forward+backward (no LM head; loss = mean(hidden^2)); "
          "speed-up = reference step time / this step time\n")
    print("| config | B x T | WKV | tokens/s | step s | peak RSS increase MiB | speed-up |")
    print("|---|---|---|---|---|---|---|")
    configs = [("tiny 2 x 128", 2, 128, 2, 512)]
    if not args.skip_04b:
        configs.append(("0.4B-shaped 24 x 1024", 24, 1024, 1, 128))
    for name, n_layer, n_embd, B, T in configs:
        res = {impl: run_isolated(args.threads, model_case, name, impl, n_layer, n_embd, B, T, args.reps)
               for impl in ("reference", "chunked")}
        for impl in ("reference", "chunked"):
            r = res[impl]
            ratio = res["reference"]["sec"] / r["sec"]
            print(f"| {name} | {B} x {T} | {impl} | {r['tok_s']:.0f} | {r['sec']:.2f} | {r['peak']:.0f} | "
                  f"{ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per case (0 = torch's default); 1 gives stable numbers on a busy machine")
    parser.add_argument("--skip-0.4b", dest="skip_04b", action="store_true",
                        help="leave out the 0.4B-shaped model (it needs ~4 GiB RAM and about a minute)")
    main(parser.parse_args())
