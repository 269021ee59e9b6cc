"""The losses of nas/losses.py against numbers computed without them.

Expected values are written out (float64, from the natural logarithms noted next to them) or come from
``torch.nn.functional.binary_cross_entropy``, since Lm(p, q) is the binary cross entropy of input q and target p.
H(x) below is Lm(x, x) = -x ln x - (1 - x) ln(1 - x).
"""
import pytest
import torch
import torch.nn.functional as F

from nni_sparsemask.nas.losses import (LOSSES, alpha_rule, binary_loss, l1_loss, lm, regulariser, sparse_loss,
                                       sparsity_loss, stage_regulariser)

LN2 = 0.6931471805599453  # ln 2
F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


# ---- values by hand -------------------------------------------------------------------------------------------
def test_lm_by_hand():
    # Lm(0.3, 0.6) = -0.3 ln 0.6 - 0.7 ln 0.4 = 0.3 * 0.5108256237659907 + 0.7 * 0.9162907318741551
    #              = 0.15324768712979720 + 0.64140351231190855 = 0.7946511994417058
    assert lm(0.3, t(0.6)).item() == pytest.approx(0.7946511994417058, rel=1e-12)
    # Lm(p, 0.5) = -p ln 0.5 - (1 - p) ln 0.5 = ln 2 for any p
    torch.testing.assert_close(lm(t(0.0, 0.25, 1.0), t(0.5, 0.5, 0.5)), t(LN2, LN2, LN2))


def test_lm_clamps_q_at_eps():
    # q = 0 is clamped to eps = 1e-6: Lm(1, 0) = -ln(1e-6) = 13.815510557964274
    assert lm(1.0, t(0.0), eps=1e-6).item() == pytest.approx(13.815510557964274, rel=1e-12)
    # q = 1 is clamped to 1 - 1e-6: Lm(0, 1) = -ln(1 - (1 - 1e-6)) = -ln(1e-6), up to the rounding of 1 - 1e-6
    assert lm(0.0, t(1.0), eps=1e-6).item() == pytest.approx(13.815510557964274, rel=1e-9)
    # a larger eps gives a smaller value: -ln(1e-2) = 4.605170185988091
    assert lm(1.0, t(0.0), eps=1e-2).item() == pytest.approx(4.605170185988091, rel=1e-12)


def test_binary_sparsity_and_sparse_loss_by_hand():
    w = t(0.1, 0.5, 0.9, 0.3)
    # H(0.1) = H(0.9) = 0.1 * 2.3025850929940457 + 0.9 * 0.1053605156578263 = 0.3250829733914482
    # H(0.5) = ln 2 = 0.6931471805599453
    # H(0.3) = 0.3 * 1.2039728043259361 + 0.7 * 0.35667494393873245 = 0.6108643020548935
    # L_bp = (2 * 0.3250829733914482 + 0.6931471805599453 + 0.6108643020548935) / 4 = 0.4885443573494338
    assert binary_loss(w).item() == pytest.approx(0.4885443573494338, rel=1e-12)
    # mean(w) = 1.8 / 4 = 0.45;  L_sp(w, 0.5) = Lm(0.5, 0.45) = 0.5 * (-ln 0.45 - ln 0.55)
    #         = 0.5 * (0.7985076962177716 + 0.5978370007556204) = 0.6981723484866960
    assert sparsity_loss(w, 0.5).item() == pytest.approx(0.6981723484866960, rel=1e-12)
    # Eq. 2: L_s = 0.4885443573494338 + 0.6981723484866960 = 1.1867167058361298
    assert sparse_loss(w, 0.5).item() == pytest.approx(1.1867167058361298, rel=1e-12)
    # L1 = |0.2| + |-0.3| + |0| = 0.5
    assert l1_loss(t(0.2, -0.3, 0.0)).item() == pytest.approx(0.5, rel=1e-12)


def test_binary_loss_is_zero_at_the_corners_and_largest_at_one_half():
    # H(0) = H(1) = 0 up to the eps clamp: -(1 - 0) ln(1 - 1e-6) = 1.0000005e-06
    assert binary_loss(t(0.0, 1.0)).item() == pytest.approx(1.0000005e-06, rel=1e-6)
    assert binary_loss(t(0.5, 0.5, 0.5)).item() == pytest.approx(LN2, rel=1e-12)


# ---- values against torch's binary cross entropy ------------------------------------------------------------
def test_lm_is_torch_binary_cross_entropy():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, generator=g, dtype=F64)
    q = 0.01 + 0.98 * torch.rand(50, generator=g, dtype=F64)
    torch.testing.assert_close(lm(p, q), F.binary_cross_entropy(q, p, reduction="none"))


def test_binary_and_sparsity_loss_are_torch_binary_cross_entropy():
    w = t(0.15, 0.4, 0.62, 0.83, 0.5)
    torch.testing.assert_close(binary_loss(w), F.binary_cross_entropy(w, w))
    for alpha in (0.1, 0.4, 0.5, 0.9):
        expected = F.binary_cross_entropy(w.mean(), torch.tensor(alpha, dtype=F64))
        torch.testing.assert_close(sparsity_loss(w, alpha), expected)


# ---- gradients --------------------------------------------------------------------------------------------------
def grad(fn, *values):
    w = t(*values).requires_grad_(True)
    fn(w).backward()
    return w.grad


def test_binary_gradient_by_hand():
    # d L_bp / d w_t = ln((1 - w_t) / w_t) / n;  n = 3:
    # w = 0.2: ln(0.8 / 0.2) / 3 = ln 4 / 3 = 1.3862943611198906 / 3 = 0.46209812037329684
    # w = 0.5: ln 1 / 3 = 0;  w = 0.8: ln(0.2 / 0.8) / 3 = -0.46209812037329684
    torch.testing.assert_close(grad(binary_loss, 0.2, 0.5, 0.8), t(0.46209812037329684, 0.0, -0.46209812037329684))


def test_binary_gradient_matches_torch_binary_cross_entropy():
    values = (0.15, 0.4, 0.62, 0.83, 0.5)
    torch.testing.assert_close(grad(binary_loss, *values), grad(lambda w: F.binary_cross_entropy(w, w), *values))


def test_binary_gradient_at_the_clamp_flows_through_p_only():
    # at w_t = 0, q is clamped (no gradient through q); through p: (-ln eps + ln(1 - eps)) / n
    #   = (13.815510557964274 - 1.0000005000003334e-06) / 2 = 6.907754778981887   (eps = 1e-6, n = 2)
    # at w_t = 1, q is clamped to 1 - eps: (-ln(1 - eps) + ln eps) / n = -6.907754778981887
    torch.testing.assert_close(grad(binary_loss, 0.0, 1.0), t(6.907754778981887, -6.907754778981887))


def test_sparsity_gradient_by_hand():
    # d L_sp / d w_t = (-alpha / m + (1 - alpha) / (1 - m)) / n with m = mean(w)
    # w = (0.2, 0.5, 0.8): m = 0.5; alpha = 0.25: (-0.25 / 0.5 + 0.75 / 0.5) / 3 = (-0.5 + 1.5) / 3 = 1/3 each
    torch.testing.assert_close(grad(lambda w: sparsity_loss(w, 0.25), 0.2, 0.5, 0.8), t(1 / 3, 1 / 3, 1 / 3))
    # alpha = m: the gradient vanishes
    torch.testing.assert_close(grad(lambda w: sparsity_loss(w, 0.5), 0.2, 0.5, 0.8), t(0.0, 0.0, 0.0))


def test_sparse_loss_gradient_is_the_sum_of_its_parts():
    # (0.46209812037329684 + 1/3, 0 + 1/3, -0.46209812037329684 + 1/3)
    expected = t(0.7954314537066302, 1 / 3, -0.12876478703996351)
    torch.testing.assert_close(grad(lambda w: sparse_loss(w, 0.25), 0.2, 0.5, 0.8), expected)


def test_l1_gradient_is_the_sign():
    torch.testing.assert_close(grad(l1_loss, 0.2, -0.3, 0.7), t(1.0, -1.0, 1.0))


def test_gradcheck_float64():
    w = t(0.15, 0.4, 0.62, 0.83, 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(binary_loss, (w,))
    assert torch.autograd.gradcheck(lambda x: sparsity_loss(x, 0.3), (w,))
    assert torch.autograd.gradcheck(lambda x: sparse_loss(x, 0.4), (w,))


# ---- the regulariser of Eq. 3 ---------------------------------------------------------------------------------
# two stages: w1 = (0.2, 0.5, 0.8) with alpha 0.5, w2 = (0.5, 0.5) with alpha 0.25
# H(0.2) = H(0.8) = 0.2 * 1.6094379124341003 + 0.8 * 0.2231435513142098 = 0.5004024235381879
# L_bp(w1) = (2 * 0.5004024235381879 + ln 2) / 3 = 0.5646506758787737;  L_bp(w2) = ln 2
# L_sp(w1, 0.5) = Lm(0.5, mean 0.5) = ln 2;  L_sp(w2, 0.25) = Lm(0.25, 0.5) = ln 2
# L1: |w1| = 1.5, |w2| = 1.0
REG_EXPECTED = {
    "sparsemask": 0.5646506758787737 + 3 * LN2,  # = 2.6440922175586096
    "binary": 0.5646506758787737 + LN2,          # = 1.2577978564387190
    "sparse": 2 * LN2,                           # = 1.3862943611198906
    "l1": 2.5,
    "task": 0.0,
}


@pytest.mark.parametrize("loss", LOSSES)
def test_regulariser_sums_the_stages(loss):
    stages = [(t(0.2, 0.5, 0.8), 0.5), (t(0.5, 0.5), 0.25)]
    assert regulariser(stages, loss).item() == pytest.approx(REG_EXPECTED[loss], rel=1e-12, abs=1e-15)


def test_stage_regulariser_by_hand():
    w = t(0.2, 0.5, 0.8)
    assert stage_regulariser(w, "sparsemask", 0.5).item() == pytest.approx(0.5646506758787737 + LN2, rel=1e-12)
    assert stage_regulariser(w, "sparse", 0.25).item() == pytest.approx(LN2, rel=1e-12)
    assert stage_regulariser(w, "task", 0.5).item() == 0.0


def test_regulariser_refuses_unknown_loss_and_no_stages():
    with pytest.raises(ValueError, match="'focal'.*sparsemask, binary, sparse, task, l1"):
        stage_regulariser(t(0.5), "focal", 0.5)
    with pytest.raises(ValueError, match="no stages"):
        regulariser([], "sparsemask")


# ---- alpha and bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, alpha", [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5), (5, 0.4), (8, 0.25),
                                      (18, 0.1111111111111111)])
def test_alpha_rule(n, alpha):
    # min(2 / n, 0.5): 2/1, 2/2, 2/3 = 0.667 and 2/4 are capped at 0.5; 2/5 = 0.4, 2/8 = 0.25, 2/18 = 0.111...
    assert alpha_rule(n) == pytest.approx(alpha, rel=1e-15)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_alpha_rule_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        alpha_rule(bad)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    w = torch.tensor([0.2, 0.4])
    with pytest.raises(ValueError, match=r"alpha .* \(0, 1\)"):
        sparsity_loss(w, alpha)
    with pytest.raises(ValueError, match=r"alpha .* \(0, 1\)"):
        sparse_loss(w, alpha)


@pytest.mark.parametrize("eps", [0.0, 0.5, -1e-6])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\)"):
        lm(0.5, t(0.5), eps=eps)


def test_empty_w_rejected():
    for fn in (binary_loss, l1_loss, lambda w: sparsity_loss(w, 0.5)):
        with pytest.raises(ValueError, match="empty"):
            fn(torch.zeros(0))


# ---- the behaviour of Fig. 2 ------------------------------------------------------------------------------------
def _minimise(fn, w0, steps=400, lr=0.05):
    w = torch.tensor(w0, dtype=F64, requires_grad=True)
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


@pytest.mark.parametrize("alpha, start", [(0.2, [0.6, 0.7, 0.5, 0.8]), (0.4, [0.05, 0.1, 0.2, 0.0])])
def test_fig2b_sparse_part_moves_mean_to_alpha(alpha, start):
    w = _minimise(lambda x: sparsity_loss(x, alpha), start, steps=2000, lr=0.05)
    assert abs(w.mean().item() - alpha) < 0.01
    start_distance = abs(sum(start) / len(start) - alpha)  # 0.45 and 0.312
    assert abs(w.mean().item() - alpha) < start_distance / 10
