"""The CUDA-only code paths, exercised on CPU: the fused WKV wrapper (against fla under Triton's
interpreter when both are installed, and against stand-ins with each of fla's three calling
conventions always), the WKV kernels under autocast, and the install plan of bench/gpu_check.sh."""
from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import types

import pytest
import torch
from rwkv5_helpers import random_wkv_inputs
from trainer_helpers import REPO, tiny_model, toy_dataset

from cross_encoder.rwkv5 import ops
from cross_encoder.rwkv5.ops import wkv5_chunked, wkv5_fused, wkv5_reference

HAVE_FLA = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAVE_FLA, reason="flash-linear-attention and triton are not installed "
                    "(pip install fla-core==0.6.0 triton==3.9.0 to run fla on CPU under Triton's interpreter)")
def test_fused_wkv_matches_chunked_under_triton_interpreter():
    # TRITON_INTERPRET is read by Triton at import, so the check runs in its own process.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "fla_interpreter_check.py"), "100"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok "), res.stdout


def fake_chunk_rwkv6(layout: str):
    """A stand-in for fla's chunk_rwkv6 with one of its calling conventions: the RWKV-6 recurrence
    (per-token log decay w) one step at a time, in the layout that convention reads."""
    def recurrence(r, k, v, w, u, scale, initial_state):  # all [B, T, H, K]
        S = initial_state.clone()
        outs = []
        for t in range(r.shape[1]):
            kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, K, V]
            outs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S + u[None, :, :, None] * kv) * scale)
            S = torch.exp(w[:, t])[..., None] * S + kv
        return torch.stack(outs, 1), S

    def time_first(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                   **kwargs):
        return recurrence(r, k, v, w, u, scale, initial_state)

    def head_first(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False):
        tf = lambda x: x.transpose(1, 2)  # noqa: E731  its [B, H, T, K] -> [B, T, H, K]
        out, S = recurrence(tf(r), tf(k), tf(v), tf(w), u, scale, initial_state)
        return tf(out), S

    def with_flag(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, head_first=True):
        fn = head_first_fn if head_first else time_first
        return fn(r, k, v, w, u, scale=scale, initial_state=initial_state)

    head_first_fn = head_first
    return {"head_first": head_first, "flag": with_flag, "time_first": time_first}[layout]


@pytest.fixture
def fake_fla(monkeypatch):
    """Install a fake `fla.ops.rwkv6` module; yields a function that sets its chunk_rwkv6."""
    ops._fla_chunk_rwkv6.cache_clear()
    fla = types.ModuleType("fla")
    fla.__spec__ = importlib.machinery.ModuleSpec("fla", None, is_package=True)
    fla.__path__ = []
    rwkv6 = types.ModuleType("fla.ops.rwkv6")
    monkeypatch.setitem(sys.modules, "fla", fla)
    monkeypatch.setitem(sys.modules, "fla.ops", types.ModuleType("fla.ops"))
    monkeypatch.setitem(sys.modules, "fla.ops.rwkv6", rwkv6)
    yield lambda fn: setattr(rwkv6, "chunk_rwkv6", fn)
    ops._fla_chunk_rwkv6.cache_clear()


@pytest.mark.parametrize("layout, expected", [("head_first", ops.HEAD_FIRST), ("flag", ops.HEAD_FIRST_FLAG),
                                              ("time_first", ops.TIME_FIRST)])
def test_fused_wrapper_speaks_each_fla_calling_convention(fake_fla, layout, expected):
    fake_fla(fake_chunk_rwkv6(layout))
    assert ops._fla_chunk_rwkv6()[1] == expected
    r, k, v, log_w, u = random_wkv_inputs(2, 37, 3, 8, seed=4, strong=True)
    s0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out, state = wkv5_fused(r, k, v, log_w, u, s0)
    want, want_state = wkv5_reference(r, k, v, log_w, u, s0)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)


def test_fla_0_6_signature_is_read_as_time_first():
    # fla-core 0.6.0's chunk_rwkv6 signature (copied): no head_first, takes cu_seqlens.
    def chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    cu_seqlens_cpu=None, **kwargs):
        raise AssertionError("not called")
    assert ops.fla_layout(chunk_rwkv6) == ops.TIME_FIRST
    assert "cu_seqlens" in inspect.signature(chunk_rwkv6).parameters


def test_an_fla_that_fails_to_import_warns_and_is_not_used(fake_fla):
    # the fake fla has no chunk_rwkv6 at all: importing it fails like an fla built for another Triton
    with pytest.warns(UserWarning, match="could not be imported"):
        assert ops._fla_chunk_rwkv6() is None
    assert not ops.fused_available("cuda")


def test_wkv_kernels_stay_float32_under_bf16_autocast():
    # Under torch.autocast (the trainer's CUDA default) the kernels' matmuls would run in bf16.
    r, k, v, log_w, u = random_wkv_inputs(1, 300, 2, 32, seed=2)
    for kernel in (wkv5_chunked, wkv5_reference):
        want, want_state = kernel(r, k, v, log_w, u)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = kernel(r, k, v, log_w, u)
        assert out.dtype == state.dtype == torch.float32
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        torch.testing.assert_close(state, want_state, rtol=0, atol=0)


def test_gpu_check_installs_only_what_is_missing_and_pins_torch(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_install

    reqs = ["torch>=2.3,<2.15", "numpy>=1.26", "orjson>=3.9", "datasets>=3.0", "pyrwkv-tokenizer>=0.9,<1.0"]
    box = {"torch": "2.11.0+cu130", "triton": "3.6.0", "numpy": "2.5.2", "nvidia-nccl-cu13": "2.28.3",
           "datasets": "2.19.0", "pyrwkv-tokenizer": "0.9.1", "pandas": "3.0.0"}
    missing, constraints = gpu_install.plan(reqs, box)
    assert missing == ["orjson>=3.9", "datasets>=3.0"]  # absent, or installed outside the range
    assert constraints == ["numpy==2.5.2", "nvidia-nccl-cu13==2.28.3", "torch==2.11.0+cu130", "triton==3.6.0"]
    with pytest.raises(SystemExit, match="never replaces torch"):
        gpu_install.plan(reqs, {**box, "torch": "2.2.0"})
    with pytest.raises(SystemExit, match="torch is not installed"):
        gpu_install.plan(reqs, {k: v for k, v in box.items() if k != "torch"})
    # the real project: torch and the test and benchmark extras are all in the list it plans from
    names = [r.split(">")[0].split("<")[0].split("=")[0] for r in gpu_install.project_requirements()]
    assert {"torch", "datasets", "transformers", "pytest"} <= set(names)


class _Stop(Exception):
    pass


@pytest.mark.gpu
def test_cuda_bf16_training_matches_cpu_and_resumes_with_the_cuda_rng(tmp_path):
    """The CUDA default end to end: bf16 trunk + autocast, LoRA dropout drawing from the CUDA RNG,
    a checkpoint (which saves that RNG) and an exact resume."""
    import orjson

    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main as train

    model, ds = tiny_model(tmp_path / "m.pth"), toy_dataset(tmp_path / "ds", n_groups=12, max_length=40)

    def cfg(out, device, **kw):
        return TrainConfig(model_file=str(model), ds_dir=str(ds), output_dir=str(out), ctx_len=64, bs=4,
                           max_steps=4, lora_r=4, lora_alpha=8, lora_dropout=0.1, eval_fraction=0.0, log_every=1,
                           save_every=2, seed=0, device=device, **kw)

    def first_loss(out):
        return orjson.loads((out / "metrics.jsonl").read_bytes().splitlines()[0])["loss"]

    train(cfg(tmp_path / "cpu", "cpu"))
    train(cfg(tmp_path / "ref", "cuda"))
    assert orjson.loads((tmp_path / "ref" / "config.json").read_bytes())["resolved"]["precision"] == "bf16"
    assert abs(first_loss(tmp_path / "ref") - first_loss(tmp_path / "cpu")) <= 0.05 * abs(first_loss(tmp_path / "cpu"))

    def stop(step):
        if step == 3:
            raise _Stop
    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        train(cfg(out, "cuda"), on_step=stop)
    train(cfg(out, "cuda", lora_ckpt=str(out)))  # continues from checkpoint-2
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "final" / "adapter_model.safetensors")) for d in (tmp_path / "ref", out))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4, msg=k)
