"""One-shot baselines of Fig. 4: MaskConnect (Ahmed & Torresani, ECCV 2018) with k = 2..5, and the L1 loss.

MaskConnect on an ``InputChoice(n_chosen=None)`` with ``n`` candidates ``x_1..x_n``:

* a real-valued mask ``m`` (one entry per candidate, ``m >= 0``, ``sum m = 1``; it starts near uniform);
* training forward: draw exactly ``k`` distinct candidates with probabilities proportional to ``m`` (sampling
  without replacement, ``torch.multinomial``), giving a binary selection ``b`` (``sum b = k``); the output is
  built from ``s = b + m - stop_grad(m)``, whose value is ``b`` and whose gradient is that of ``m``: the
  straight-through estimator, ``dL/dm_t := dL/db_t = <dL/d out, x_t>``, for every candidate, selected or not;
* after each optimizer step, ``m`` is clipped to [0, 1] and renormalised to sum 1 (:meth:`MaskConnectInput.clamp_`,
  which the SparseMask loop calls after every w step);
* evaluation and export keep the top-k of ``m`` (ties: the lower index); a choice with ``n <= k`` candidates keeps all.

The output honours the choice's ``reduction`` like :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput`:
``'sum'`` = ``sum_t s_t x_t``; ``'mean'`` = that sum divided by the number selected (``min(k, n)``);
``'concat'`` = concatenation of the selected inputs in candidate order (gradient reaches the selected entries
only: an unselected input cannot be carried without changing the shape); ``'none'`` = the list of the selected
inputs in candidate order in evaluation, and in training, with ``grad_to_unselected=True`` (default), the list of
all ``n`` candidates ``s_t x_t`` in which the unselected ones are exactly zero (their value is ``0 * x_t``; they
carry only the straight-through gradient). ``FDNSpace.forward`` sums the list with ``fuse``, so the value equals
the sum of the ``k`` selected edges either way. ``grad_to_unselected=False`` returns only the ``k`` selected.

Modules sharing a label share ``m`` but draw their selections independently in each forward.

The :class:`MaskConnect` strategy is :class:`~nni_sparsemask.nas.strategy.SparseMask` with the ``'task'`` loss (no
regulariser), this module instead of ``SparseMixedInput``, and a top-k export; it runs under ``NasExperiment``
like SparseMask. :class:`L1` is ``SparseMask(loss="l1")`` under its own name (lambda in ``L1_LAMBDAS`` in Fig. 4).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nni_sparsemask.nas.config import SparseMaskConfig
from nni_sparsemask.nas.strategy import SparseMask
from nni_sparsemask.nas.supermodule import SparseMixedInput, is_multi_input_choice, shared_arch_weights

__all__ = ["MaskConnectInput", "MaskConnect", "MaskConnectConfig", "L1", "MASKCONNECT_KS", "L1_LAMBDAS",
           "normalise_mask"]

#: the k of Fig. 4
MASKCONNECT_KS = (2, 3, 4, 5)
#: the lambda of the L1 baseline in Fig. 4
L1_LAMBDAS = (1e-3, 5e-3, 1e-2)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (inputs kept per decoder stage) must be an integer >= 1, e.g. 2..5 as in the paper; "
                         f"got {k!r}")
    return k


@torch.no_grad()
def normalise_mask(m: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and divide by the sum, in place; an all-zero mask becomes uniform. Returns ``m``."""
    m.clamp_(0.0, 1.0)
    total = m.sum()
    if total <= 0:
        m.fill_(1.0 / m.numel())
    else:
        m.div_(total)
    return m


class MaskConnectInput(SparseMixedInput):
    """MaskConnect's supernet module for an ``InputChoice(n_chosen=None)``; see the module docstring.

    Parameters
    ----------
    n_candidates: number of candidates.
    w: the mask ``m`` (an ``nn.Parameter``, shared by the modules of one label); normalised in place here.
    label, reduction: those of the replaced ``InputChoice``.
    k: inputs selected per forward and kept by ``export``.
    grad_to_unselected: with ``reduction='none'``, return all candidates in training (unselected ones zero-valued)
        so the straight-through gradient reaches every mask entry.

    The mask is stored as ``_arch_w`` (the SparseMask loop finds, logs, records and clamps it like w).
    :attr:`last_selection` holds the indices used by the latest forward.
    """

    def __init__(self, n_candidates: int, w: nn.Parameter, label: str, reduction: str = "sum", k: int = 2,
                 grad_to_unselected: bool = True):
        super().__init__(n_candidates, w, label, reduction)
        self.k = _check_k(k)
        self.grad_to_unselected = bool(grad_to_unselected)
        normalise_mask(self._arch_w.data)
        self.last_selection: list[int] | None = None

    @property
    def n_selected(self) -> int:
        """``min(k, n_candidates)``: a choice with fewer than k candidates keeps all of them."""
        return min(self.k, self.n_candidates)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clip the mask to [0, 1] and renormalise it to sum 1 (call after every optimizer step)."""
        normalise_mask(self._arch_w)

    def top_k(self) -> list[int]:
        """Indices of the ``n_selected`` largest mask entries (ties: lower index), sorted."""
        values = self._arch_w.detach().cpu().tolist()
        order = sorted(range(len(values)), key=lambda t: (-values[t], t))
        return sorted(order[: self.n_selected])

    def sample(self, generator: torch.Generator | None = None) -> list[int]:
        """Draw ``n_selected`` distinct indices with probabilities proportional to the mask, sorted."""
        if self.n_selected == self.n_candidates:
            return list(range(self.n_candidates))
        p = self._arch_w.detach().clamp(min=0.0)
        if float(p.sum()) <= 0:
            p = torch.ones_like(p)
        # multinomial needs at least k non-zero entries: give zero entries a negligible probability
        p = p + (p == 0).to(p.dtype) * 1e-12 * float(p.sum())
        return sorted(torch.multinomial(p, self.n_selected, replacement=False, generator=generator).tolist())

    # ---- BaseSuperNetModule -------------------------------------------------------------------------------
    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: the top-k indices of m}``."""
        if self.label in memo:
            return {}
        return {self.label: self.top_k()}

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        """Mutation hook: ``InputChoice(n_chosen=None)`` -> ``MaskConnectInput`` with ``mutate_kwargs['k']``."""
        if not is_multi_input_choice(module):
            return None
        if "k" not in mutate_kwargs:
            raise ValueError("MaskConnectInput.mutate needs mutate_kwargs['k'] (inputs kept per choice)")
        w = shared_arch_weights(module, name, memo, mutate_kwargs)
        return cls(module.n_candidates, w, module.label, module.reduction, mutate_kwargs["k"],
                   mutate_kwargs.get("grad_to_unselected", True))

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, candidate_inputs: list[Any]) -> Any:  # type: ignore[override]
        n = self.n_candidates
        if len(candidate_inputs) != n:
            raise ValueError(f"InputChoice {self.label!r} expects {n} candidate inputs, got {len(candidate_inputs)}")
        selected = self.sample() if self.training else self.top_k()
        self.last_selection = selected
        if not self.training:
            chosen = [candidate_inputs[t] for t in selected]
            return _reduce(chosen, self.reduction)
        m = self._arch_w
        b = torch.zeros_like(m)
        b[selected] = 1.0
        s = b + (m - m.detach())  # value exactly b, gradient of m (straight-through)
        if self.reduction == "concat":
            return torch.cat([s[t] * candidate_inputs[t] for t in selected], dim=1)
        if self.reduction == "none" and not self.grad_to_unselected:
            return [s[t] * candidate_inputs[t] for t in selected]
        terms = [s[t] * x for t, x in enumerate(candidate_inputs)]
        if self.reduction == "none":
            return terms
        total = terms[0]
        for item in terms[1:]:
            total = total + item
        return total / len(selected) if self.reduction == "mean" else total

    def extra_repr(self) -> str:
        return f"n_candidates={self.n_candidates}, k={self.k}, reduction={self.reduction!r}, label={self.label!r}"


def _reduce(chosen: list[Any], reduction: str) -> Any:
    if reduction == "none":
        return chosen
    if reduction == "concat":
        return torch.cat(chosen, dim=1)
    total = chosen[0]
    for item in chosen[1:]:
        total = total + item
    return total / len(chosen) if reduction == "mean" else total


def _mutate_with(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any], *,
                 k: int, grad_to_unselected: bool):
    return MaskConnectInput.mutate(module, name, memo,
                                   {**mutate_kwargs, "k": k, "grad_to_unselected": grad_to_unselected})


@dataclass
class MaskConnectConfig(SparseMaskConfig):
    """:class:`SparseMaskConfig` plus ``k`` (saved to the run directory, so a resume with another k is refused)."""

    k: int = 2
    grad_to_unselected: bool = True

    def validate(self) -> None:
        super().validate()
        _check_k(self.k)
        if self.loss != "task" or self.lambda_sparse != 0:
            raise ValueError("MaskConnect trains with the task loss only (loss='task', lambda_sparse=0)")
        if self.arc_noise != 0:
            raise ValueError("MaskConnect's training forward uses a sampled binary selection, not w: arc_noise must "
                             f"be 0, got {self.arc_noise!r}")


class MaskConnect(SparseMask):
    """MaskConnect (Ahmed & Torresani, 2018) as an NNI one-shot strategy: exactly ``k`` inputs per choice.

    ``NasExperiment(FDNSpace(...), evaluator, MaskConnect(k=3)).run()``; ``strategy.export()`` gives the top-k of
    every choice and ``strategy.connectivity()`` the pruned FDN connectivity of that selection (edge weight 1.0;
    the masks are in ``meta["mask"]`` and their per-epoch values in ``history``).

    Parameters
    ----------
    k: inputs per decoder stage (2..5 in Fig. 4); stages with fewer candidates keep all.
    grad_to_unselected: see :class:`MaskConnectInput`.
    arc_learning_rate, arc_optimizer, optimization, seed, warmup_epochs, run_dir, ...: as for :class:`SparseMask`
        (``lambda_sparse``, ``loss`` and ``threshold`` are fixed: no regulariser, top-k export; ``arc_noise`` is 0:
        the mask never enters a forward as a value).
    """

    def __init__(self, k: int = 2, *, grad_to_unselected: bool = True, **kwargs: Any):
        for fixed in ("lambda_sparse", "loss", "threshold", "alpha", "eps", "undecided_warn_fraction"):
            if fixed in kwargs:
                raise ValueError(f"MaskConnect does not take {fixed!r}: it trains with the task loss only and "
                                 "keeps the top-k inputs of each choice")
        _check_k(k)
        kwargs.setdefault("arc_noise", 0.0)
        super().__init__(lambda_sparse=0.0, loss="task", undecided_warn_fraction=1.0, **kwargs)
        self.config = MaskConnectConfig(**dataclasses.asdict(self.config), k=k,
                                        grad_to_unselected=bool(grad_to_unselected))
        self.config.validate()

    @property
    def k(self) -> int:
        return self.config.k

    def extra_repr(self) -> str:
        return f"k={self.k}, optimization={self.config.optimization!r}"

    def default_mutation_hooks(self) -> list:
        hook = functools.partial(_mutate_with, k=self.config.k, grad_to_unselected=self.config.grad_to_unselected)
        return [hook if h == SparseMixedInput.mutate else h for h in super().default_mutation_hooks()]

    def connectivity(self):
        """The FDN connectivity of the top-k selection, pruned (dead stages dropped, duplicates merged)."""
        space = self.supernet
        fn = getattr(space, "connectivity_from_weights", None)
        if fn is None:
            raise ValueError(f"{type(space).__name__} has no connectivity_from_weights(weights, threshold, history): "
                             "connectivity() is for FDN spaces; use strategy.export() instead.")
        masks = self.weights()
        exported = self.export()
        binary = {label: [1.0 if t in exported[label] else 0.0 for t in range(len(m))] for label, m in masks.items()}
        conn = fn(binary, 0.5, self.history())
        if hasattr(conn, "meta"):
            conn.meta = dict(conn.meta, strategy="maskconnect", k=self.k, mask=masks)
        return conn


class L1(SparseMask):
    """The L1 baseline of Fig. 4: ``SparseMask(loss="l1", lambda_sparse=...)``, R(w) = |w|_1 (lambda in L1_LAMBDAS)."""

    def __init__(self, lambda_sparse: float = 1e-3, threshold: float = 1e-3, **kwargs: Any):
        if "loss" in kwargs:
            raise ValueError("L1 fixes loss='l1'; use SparseMask(loss=...) for the other losses")
        super().__init__(lambda_sparse=lambda_sparse, threshold=threshold, loss="l1", **kwargs)
