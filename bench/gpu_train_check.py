"""A short real training run on CUDA: a random 0.4B-shaped RWKV-5 (24 x 1024, heads of 64, World
vocabulary), rows of ~8k real tokens, --grad_cp, the trainer's defaults otherwise (bf16, LoRA r 64).
Prints and writes (OUT/train_check.md) tokens/s, MFU against the device's bf16 peak and peak memory.

    python bench/gpu_train_check.py --out bench/out/gpu_check/train [--steps 50] [--ctx 8192]

MFU counts model FLOPs per real token: the frozen trunk's matmuls forward and backward (activation
gradients only: 2 + 2 FLOPs per weight), LoRA's forward and backward (2 + 4 per weight); the
recomputation --grad_cp adds is not counted (the usual convention), nor the WKV recurrence
(~2 % of the matmul FLOPs at this shape).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson
import torch

from bench_trainer import write_rows

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H800", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
                    ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0))


def bf16_peak(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in BF16_PEAK_TFLOPS if key in name), None)


def model_flops_per_token(model_cfg: dict, lora_r: int, n_targets_per_layer: dict[str, tuple[int, int]]) -> float:
    C, F_, L = model_cfg["n_embd"], model_cfg["dim_ffn"], model_cfg["n_layer"]
    A = model_cfg["dim_att"]
    gated = model_cfg["version"] != "5.0"
    trunk = L * (C * A * (4 if gated else 3) + A * C + 2 * C * F_ + C * C)  # att r,k,v,(g),o; ffn key, value, receptance
    lora = L * sum(lora_r * (i + o) for i, o in n_targets_per_layer.values())
    return 4.0 * trunk + 6.0 * lora


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="work folder (checkpoint, rows, trainer output, report)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps")
    p.add_argument("--ctx", type=int, default=8192, help="row length in real tokens (about)")
    p.add_argument("--bs", type=int, default=2, help="rows per step (one question's positive and negative)")
    p.add_argument("--shape", default="24x1024", help="LAYERSxWIDTH of the random model")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps left out of tokens/s (kernel tuning, allocator)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu only to try the script itself")
    a = p.parse_args()
    from cross_encoder.rwkv5 import write_random_checkpoint
    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main as train

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available")
    n_layer, n_embd = (int(x) for x in a.shape.split("x"))
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = a.out / f"rwkv5-random-{a.shape}.pth"
    if not ckpt.is_file():
        write_random_checkpoint(str(ckpt), n_layer=n_layer, n_embd=n_embd, head_size=64, vocab_size=65536, seed=0)
    # Rows of exactly ~ctx real tokens: question 8-20 tokens + SEP + document + CLS, groups of 2.
    doc = a.ctx - 24
    ds = write_rows(a.out / f"rows_{a.ctx}", n_groups=a.steps * a.bs // 2 + 1, doc_len=(doc, 0, 0), seed=0,
                    max_length=a.ctx)
    prep = time.perf_counter() - t0
    run_dir = a.out / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(model_file=str(ckpt), ds_dir=str(ds), output_dir=str(run_dir), ctx_len=a.ctx, bs=a.bs,
                      max_steps=a.steps, grad_cp=True, eval_fraction=0.0, save_every=0, log_every=1, seed=0,
                      device=a.device)
    summary = train(cfg)
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else float("nan")
    rows = [orjson.loads(line) for line in (run_dir / "metrics.jsonl").read_bytes().splitlines()]
    rows = [r for r in rows if r.get("loss") is not None]
    first = rows[min(a.warmup_steps, len(rows) - 2)]
    last = rows[-1]
    tok_s = (last["tokens_real"] - first["tokens_real"]) / (last["elapsed_s"] - first["elapsed_s"])
    run_cfg = orjson.loads((run_dir / "config.json").read_bytes())
    model_cfg = run_cfg["resolved"]["model"]
    C, F_, A = model_cfg["n_embd"], model_cfg["dim_ffn"], model_cfg["dim_att"]
    shapes = {"att.receptance": (C, A), "att.key": (C, A), "att.value": (C, A), "att.gate": (C, A),
              "att.output": (A, C), "ffn.receptance": (C, C), "ffn.key": (C, F_), "ffn.value": (F_, C)}
    targets = {t: shapes[t] for t in run_cfg["resolved"]["lora"]["targets"] if t in shapes}
    flops = model_flops_per_token(model_cfg, run_cfg["resolved"]["lora"]["r"], targets)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    peak_tf = bf16_peak(name, a.peak_tflops)
    mfu = f"{100 * tok_s * flops / (peak_tf * 1e12):.1f} % of {peak_tf:.0f} TFLOP/s" if peak_tf else \
        "n/a (unknown device: pass --peak-tflops)"
    report = f"""# Training check: random {a.shape} RWKV-5, rows of {a.ctx} tokens, --grad_cp

| device | precision | steps | rows/step | real tokens/s (steps {first['step'] + 1}-{last['step']}) | model TFLOP/s | MFU (bf16 peak) | peak memory allocated | final loss |
|---|---|---:|---:|---:|---:|---|---:|---:|
| {name} | {run_cfg['resolved']['precision']} | {summary['steps_run']} | {a.bs} | {tok_s:,.0f} | {tok_s * flops / 1e12:.1f} | {mfu} | {peak:.1f} GiB | {last['loss']:.4f} |

model FLOPs per real token: {flops / 1e9:.2f} GFLOP (4 per frozen trunk weight, 6 per LoRA weight;
recomputation and the WKV recurrence not counted). Setup (checkpoint + rows): {prep:.0f} s.
torch {torch.__version__}, WKV kernel: {'fused (flash-linear-attention)' if _fused(a.device) else 'chunked'}.
"""
    (a.out / "train_check.md").write_text(report)
    print(report)


def _fused(device: str) -> bool:
    from cross_encoder.rwkv5 import fused_available

    return fused_available(device)


if __name__ == "__main__":
    sys.exit(main())
