"""``SparseMaskConfig``: the typed settings of the :class:`~nni_sparsemask.nas.strategy.SparseMask` search.

The strategy validates them once when it is built, saves them (``dataclasses.asdict``) to its run directory
(:mod:`.searchdir`) so that a resume with other settings is refused, and stores them in its checkpoints and
result file. The allowed names of the string settings are the constants below.

The defaults follow the search recipe of the official SparseMask code (the paper does not state it), on this
package's [0, 1] scale of w (the official code keeps w in [0, 2] and divides by 2 in the loss):

* w starts at 0.5; every *training* forward uses ``clamp(w + N(0, arc_noise^2), 0, 1)`` with ``arc_noise=0.05``
  (noise injection); evaluation forwards use w itself;
* one optimizer trains everything (``arc_optimizer='shared'``): w is one more parameter group of the evaluator's
  own optimizer, at the decoder group's learning rate (10x the backbone's), with that optimizer's momentum and
  learning-rate schedule, and weight decay ``arc_weight_decay=4e-5``; w is clamped into [0, 1] after every step;
* lambda 0.01, alpha_l = min(2 / |T_l|, 0.5), prune at sigma = 1e-3.

Two parts of the official recipe are switches, off by default because the ablation of
``benchmarks/search_recipe.py`` (``benchmarks/RESULTS.md``: a toy space, 3 evaluators x 8 seeds) measured them
not helping: ``noisy_penalty=True`` computes the sparse loss on the forward's noisy w, as the official code does
(with it 8 of 24 searches kept a noise input at a small w above sigma, without it none), and ``freeze_bn=True``
nearly freezes the BatchNorm layers of the searched model (running statistics at momentum ``bn_momentum=3e-4``,
affine parameters not trained: 24 of 24 right either way, and stale running statistics in evaluation).

Settings added after the first release are missing from old run directories; :data:`LEGACY_VALUES` gives the
value that reproduces what those searches did, and :meth:`SparseMaskConfig.from_dict` reads such a record.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nni_sparsemask.nas.losses import DEFAULT_EPS, LOSSES

__all__ = ["SparseMaskConfig", "LOSSES", "OPTIMIZATIONS", "ARC_OPTIMIZERS", "OTHER_CHOICES", "LEGACY_VALUES"]

#: ``optimization``: one backward of L for weights and w together (the paper), or DARTS-style alternation
OPTIMIZATIONS = ("joint", "bilevel")
#: ``arc_optimizer``: ``'shared'`` puts w into the evaluator's optimizer (the official recipe); ``'adam'`` and
#: ``'sgd'`` give w an optimizer of its own
ARC_OPTIMIZERS = ("shared", "adam", "sgd")
#: ``other_choices``: what happens to mutables other than ``InputChoice(n_chosen=None)``
OTHER_CHOICES = ("darts", "error")
# ``loss`` takes one of ``LOSSES`` (defined with the losses in :mod:`.losses`, re-exported here)

#: the value of each setting that did not exist in the first release, as those searches behaved (no noise,
#: BN trained as the evaluator says); a record without the setting is read with this value
LEGACY_VALUES: dict[str, Any] = {"arc_noise": 0.0, "noisy_penalty": False, "freeze_bn": False, "bn_momentum": 3e-4,
                                 "arc_lr_mult": 10.0, "cost_budget": None, "cost_weight": 1.0}


@dataclass
class SparseMaskConfig:
    """Hyper-parameters of :class:`~nni_sparsemask.nas.strategy.SparseMask` (see its docstring for each)."""

    lambda_sparse: float = 0.01
    threshold: float = 1e-3
    loss: str = "sparsemask"
    optimization: str = "joint"
    arc_learning_rate: float | None = None
    arc_optimizer: str = "shared"
    arc_lr_mult: float = 10.0
    arc_momentum: float = 0.9
    arc_weight_decay: float = 4e-5
    arc_noise: float = 0.05
    noisy_penalty: bool = False
    freeze_bn: bool = False
    bn_momentum: float = 3e-4
    alpha: float | None = None
    init: float = 0.5
    init_noise: float = 1e-2
    eps: float = DEFAULT_EPS
    seed: int = 0
    warmup_epochs: int = 0
    gradient_clip_val: float | None = None
    other_choices: str = "darts"
    cost_budget: float | None = None
    cost_weight: float = 1.0
    undecided_warn_fraction: float = 0.25
    log_every_n_steps: int = 10

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "SparseMaskConfig":
        """The config saved as ``record`` (``dataclasses.asdict``), also by an older release: a setting it lacks
        takes its :data:`LEGACY_VALUES` value (what that search did). Unknown keys are a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings {', '.join(unknown)}")
        values = {k: v for k, v in LEGACY_VALUES.items() if k in names}
        values.update(record)
        return cls(**values)

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
        self._validate_arc_optimizer(_num)
        if not 0.0 <= _num("arc_noise") < 0.5:
            raise ValueError(f"arc_noise (std of the noise on w in training forwards) must be in [0, 0.5), e.g. 0.05 "
                             f"(the official recipe) or 0 (off); got {self.arc_noise!r}")
        for flag in ("noisy_penalty", "freeze_bn"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if not 0.0 <= _num("bn_momentum") <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1] (0 freezes the running statistics), got {self.bn_momentum!r}")
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
        if self.cost_budget is not None and not _num("cost_budget") > 0:
            raise ValueError(f"cost_budget must be None (no cost term) or > 0, got {self.cost_budget!r}")
        if _num("cost_weight") < 0:
            raise ValueError(f"cost_weight (mu of the cost term) must be >= 0, got {self.cost_weight!r}")
        if not 0.0 <= _num("undecided_warn_fraction") <= 1.0:
            raise ValueError(f"undecided_warn_fraction must be in [0, 1], got {self.undecided_warn_fraction!r}")
        if not isinstance(self.log_every_n_steps, int) or self.log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be an integer >= 1, got {self.log_every_n_steps!r}")

    def _validate_arc_optimizer(self, _num) -> None:
        if self.arc_learning_rate is None:
            if self.arc_optimizer != "shared":
                raise ValueError(f"arc_optimizer={self.arc_optimizer!r} needs arc_learning_rate (e.g. 0.02); only "
                                 "'shared' takes it from the evaluator's optimizer")
        elif _num("arc_learning_rate") <= 0:
            raise ValueError(f"arc_learning_rate must be None or > 0, got {self.arc_learning_rate!r}")
        if _num("arc_lr_mult") <= 0:
            raise ValueError(f"arc_lr_mult must be > 0, got {self.arc_lr_mult!r}")
        if _num("arc_weight_decay") < 0 or not 0.0 <= _num("arc_momentum") < 1.0:
            raise ValueError("arc_weight_decay must be >= 0 and arc_momentum in [0, 1), got "
                             f"{self.arc_weight_decay!r} and {self.arc_momentum!r}")
        if self.arc_optimizer == "shared" and self.optimization == "bilevel":
            raise ValueError("optimization='bilevel' steps w on validation batches and the network on training "
                             "batches, so w needs an optimizer of its own: arc_optimizer='adam' or 'sgd' (with "
                             "arc_learning_rate), not 'shared'")
