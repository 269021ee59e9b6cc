"""``SparseMaskConfig``: the typed settings of the :class:`~nni_sparsemask.nas.strategy.SparseMask` search.

The strategy validates them once when it is built, saves them (``dataclasses.asdict``) to its run directory
(:mod:`.searchdir`) so that a resume with other settings is refused, and stores them in its checkpoints and
result file. The allowed names of the string settings are the constants below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nni_sparsemask.nas.losses import DEFAULT_EPS, LOSSES

__all__ = ["SparseMaskConfig", "LOSSES", "OPTIMIZATIONS", "ARC_OPTIMIZERS", "OTHER_CHOICES"]

#: ``optimization``: one backward of L for weights and w together (the paper), or DARTS-style alternation
OPTIMIZATIONS = ("joint", "bilevel")
#: ``arc_optimizer``: the optimizer of w
ARC_OPTIMIZERS = ("adam", "sgd")
#: ``other_choices``: what happens to mutables other than ``InputChoice(n_chosen=None)``
OTHER_CHOICES = ("darts", "error")
# ``loss`` takes one of ``LOSSES`` (defined with the losses in :mod:`.losses`, re-exported here)


@dataclass
class SparseMaskConfig:
    """Hyper-parameters of :class:`~nni_sparsemask.nas.strategy.SparseMask` (see its docstring for each)."""

    lambda_sparse: float = 0.01
    threshold: float = 1e-3
    loss: str = "sparsemask"
    optimization: str = "joint"
    arc_learning_rate: float = 3e-3
    arc_optimizer: str = "adam"
    arc_momentum: float = 0.9
    arc_weight_decay: float = 0.0
    alpha: float | None = None
    init: float = 0.5
    init_noise: float = 1e-2
    eps: float = DEFAULT_EPS
    seed: int = 0
    warmup_epochs: int = 0
    gradient_clip_val: float | None = None
    other_choices: str = "darts"
    undecided_warn_fraction: float = 0.25
    log_every_n_steps: int = 10

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting found out of range."""
        def _num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            return float(v)

        if _num("lambda_sparse") < 0:
            raise ValueError(f"lambda_sparse must be >= 0 (0 turns the sparse loss off), got {self.lambda_sparse!r}")
        if not 0.0 < _num("threshold") < 1.0:
            raise ValueError(f"threshold (sigma) must be in (0, 1), e.g. 1e-3 as in the paper; got {self.threshold!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; allowed: {', '.join(LOSSES)}")
        if self.optimization not in OPTIMIZATIONS:
            raise ValueError(f"unknown optimization {self.optimization!r}; allowed: {', '.join(OPTIMIZATIONS)}")
        if self.arc_optimizer not in ARC_OPTIMIZERS:
            raise ValueError(f"unknown arc_optimizer {self.arc_optimizer!r}; allowed: {', '.join(ARC_OPTIMIZERS)}")
        if self.other_choices not in OTHER_CHOICES:
            raise ValueError(f"unknown other_choices {self.other_choices!r}; allowed: {', '.join(OTHER_CHOICES)}")
        if _num("arc_learning_rate") <= 0:
            raise ValueError(f"arc_learning_rate must be > 0, got {self.arc_learning_rate!r}")
        if _num("arc_weight_decay") < 0 or not 0.0 <= _num("arc_momentum") < 1.0:
            raise ValueError("arc_weight_decay must be >= 0 and arc_momentum in [0, 1), got "
                             f"{self.arc_weight_decay!r} and {self.arc_momentum!r}")
        if self.alpha is not None and not 0.0 < _num("alpha") < 1.0:
            raise ValueError(f"alpha must be None (the rule min(2/|T_l|, 0.5)) or in (0, 1), got {self.alpha!r}")
        if not 0.0 <= _num("init") <= 1.0 or _num("init_noise") < 0:
            raise ValueError(f"init must be in [0, 1] and init_noise >= 0, got {self.init!r}, {self.init_noise!r}")
        if not 0.0 < _num("eps") < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if self.gradient_clip_val is not None and _num("gradient_clip_val") <= 0:
            raise ValueError(f"gradient_clip_val must be None or > 0, got {self.gradient_clip_val!r}")
        if not 0.0 <= _num("undecided_warn_fraction") <= 1.0:
            raise ValueError(f"undecided_warn_fraction must be in [0, 1], got {self.undecided_warn_fraction!r}")
        if not isinstance(self.log_every_n_steps, int) or self.log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be an integer >= 1, got {self.log_every_n_steps!r}")
