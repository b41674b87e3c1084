"""WKV kernels: reference recurrence and chunked form against the O(T^2) definition and each other."""
import pytest
import torch
from rwkv5_helpers import naive_wkv, random_wkv_inputs

from cross_encoder.rwkv5.ops import fused_available, wkv5, wkv5_chunked, wkv5_fused, wkv5_reference

SHAPES = [  # (B, T, H, N, chunk_len)
    (2, 1, 2, 16, 64),
    (1, 5, 1, 16, 4),
    (2, 37, 2, 32, 16),  # T not a multiple of the chunk
    (1, 64, 2, 64, 64),
    (1, 100, 1, 64, 32),
]


@pytest.mark.parametrize("strong", [False, True], ids=["weak", "strong"])
@pytest.mark.parametrize("B,T,H,N,L", SHAPES)
def test_reference_and_chunked_match_definition_float64(B, T, H, N, L, strong):
    r, k, v, log_w, u = random_wkv_inputs(B, T, H, N, seed=T + N, strong=strong, dtype=torch.float64)
    s0 = torch.randn(B, H, N, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    want, want_s = naive_wkv(r, k, v, log_w, u, s0)
    for got, got_s in (wkv5_reference(r, k, v, log_w, u, s0), wkv5_chunked(r, k, v, log_w, u, s0, chunk_len=L)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_s, want_s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strong", [False, True], ids=["weak", "strong"])
@pytest.mark.parametrize("B,T,H,N,L", SHAPES)
def test_chunked_matches_reference_outputs_and_grads_float32(B, T, H, N, L, strong):
    inputs = random_wkv_inputs(B, T, H, N, seed=7 * T + N, strong=strong)
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(B, H, N, N, generator=g) * 0.5
    grad_out = torch.randn(B, T, H, N, generator=g)
    grad_state = torch.randn(B, H, N, N, generator=g)

    def run(fn):
        leaves = [x.clone().requires_grad_(True) for x in (*inputs, s0)]
        out, state = fn(*leaves)
        ((out * grad_out).sum() + (state * grad_state).sum()).backward()
        return out.detach(), state.detach(), [x.grad for x in leaves]

    out_r, st_r, grads_r = run(wkv5_reference)
    out_c, st_c, grads_c = run(lambda *a: wkv5_chunked(*a, chunk_len=L))
    torch.testing.assert_close(out_c, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st_c, st_r, rtol=1e-5, atol=1e-5)
    for name, gc, gr in zip(("r", "k", "v", "log_w", "u", "state"), grads_c, grads_r):
        assert torch.isfinite(gc).all(), name
        scale = gr.abs().max().clamp(min=1.0)  # log_w grads sum over B*T*N terms
        torch.testing.assert_close(gc / scale, gr / scale, rtol=1e-5, atol=1e-5, msg=lambda m: f"grad {name}: {m}")


def test_underflowing_decay_stays_finite_and_exact():
    # exp(-exp(5)) = 1e-65 is 0 in float32: a kernel dividing by w^t would produce inf/nan here.
    B, T, H, N = 1, 200, 1, 16
    r, k, v, _, u = random_wkv_inputs(B, T, H, N, seed=3)
    log_w = torch.full((H, N), -torch.exp(torch.tensor(5.0)).item())
    want, _ = naive_wkv(r, k, v, log_w, u)
    got, state = wkv5_chunked(r, k, v, log_w, u, chunk_len=64)
    assert torch.isfinite(got).all() and torch.isfinite(state).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 17, 64])
def test_chunked_state_continuation_equals_one_pass(split):
    r, k, v, log_w, u = random_wkv_inputs(2, 90, 2, 16, seed=5)
    full, full_state = wkv5_chunked(r, k, v, log_w, u, chunk_len=16)
    a, s = wkv5_chunked(r[:, :split], k[:, :split], v[:, :split], log_w, u, chunk_len=16)
    b, s = wkv5_chunked(r[:, split:], k[:, split:], v[:, split:], log_w, u, s, chunk_len=16)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, full_state, rtol=1e-5, atol=1e-5)


def test_dispatch_and_errors():
    r, k, v, log_w, u = random_wkv_inputs(1, 8, 2, 16)
    torch.testing.assert_close(wkv5(r, k, v, log_w, u, impl="auto")[0], wkv5_reference(r, k, v, log_w, u)[0],
                               rtol=1e-5, atol=1e-5)
    assert not fused_available("cpu")
    with pytest.raises(ValueError, match="unknown WKV"):
        wkv5(r, k, v, log_w, u, impl="cuda")
    with pytest.raises(ValueError, match="power of two"):
        wkv5_chunked(r, k, v, log_w, u, chunk_len=48)
    with pytest.raises(ValueError, match=r"\[H, N\]"):
        wkv5_chunked(r, k, v, log_w[:1], u)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 200])
def test_fused_matches_chunked_on_cuda(T):
    if not fused_available("cuda"):
        pytest.skip("flash-linear-attention is not installed")
    inputs = [x.cuda() for x in random_wkv_inputs(2, T, 4, 64, seed=T, strong=True)]
    s0 = torch.randn(2, 4, 64, 64, device="cuda") * 0.5
    grad_out = torch.randn(2, T, 4, 64, device="cuda")

    def run(fn):
        leaves = [x.clone().requires_grad_(True) for x in (*inputs, s0)]
        out, state = fn(*leaves)
        (out * grad_out).sum().backward()
        return out.detach(), state.detach(), [x.grad for x in leaves]

    out_f, st_f, grads_f = run(wkv5_fused)
    out_c, st_c, grads_c = run(wkv5_chunked)
    # fla's matmuls run in tf32: compare at that precision.
    torch.testing.assert_close(out_f, out_c, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(st_f, st_c, rtol=2e-2, atol=2e-2)
    for gf, gc in zip(grads_f, grads_c):
        scale = gc.abs().max().clamp(min=1.0)
        torch.testing.assert_close(gf / scale, gc / scale, rtol=2e-2, atol=2e-2)
    # 'auto' picks the fused kernel on CUDA for long inputs
    auto, _ = wkv5(*inputs, s0)
    torch.testing.assert_close(auto, out_f, rtol=1e-6, atol=1e-6)


def test_chunked_gradients_pass_numerical_gradcheck():
    r, k, v, log_w, u = (x.requires_grad_(True) for x in random_wkv_inputs(1, 11, 2, 4, seed=9, strong=True,
                                                                          dtype=torch.float64))
    s0 = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: wkv5_chunked(*a, chunk_len=4), (r, k, v, log_w, u, s0))
