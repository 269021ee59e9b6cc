"""``SparseMixedInput``: the supernet module that replaces an ``InputChoice(n_chosen=None)`` (section 3.2).

NNI's own ``DifferentiableMixedInput`` softmaxes its logits and silently forces ``n_chosen=1``. SparseMask
instead keeps one independent weight per candidate, ``w_t in [0, 1]`` (no softmax: several inputs may be
on at once), and multiplies each candidate by it (Eq. 1 / Eq. 4). With ``x_t`` the t-th candidate and
``n = n_candidates`` the forward honours the choice's ``reduction``:

    'sum'    ->  sum_t w_t x_t
    'mean'   ->  (sum_t w_t x_t) / n
    'concat' ->  cat([w_1 x_1, ..., w_n x_n], dim=1)
    'none'   ->  [w_1 x_1, ..., w_n x_n]       (the FDN space sums them itself, grouped by resolution)

Noise injection (the official SparseMask recipe): with ``noise > 0`` every forward in training mode uses
``w~ = clamp(w + noise * N(0, 1), 0, 1)`` instead of w (a fresh draw per forward, from torch's global RNG, which
the strategy reseeds per epoch), and keeps the draw so that the sparse loss can be computed on the same w~
(:attr:`SparseMixedInput.forward_weights`; the gradient reaches w through it, zero where the clamp is active).
Evaluation forwards use w itself. Modules sharing a label draw their own noise.

``export`` keeps the candidates with ``w_t >= threshold`` (sigma of section 3.3), as a sorted list of ints,
which is the value format of NNI's ``CategoricalMultiple`` (so ``model_space.freeze(export)`` works).

The weights live in an ``nn.Parameter`` called ``_arch_w`` (see :attr:`SparseMixedInput.ARCH_PARAMETER_NAME`),
returned by :meth:`SparseMixedInput.arch_parameters`, so they can be told apart from the network weights.
After each optimizer step the strategy calls :meth:`SparseMixedInput.clamp_` to project w back into [0, 1].
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from nni.mutable import frozen_context
from nni.nas.nn.pytorch import InputChoice
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

__all__ = ["SparseMixedInput", "init_arch_weights", "is_multi_input_choice", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 1e-3


def is_multi_input_choice(module: nn.Module) -> bool:
    """True for an (unmutated) ``InputChoice`` with ``n_chosen=None``: what SparseMask searches."""
    return isinstance(module, InputChoice) and not isinstance(module, BaseSuperNetModule) and module.n_chosen is None


def init_arch_weights(n_candidates: int, init: float = 0.5, noise: float = 1e-2,
                      generator: torch.Generator | None = None) -> nn.Parameter:
    """A fresh ``w``: ``init + noise * N(0, 1)`` per candidate, clamped into [0, 1].

    The small noise breaks the symmetry at 0.5 (the maximum of L_bp); pass a seeded ``generator`` to
    make it reproducible.
    """
    if not isinstance(n_candidates, int) or n_candidates < 1:
        raise ValueError(f"n_candidates must be an integer >= 1, got {n_candidates!r}")
    if not 0.0 <= init <= 1.0:
        raise ValueError(f"the initial w must be in [0, 1], got {init!r}")
    if noise < 0:
        raise ValueError(f"the init noise must be >= 0, got {noise!r}")
    values = init + noise * torch.randn(n_candidates, generator=generator)
    return nn.Parameter(values.clamp(0.0, 1.0))


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise ValueError(f"threshold (sigma) must be a number in (0, 1), got {threshold!r}")


class SparseMixedInput(InputChoice, BaseSuperNetModule):
    """Multi-input choice with one weight ``w_t in [0, 1]`` per candidate; see the module docstring.

    Parameters
    ----------
    n_candidates: number of candidate inputs ``|T_l|``.
    w: the weight tensor (an ``nn.Parameter`` of length ``n_candidates``); modules sharing a label share it.
    label: the label of the replaced ``InputChoice``.
    reduction: ``'sum'``, ``'mean'``, ``'concat'`` or ``'none'``, as in the replaced choice.
    threshold: sigma; ``export`` keeps ``w_t >= threshold``.
    noise: std of the noise on w in training forwards (0: none).
    """

    ARCH_PARAMETER_NAME = "_arch_w"
    _arch_parameter_names: list[str] = [ARCH_PARAMETER_NAME]

    def __init__(self, n_candidates: int, w: nn.Parameter, label: str, reduction: str = "sum",
                 threshold: float = DEFAULT_THRESHOLD, noise: float = 0.0):
        if reduction not in ("sum", "mean", "concat", "none"):
            raise ValueError(f"reduction must be one of 'sum', 'mean', 'concat', 'none', got {reduction!r}")
        _check_threshold(threshold)
        # InputChoice freezes its dry-run value from the frozen context; an empty context makes it
        # constructible outside NNI's mutation pass too.
        with frozen_context():
            super().__init__(n_candidates, n_chosen=None, reduction=reduction, label=label)  # type: ignore[arg-type]
        if not isinstance(w, nn.Parameter):
            w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        if w.dim() != 1 or w.numel() != n_candidates:
            raise ValueError(f"w for {label!r} must be 1-D with {n_candidates} entries (one per candidate), "
                             f"got shape {tuple(w.shape)}")
        self._arch_w = w
        self.threshold = float(threshold)
        if not (isinstance(noise, (int, float)) and 0.0 <= noise < 0.5):
            raise ValueError(f"noise (std of the noise on w) must be a number in [0, 0.5), got {noise!r}")
        self.noise = float(noise)
        # the noise of the latest training forward (a plain tensor, so the module deep-copies), or None
        self._forward_noise: torch.Tensor | None = None

    # ---- the weights -------------------------------------------------------------------------------
    @property
    def arch_weights(self) -> nn.Parameter:
        """The architecture parameter ``w`` (one entry per candidate)."""
        return self._arch_w

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """Architecture parameters of this module (not recursive): just ``w``."""
        for name, p in self.named_parameters(recurse=False):
            if name in self._arch_parameter_names:
                yield p

    def weights_for_forward(self) -> torch.Tensor:
        """w, or in training mode with ``noise > 0`` a fresh ``clamp(w + noise * N(0, 1), 0, 1)`` (its draw kept
        for :attr:`forward_weights`)."""
        if not (self.training and self.noise > 0):
            return self._arch_w
        self._forward_noise = self.noise * torch.randn_like(self._arch_w.detach())
        return self.forward_weights  # type: ignore[return-value]

    @property
    def forward_weights(self) -> torch.Tensor | None:
        """The w~ of the latest training forward with noise, ``clamp(w + that draw, 0, 1)`` (differentiable in w);
        ``None`` when there was none since :meth:`reset_forward_weights`."""
        if self._forward_noise is None:
            return None
        return (self._arch_w + self._forward_noise).clamp(0.0, 1.0)

    def penalty_weights(self, noisy: bool = True) -> torch.Tensor:
        """The w the sparse loss sees: the latest noisy forward's w~ when ``noisy`` and there is one, else w."""
        noisy_w = self.forward_weights if noisy else None
        return noisy_w if noisy_w is not None else self._arch_w

    def reset_forward_weights(self) -> None:
        """Forget the latest draw (the strategy calls it around every training step)."""
        self._forward_noise = None

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project ``w`` back into [0, 1] (call after every optimizer step)."""
        self._arch_w.clamp_(0.0, 1.0)

    # ---- BaseSuperNetModule -------------------------------------------------------------------------
    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Nothing to sample: every candidate is computed and weighted."""
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: sorted indices t with w_t >= threshold}`` (empty when already in ``memo``)."""
        if self.label in memo:
            return {}
        kept = [t for t, v in enumerate(self._arch_w.detach().cpu().tolist()) if v >= self.threshold]
        return {self.label: kept}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: {t: w_t}}``: the weights themselves (they are not a distribution)."""
        if self.label in memo:
            return {}
        return {self.label: dict(enumerate(self._arch_w.detach().cpu().tolist()))}

    def search_space_spec(self) -> dict[str, Any]:
        """``{label: CategoricalMultiple(range(n_candidates), n_chosen=None)}``, the mutable this module searches."""
        return {self.label: self.choice}

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        """Mutation hook: replace an ``InputChoice(n_chosen=None)`` by a ``SparseMixedInput``.

        ``memo[label]`` holds the shared ``w`` of a label (created here when missing, from
        ``mutate_kwargs['generator']``, ``'init'`` and ``'init_noise'``); ``mutate_kwargs['threshold']``
        is sigma, ``mutate_kwargs['arc_noise']`` the noise std (default 0). Other modules are left to the following
        hooks (returns ``None``).
        """
        if not is_multi_input_choice(module):
            return None
        w = shared_arch_weights(module, name, memo, mutate_kwargs)
        return cls(module.n_candidates, w, module.label, module.reduction,
                   mutate_kwargs.get("threshold", DEFAULT_THRESHOLD), mutate_kwargs.get("arc_noise", 0.0))

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, candidate_inputs: list[Any]) -> Any:  # type: ignore[override]
        n = self.n_candidates
        if len(candidate_inputs) != n:
            raise ValueError(f"InputChoice {self.label!r} expects {n} candidate inputs, got {len(candidate_inputs)}")
        w = self.weights_for_forward()
        weighted = [w[t] * x for t, x in enumerate(candidate_inputs)]
        if self.reduction == "none":
            return weighted
        if self.reduction == "concat":
            return torch.cat(weighted, dim=1)
        total = weighted[0]
        for item in weighted[1:]:
            total = total + item
        if self.reduction == "mean":
            total = total / n
        return total

    def extra_repr(self) -> str:
        return (f"n_candidates={self.n_candidates}, reduction={self.reduction!r}, label={self.label!r}, "
                f"threshold={self.threshold}, noise={self.noise}")


def shared_arch_weights(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> nn.Parameter:
    """The architecture weights of ``module.label`` shared through ``memo`` (created on first use from
    ``mutate_kwargs['generator']``, ``'init'`` and ``'init_noise'``); a size mismatch between choices that share
    a label is a ``ValueError``."""
    label = module.label
    w = memo.get(label)
    if w is None:
        w = init_arch_weights(module.n_candidates, mutate_kwargs.get("init", 0.5),
                              mutate_kwargs.get("init_noise", 1e-2), mutate_kwargs.get("generator"))
        memo[label] = w
    elif not isinstance(w, nn.Parameter) or w.numel() != module.n_candidates:
        raise ValueError(f"InputChoice {label!r} ({name}) has {module.n_candidates} candidates, but the shared "
                         f"weights for this label have {getattr(w, 'numel', lambda: '?')()}: choices sharing a "
                         "label must have the same number of candidates")
    return w
