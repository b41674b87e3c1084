"""Losses against direct formulas written out per row / per group."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cross_encoder.training.losses import LOSSES, bce_loss, get_loss, grouped_loss, mse_loss


def test_bce_and_mse_match_formulas():
    s = torch.tensor([2.0, -1.0, 0.3, -4.0])
    y = torch.tensor([1, 0, 0, 1])
    sig = [1 / (1 + math.exp(-x)) for x in s.tolist()]
    want = -sum(math.log(p) if l else math.log(1 - p) for p, l in zip(sig, y.tolist())) / 4
    assert math.isclose(float(bce_loss(s, y)), want, rel_tol=1e-6)
    assert math.isclose(float(mse_loss(s, y)), sum((a - b) ** 2 for a, b in zip(s.tolist(), y.tolist())) / 4,
                        rel_tol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-30, 30), st.integers(0, 1), st.integers(0, 4)), min_size=1, max_size=20))
def test_grouped_matches_per_group_softmax(rows):
    s = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    y = torch.tensor([r[1] for r in rows])
    g = torch.tensor([r[2] for r in rows])
    terms = []
    for k in sorted(set(g.tolist())):
        m = g == k
        if 0 < int(y[m].sum()) < int(m.sum()):
            terms.append(torch.logsumexp(s[m], 0) - torch.logsumexp(s[m & (y == 1)], 0))
    got = grouped_loss(s.float(), y, g)
    if not terms:
        assert float(got) == 0.0
    else:
        assert math.isclose(float(got), float(torch.stack(terms).mean()), rel_tol=1e-5, abs_tol=1e-5)


def test_grouped_gradient_finite_for_hopeless_positive():
    s = torch.tensor([-200.0, 50.0, 40.0, 1.0, 2.0], requires_grad=True)
    y = torch.tensor([1, 0, 0, 0, 0])  # group 9 has no positive: skipped, zero gradient
    g = torch.tensor([3, 3, 3, 9, 9])
    loss = grouped_loss(s, y, g)
    loss.backward()
    assert torch.isfinite(loss.detach()) and torch.isfinite(s.grad).all()
    assert s.grad[3:].abs().sum() == 0
    assert math.isclose(loss.item(), 250.0 + math.log(1 + math.exp(-10)), rel_tol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_decreases_under_gradient_descent(name):
    torch.manual_seed(0)
    s = torch.randn(6, requires_grad=True)
    y = torch.tensor([1, 0, 0, 1, 0, 0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    fn = get_loss(name)
    first = fn(s, y, g).item()
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        fn(s, y, g).backward()
        opt.step()
    assert fn(s, y, g).item() < first * 0.8


def test_unknown_loss_names_choices():
    with pytest.raises(ValueError, match="bce"):
        get_loss("hinge")
