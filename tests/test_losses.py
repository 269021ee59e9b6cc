import math

import pytest
import torch

from nni_sparsemask.nas.losses import alpha_rule, binary_loss, l1_loss, lm, sparse_loss, sparsity_loss


def _h(p, q):
    return -p * math.log(q) - (1 - p) * math.log(1 - q)


def test_lm_matches_hand_computation():
    assert lm(0.3, torch.tensor(0.6)).item() == pytest.approx(_h(0.3, 0.6), rel=1e-6)
    # q clamped at the ends: finite, equal to the eps value
    v = lm(1.0, torch.tensor(0.0), eps=1e-6).item()
    assert v == pytest.approx(-math.log(1e-6), rel=1e-4)


def test_values_against_hand_computation():
    w = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    bp = sum(_h(x, x) for x in w.tolist()) / 4
    assert binary_loss(w).item() == pytest.approx(bp, rel=1e-9)
    mean = sum(w.tolist()) / 4  # 0.45
    sp = _h(0.5, mean)
    assert sparsity_loss(w, 0.5).item() == pytest.approx(sp, rel=1e-9)
    assert sparse_loss(w, 0.5).item() == pytest.approx(bp + sp, rel=1e-9)
    assert l1_loss(torch.tensor([0.2, -0.3, 0.0])).item() == pytest.approx(0.5)
    # known numbers: entropy of 0.5 is log 2
    assert binary_loss(torch.full((3,), 0.5)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_alpha_rule():
    assert alpha_rule(1) == 0.5
    assert alpha_rule(2) == 0.5
    assert alpha_rule(4) == 0.5
    assert alpha_rule(5) == pytest.approx(0.4)
    assert alpha_rule(18) == pytest.approx(2 / 18)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_alpha_rule_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        alpha_rule(bad)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    w = torch.tensor([0.2, 0.4])
    with pytest.raises(ValueError, match=r"alpha .* \(0, 1\)"):
        sparsity_loss(w, alpha)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        sparse_loss(w, alpha)


def test_empty_w_rejected():
    with pytest.raises(ValueError, match="empty"):
        binary_loss(torch.zeros(0))


def test_gradcheck_float64():
    w = torch.tensor([0.15, 0.4, 0.62, 0.83, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(binary_loss, (w,))
    assert torch.autograd.gradcheck(lambda x: sparsity_loss(x, 0.3), (w,))
    assert torch.autograd.gradcheck(lambda x: sparse_loss(x, 0.4), (w,))
    assert torch.autograd.gradcheck(lambda x: l1_loss(x), (w,))


def test_binary_gradient_formula():
    # d L_bp / d w_t = log((1 - w_t) / w_t) / n
    w = torch.tensor([0.2, 0.7, 0.5], dtype=torch.float64, requires_grad=True)
    binary_loss(w).backward()
    expected = torch.log((1 - w.detach()) / w.detach()) / 3
    torch.testing.assert_close(w.grad, expected)


def _minimise(fn, w0, steps=400, lr=0.05):
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        fn(w).backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(0.0, 1.0)
    return w.detach()


def test_fig2a_binary_part_goes_to_0_or_1():
    w = _minimise(binary_loss, [0.3, 0.7, 0.45, 0.55])
    assert w[0] < 1e-3 and w[2] < 1e-3
    assert w[1] > 1 - 1e-3 and w[3] > 1 - 1e-3


def test_fig2b_sparse_part_moves_mean_to_alpha():
    for alpha, start in [(0.2, [0.6, 0.7, 0.5, 0.8]), (0.4, [0.05, 0.1, 0.2, 0.0])]:
        w0 = torch.tensor(start, dtype=torch.float64)
        w = _minimise(lambda x: sparsity_loss(x, alpha), start, steps=2000, lr=0.05)
        assert abs(w.mean().item() - alpha) < 0.01
        assert abs(w.mean().item() - alpha) < abs(w0.mean().item() - alpha) / 10
