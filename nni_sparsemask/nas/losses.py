"""SparseMask's losses on the connection weights w (section 3.2, Eq. 2-3 and 5), as pure functions.

Notation: ``w`` is the 1-D tensor of the weights w_l = {w_t^l, t in T_l} of one decoder stage (one
``InputChoice``), each in [0, 1]; ``mu(.)`` is the mean; ``eps`` keeps the logarithms finite.

    Lm(p, q)     = -p log q - (1 - p) log(1 - q),   q clamped to [eps, 1 - eps]
    L_bp(w)      = mu(Lm(w, w))                     binary part: pushes every w_t towards 0 or 1 (Fig. 2a)
    L_sp(w, a)   = Lm(a, mu(w))                     sparse part: pulls the mean of w towards a (Fig. 2b)
    L_s(w, a)    = L_bp(w) + L_sp(w, a)             Eq. 2
    a_l          = min(2 / |T_l|, 0.5)              Eq. 5: each stage tends to keep about two inputs
    L1(w)        = sum_t |w_t|                      the L1 baseline of Fig. 4
    L_c(C, B)    = max(0, C / B - 1)                cost-aware search: the cost C above the budget B, with
    C(w)         = c(1[w > s]) + c(w) - sg(c(w))    the value of the kept architecture's cost, the gradient of
                                                   the expected cost c(w) (sg: stop gradient; s: sigma)

The regulariser of Eq. 3, ``L = L_task + lambda * sum_l R(w_l)``, is :func:`regulariser`; ``R`` is named by
the strategy's ``loss`` (one of :data:`LOSSES`, see :func:`stage_regulariser`). A cost-aware search adds
``mu * L_c(E[cost](w), B)`` (:func:`budget_penalty`). Nothing here knows about NNI.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["DEFAULT_EPS", "LOSSES", "lm", "binary_loss", "sparsity_loss", "sparse_loss", "alpha_rule", "l1_loss",
           "stage_regulariser", "regulariser", "budget_penalty", "kept_cost"]

DEFAULT_EPS = 1e-6
#: the names of R(w) that :func:`stage_regulariser` knows (the strategy's ``loss`` setting)
LOSSES = ("sparsemask", "binary", "sparse", "task", "l1")


def _check_eps(eps: float) -> None:
    if not (0.0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, torch.Tensor):
        alpha = float(alpha)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha (the target mean of w) must be a number in (0, 1), got {alpha!r}")


def _check_w(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"w must be a torch.Tensor of connection weights, got {type(w).__name__}")
    if w.numel() == 0:
        raise ValueError("w is empty: a stage needs at least one candidate input")


def lm(p: torch.Tensor | float, q: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Element-wise binary cross entropy ``Lm(p, q) = -p log q - (1 - p) log(1 - q)``.

    ``q`` is clamped to ``[eps, 1 - eps]`` so that q in {0, 1} (exact after the [0, 1] clamp of w) stays
    finite; in the clamped region the gradient flows through ``p`` only. ``p`` is used as is.
    """
    _check_eps(eps)
    q = q.clamp(eps, 1.0 - eps)
    return -p * torch.log(q) - (1.0 - p) * torch.log1p(-q)


def binary_loss(w: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Binary part ``L_bp(w) = mean_t Lm(w_t, w_t)`` (the entropy of each w_t, averaged).

    Its minima are w_t in {0, 1}; the derivative is ``log((1 - w_t) / w_t) / |w|``: w_t < 0.5 is pushed
    down to 0 and w_t > 0.5 up to 1.
    """
    _check_w(w)
    return lm(w, w, eps).mean()


def sparsity_loss(w: torch.Tensor, alpha: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Sparse part ``L_sp(w, alpha) = Lm(alpha, mean(w))``, minimal when ``mean(w) = alpha``.

    ``alpha`` must lie in (0, 1); use :func:`alpha_rule` for the paper's choice.
    """
    _check_w(w)
    _check_alpha(alpha)
    return lm(float(alpha), w.mean(), eps)


def sparse_loss(w: torch.Tensor, alpha: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Eq. 2: ``L_s(w, alpha) = mean(Lm(w, w)) + Lm(alpha, mean(w)) = L_bp(w) + L_sp(w, alpha)``."""
    return binary_loss(w, eps) + sparsity_loss(w, alpha, eps)


def alpha_rule(n_candidates: int) -> float:
    """Eq. 5: ``alpha_l = min(2 / |T_l|, 0.5)`` for a stage with ``n_candidates = |T_l|`` inputs."""
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
        raise ValueError(f"the number of candidate inputs must be an integer >= 1, got {n_candidates!r}")
    return min(2.0 / n_candidates, 0.5)


def l1_loss(w: torch.Tensor) -> torch.Tensor:
    """L1 baseline: ``L1(w) = sum_t |w_t|`` (the strategy multiplies it by lambda)."""
    _check_w(w)
    return w.abs().sum()


def stage_regulariser(w: torch.Tensor, loss: str, alpha: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``R(w)`` of one stage for the regulariser named ``loss``:

        'sparsemask'  L_s(w, alpha) = L_bp(w) + L_sp(w, alpha)   Eq. 2, the paper's loss
        'binary'      L_bp(w)                                    the "L_task + L_bp" ablation of Table 1
        'sparse'      L_sp(w, alpha)                             the "L_task + L_sp" ablation
        'task'        0                                          no regulariser
        'l1'          L1(w)                                      the L1 baseline of Fig. 4

    ``alpha`` is used by 'sparsemask' and 'sparse' only.
    """
    if loss == "sparsemask":
        return sparse_loss(w, alpha, eps)
    if loss == "binary":
        return binary_loss(w, eps)
    if loss == "sparse":
        return sparsity_loss(w, alpha, eps)
    if loss == "l1":
        return l1_loss(w)
    if loss == "task":
        _check_w(w)
        return w.new_zeros(())
    raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")


def regulariser(stages: Iterable[tuple[torch.Tensor, float]], loss: str, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``sum_l R(w_l)`` over the stages ``(w_l, alpha_l)``: Eq. 3 without lambda, R as in :func:`stage_regulariser`.

    For ``loss='sparsemask'`` this is ``sum_l [mean(Lm(w_l, w_l)) + Lm(alpha_l, mean(w_l))]``.
    """
    terms = [stage_regulariser(w, loss, alpha, eps) for w, alpha in stages]
    if not terms:
        raise ValueError("no stages: the regulariser sums over at least one stage's w")
    return torch.stack(terms).sum()


def budget_penalty(cost: torch.Tensor, budget: float) -> torch.Tensor:
    """``L_c(C, B) = max(0, C / B - 1)``: the relative excess of the expected cost ``C`` (a 0-d tensor, e.g. the
    expected decoder latency under w) over the budget ``B > 0``.

    Zero, with zero gradient, once the cost is within budget: below the budget the sparse loss alone decides; above
    it every w is pushed down in proportion to how much its edge costs (the gradient of ``C`` over ``B``).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"the cost budget must be a finite number > 0, got {budget!r}")
    if cost.dim() != 0:
        raise ValueError(f"the expected cost must be a scalar (0-d tensor), got shape {tuple(cost.shape)}")
    return torch.relu(cost / budget - 1)


def kept_cost(cost_fn, w: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
    """``C(w) = c(1[w > sigma]) + c(w) - sg(c(w))``: the cost of the architecture pruning at ``threshold`` would
    keep, as the value, with the gradient of the expected cost ``c(w)`` (straight through).

    Why not ``c(w)`` alone: under a hinge on ``c(w)`` an expensive but useful input settles where ``c(w)`` meets the
    budget, at a fractional w (0.2 on the toy space of the tests) that pruning keeps, so the kept network
    misses the budget by the whole edge. With the kept cost, the pull lasts until the edge is really pruned.
    ``cost_fn`` maps ``{label: w}`` to a 0-d tensor (e.g. the FDN's expected cost).
    """
    soft = cost_fn(w)
    with torch.no_grad():
        hard = cost_fn({label: (v > threshold).to(v.dtype) for label, v in w.items()})
    return soft + (hard - soft).detach()
