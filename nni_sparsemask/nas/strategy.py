"""``SparseMask``: the one-shot NNI strategy of section 3.2, for any space with ``InputChoice(n_chosen=None)``.

Every ``InputChoice(n_chosen=None)`` becomes a :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput` with
weights ``w_l in [0, 1]^{|T_l|}``; the supernet is trained with (Eq. 3)

    L = L_task + lambda * sum_l R(w_l),     alpha_l = min(2 / |T_l|, 0.5)   (Eq. 5)

where ``R`` depends on ``loss`` (:func:`~nni_sparsemask.nas.losses.stage_regulariser`): ``'sparsemask'`` is
``L_bp + L_sp`` (Eq. 2, the paper's loss), ``'binary'`` and ``'sparse'`` its two parts alone (the ablations of
Table 1), ``'task'`` no regulariser, ``'l1'`` ``|w|_1`` (the L1 baseline of Fig. 4).

``optimization='joint'`` (the paper's protocol) does one backward of L per training batch and steps the network
weights and w together, then clamps w into [0, 1]. With ``arc_optimizer='shared'`` (the default: the official
recipe) w is a parameter group of the evaluator's own optimizer (:mod:`.recipe`); with ``'adam'`` or ``'sgd'``
it has an optimizer of its own, stepped right after the evaluator's on the same gradient.
``optimization='bilevel'`` alternates DARTS-style: a w step on a held-out (validation) batch with
L_task + lambda R, then a weight step on a training batch with L_task (it needs ``'adam'`` or ``'sgd'``).

The rest of the official recipe (see :mod:`.config` for the defaults and why): noise on w in every training
forward (``arc_noise``, in :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput`), and as switches, off by
default, the sparse loss on that same noisy w (``noisy_penalty``) and nearly frozen BatchNorm in the searched
model (``freeze_bn``, ``bn_momentum``).

Other mutables (``LayerChoice``, ``InputChoice(n_chosen=k)``, value choices) are handed to NNI's DARTS
supermodules (softmax logits trained by the same w optimizer, no sparse loss, argmax export) when
``other_choices='darts'``, or refused with a ``ValueError`` when ``other_choices='error'``.

Run directory (``run_dir``): the config, a checkpoint after every epoch and the final result; starting a
search again on the same directory resumes from the checkpoint (see :mod:`.searchdir` for the files and why
NNI's own strategy checkpoint does not cover this). The strategy reseeds python/numpy/torch with
``(seed, epoch)`` at the start of every epoch, so that a resumed CPU run ends exactly where an uninterrupted one
does.

Several processes (the evaluator's Trainer with ``devices=N`` and a DDP strategy that starts its processes inside
``fit``, fork or spawn, e.g. :mod:`nni_sparsemask.run.distributed`): DDP averages the gradient of w with the
others, so w stays the same on every rank; only rank 0 writes the checkpoint; rank 0 hands the w history back to
the calling process, which writes the result. A checkpoint resumes on as many processes as wrote it.

The settings and their validation are in :mod:`.config`, the binarisation report in :mod:`.binarization` (both
re-exported here), the losses in :mod:`.losses`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.evaluator.pytorch.lightning import Lightning, LightningModule
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from torch import nn

from nni_sparsemask.nas import searchdir
from nni_sparsemask.nas.binarization import binarization_report, undecided_warning
from nni_sparsemask.nas.config import LEGACY_VALUES, OPTIMIZATIONS, SparseMaskConfig
from nni_sparsemask.nas.loop import SparseMaskLightningModule
from nni_sparsemask.nas.losses import LOSSES
from nni_sparsemask.nas.supermodule import SparseMixedInput, init_arch_weights

__all__ = ["SparseMask", "SparseMaskConfig", "SparseMaskLightningModule", "binarization_report",
           "LOSSES", "OPTIMIZATIONS"]

_logger = logging.getLogger(__name__)


_D = SparseMaskConfig()  # the defaults of SparseMask(...) are the config's (one place)


class SparseMask(OneShotStrategy):
    """SparseMask (Wu et al., 2019): multi-input connectivity search with the sparse loss of Eq. 2.

    Use as any NNI one-shot strategy: ``NasExperiment(space, lightning_evaluator, SparseMask()).run()``.

    Parameters
    ----------
    lambda_sparse: lambda of Eq. 3 (>= 0; 0.01 in the paper).
    threshold: sigma of section 3.3; a candidate is kept when ``w >= threshold`` (in (0, 1); 1e-3 in the paper).
    loss: ``'sparsemask'`` | ``'binary'`` | ``'sparse'`` | ``'task'`` | ``'l1'`` (see the module docstring).
    optimization: ``'joint'`` (paper) or ``'bilevel'`` (DARTS-style, w on validation batches).
    arc_optimizer: ``'shared'`` (default, the official recipe): w is a parameter group of the evaluator's optimizer,
        with its momentum and schedule (see :mod:`.recipe`); ``'adam'`` / ``'sgd'``: an optimizer of w's own.
    arc_learning_rate: w's learning rate. ``None`` (default, ``'shared'`` only): the evaluator's group named
        ``'decoder'``, or ``arc_lr_mult`` (default 10, the paper's decoder / backbone ratio) times its first group.
    arc_momentum: momentum of ``'sgd'`` (``'shared'`` takes the evaluator's). arc_weight_decay: on w (4e-5).
    arc_noise: std of the noise on w in every training forward (0.05 on the [0, 1] scale; 0 turns it off).
    noisy_penalty: compute the sparse loss on the noisy w of the forward, as the official code does, instead of
        on w (default False: measured less decisive, see :mod:`.config`).
    freeze_bn, bn_momentum: BatchNorm of the searched model with running-statistics momentum ``bn_momentum``
        (3e-4) and affine parameters not trained during the search (restored afterwards); default False.
    alpha: a fixed target mean of w for every stage; ``None`` (default) uses ``min(2 / |T_l|, 0.5)``.
    init, init_noise: w starts at ``init + init_noise * N(0, 1)`` (seeded by ``seed``), clamped to [0, 1].
    eps: clamp of the logarithms' argument in the losses.
    seed: seeds the w initialisation and, with the epoch, the RNGs at the start of every epoch.
    warmup_epochs: epochs that train only the network weights (w frozen).
    gradient_clip_val: optional gradient clipping of the network weights.
    other_choices: ``'darts'`` hands other mutables to NNI's DARTS supermodules; ``'error'`` refuses them.
    cost_fn, cost_budget, cost_weight: a cost-aware search. ``cost_fn({label: w}) -> 0-d tensor`` is the expected
        cost of the architecture under w (differentiable; e.g. ``functools.partial(fdn.costmodel.expected_cost,
        table=...)`` for an FDN space); the loss gains ``cost_weight * max(0, cost_fn(w) / cost_budget - 1)``
        (:func:`~nni_sparsemask.nas.losses.budget_penalty`). All three or none (default: the paper's loss only).
    undecided_warn_fraction: warn at the end when more than this fraction of w is still in (threshold, 0.999).
    log_every_n_steps: how often w is logged (``prob/<label>/<t>``).
    run_dir: where checkpoints and results go (``None``: nothing written, no resume).
    mutation_hooks: extra NNI mutation hooks, run before SparseMask's own.
    """

    def __init__(self, lambda_sparse: float = _D.lambda_sparse, threshold: float = _D.threshold,
                 loss: str = _D.loss, optimization: str = _D.optimization, *,
                 arc_learning_rate: float | None = _D.arc_learning_rate, arc_optimizer: str = _D.arc_optimizer,
                 arc_lr_mult: float = _D.arc_lr_mult, arc_momentum: float = _D.arc_momentum,
                 arc_weight_decay: float = _D.arc_weight_decay, arc_noise: float = _D.arc_noise,
                 noisy_penalty: bool = _D.noisy_penalty, freeze_bn: bool = _D.freeze_bn,
                 bn_momentum: float = _D.bn_momentum, alpha: float | None = _D.alpha, init: float = _D.init, init_noise: float = _D.init_noise,
                 eps: float = _D.eps, seed: int = _D.seed, warmup_epochs: int = _D.warmup_epochs,
                 gradient_clip_val: float | None = _D.gradient_clip_val, other_choices: str = _D.other_choices,
                 cost_fn: Any = None, cost_budget: float | None = _D.cost_budget, cost_weight: float = _D.cost_weight,
                 undecided_warn_fraction: float = _D.undecided_warn_fraction,
                 log_every_n_steps: int = _D.log_every_n_steps,
                 run_dir: str | os.PathLike | None = None, mutation_hooks: list | None = None, **kwargs: Any):
        self.config = SparseMaskConfig(
            lambda_sparse=lambda_sparse, threshold=threshold, loss=loss, optimization=optimization,
            arc_learning_rate=arc_learning_rate, arc_optimizer=arc_optimizer, arc_lr_mult=arc_lr_mult,
            arc_momentum=arc_momentum, arc_weight_decay=arc_weight_decay, arc_noise=arc_noise,
            noisy_penalty=noisy_penalty, freeze_bn=freeze_bn, bn_momentum=bn_momentum, alpha=alpha, init=init, init_noise=init_noise, eps=eps, seed=seed,
            warmup_epochs=warmup_epochs, gradient_clip_val=gradient_clip_val, other_choices=other_choices,
            cost_budget=cost_budget, cost_weight=cost_weight,
            undecided_warn_fraction=undecided_warn_fraction, log_every_n_steps=log_every_n_steps)
        self.config.validate()
        if (cost_fn is None) != (cost_budget is None):
            raise ValueError("a cost-aware search needs both cost_fn (the expected cost of w) and cost_budget; "
                             f"got {'cost_fn' if cost_fn is not None else 'cost_budget'} only")
        if cost_fn is not None and not callable(cost_fn):
            raise ValueError(f"cost_fn must be callable ({{label: w}} -> 0-d tensor), got {type(cost_fn).__name__}")
        self.cost_fn = cost_fn
        super().__init__(mutation_hooks=mutation_hooks, **kwargs)
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self._arch_memo: dict[str, Any] = {}
        self._resume_from: Path | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"lambda_sparse={c.lambda_sparse}, threshold={c.threshold}, loss={c.loss!r}, "
                f"optimization={c.optimization!r}, arc_optimizer={c.arc_optimizer!r}, arc_noise={c.arc_noise}")

    # ---- supernet ---------------------------------------------------------------------------------------
    def configure_oneshot_module(self, training_module: LightningModule) -> BaseOneShotLightningModule:
        return SparseMaskLightningModule(training_module, self.config,
                                         str(self.run_dir) if self.run_dir is not None else None, self.cost_fn)

    def default_mutation_hooks(self) -> list:
        hooks: list = [SparseMixedInput.mutate]
        if self.config.other_choices == "darts":
            from nni.nas.oneshot.pytorch.supermodule.differentiable import (
                DifferentiableMixedCell, DifferentiableMixedInput, DifferentiableMixedLayer, DifferentiableMixedRepeat)
            from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS
            hooks += [DifferentiableMixedLayer.mutate, DifferentiableMixedInput.mutate,
                      DifferentiableMixedCell.mutate, DifferentiableMixedRepeat.mutate]
            hooks += [op.mutate for op in NATIVE_MIXED_OPERATIONS]
        hooks.append(no_default_hook)
        return hooks

    def mutate_model(self, model):
        if not isinstance(model, ModelSpace):
            raise TypeError(f"SparseMask needs an NNI ModelSpace, got {type(model).__name__}")
        generator = torch.Generator().manual_seed(self.config.seed)
        memo: dict[str, Any] = {}
        multi, others = [], []
        for label, mutable in model.simplify().items():
            if isinstance(mutable, CategoricalMultiple) and mutable.n_chosen is None:
                multi.append(label)
            else:
                others.append((label, mutable))
        if not multi:
            raise ValueError(f"{type(model).__name__} has no InputChoice(n_chosen=None): SparseMask searches "
                             "multi-input choices only; declare the connections as InputChoice(n_candidates, "
                             "n_chosen=None) or use another strategy (e.g. nni.nas.strategy.DARTS).")
        if others and self.config.other_choices == "error":
            raise ValueError("SparseMask(other_choices='error') refuses mutables other than InputChoice(n_chosen=None); "
                             f"found {', '.join(f'{l!r} ({type(m).__name__})' for l, m in others)}. Use "
                             "other_choices='darts' to search them with NNI's DARTS supermodules.")
        for label, mutable in others:
            if not isinstance(mutable, (Categorical, CategoricalMultiple)):
                raise ValueError(f"SparseMask supports categorical choices only, but {label!r} is "
                                 f"{type(mutable).__name__}")
            memo[label] = nn.Parameter(torch.randn(len(mutable.values), generator=generator) * 1e-3)
        space = model.simplify()
        for label in multi:
            memo[label] = init_arch_weights(len(space[label].values), self.config.init, self.config.init_noise,
                                            generator)
        self._arch_memo = memo
        return super().mutate_model(model)

    def run_hook(self, hook, name: str, module: nn.Module, memo: dict[str, Any]):
        if not memo.get("_sparsemask_seeded"):
            memo.update(self._arch_memo)
            memo["_sparsemask_seeded"] = True
        from nni.nas.oneshot.pytorch.supermodule.differentiable import MixedOpDifferentiablePolicy
        kwargs = {"threshold": self.config.threshold, "init": self.config.init,
                  "init_noise": self.config.init_noise, "arc_noise": self.config.arc_noise, "softmax": nn.Softmax(-1),
                  "mixed_op_sampling": MixedOpDifferentiablePolicy}
        return hook(module, name, memo, kwargs)

    # ---- data -------------------------------------------------------------------------------------------
    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        if self.config.optimization == "bilevel":
            return {"train": train_dataloader_fn(), "val": val_dataloader_fn()}
        return train_dataloader_fn()

    def val_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        if self.config.optimization == "bilevel":
            return None  # the validation data trains w
        return val_dataloader_fn()

    # ---- run directory ------------------------------------------------------------------------------------
    def _prepare_run_dir(self, model: ModelSpace) -> None:
        self._resume_from = None
        if self.run_dir is None:
            return
        self._resume_from = searchdir.prepare(self.run_dir, dataclasses.asdict(self.config), model, LEGACY_VALUES)
        if self._resume_from is not None:
            _logger.info("SparseMask resumes from %s", self._resume_from)

    def _initialize(self, model_space, engine):
        if isinstance(getattr(model_space, "model_space", None), ModelSpace):
            self._prepare_run_dir(model_space.model_space)
        return super()._initialize(model_space, engine)

    def mutate_evaluator(self, evaluator: Lightning) -> Lightning:
        mutated = super().mutate_evaluator(evaluator)
        if self._resume_from is not None:
            if mutated.fit_kwargs.get("ckpt_path"):
                raise ValueError("the evaluator already sets fit_kwargs['ckpt_path'] and run_dir "
                                 f"{self.run_dir} holds a checkpoint: give one of them, not both")
            mutated.fit_kwargs = {**mutated.fit_kwargs, "ckpt_path": str(self._resume_from)}
            start_epoch = searchdir.resume_epoch(self._resume_from, mutated.trainer.world_size)
            module = mutated.module
            if isinstance(module, SparseMaskLightningModule):
                module.start_epoch = start_epoch
        return mutated

    def _run(self) -> None:
        super()._run()
        self._finish()

    def _finish(self) -> None:
        weights = self.weights()
        report = binarization_report(weights, self.config.threshold)
        message = undecided_warning(report, self.config.threshold, self.config.undecided_warn_fraction)
        if message is not None:
            warnings.warn(message, UserWarning)
        _logger.info("SparseMask binarisation: %s", report["overall"])
        if self.run_dir is not None:
            result = {"config": dataclasses.asdict(self.config), "weights": weights,
                      "export": self.oneshot_module.export(), "history": self.history(),
                      "binarization": report}
            searchdir.write_result(self.run_dir, result)

    # ---- results ----------------------------------------------------------------------------------------
    def _module(self) -> SparseMaskLightningModule:
        return self.oneshot_module  # type: ignore[return-value]

    def weights(self) -> dict[str, list[float]]:
        """The current w, ``{label: [w_0, ..., w_{n-1}]}``."""
        return self._module().current_weights()

    def history(self) -> list[dict[str, list[float]]]:
        """w after every training epoch (entry e is after epoch e), for the Fig. 5 heatmaps."""
        return [dict(h) for h in self._module().history]

    def expected_cost(self) -> float | None:
        """``cost_fn`` at the current w (None without a cost term)."""
        return self._module().expected_cost()

    def binarization(self) -> dict[str, Any]:
        """:func:`binarization_report` of the current w at ``threshold``."""
        return binarization_report(self.weights(), self.config.threshold)

    def export(self) -> dict[str, Any]:
        """``{label: sorted kept candidate indices}`` (plus argmax choices of DARTS-handled mutables)."""
        return self._module().export()

    def connectivity(self):
        """The FDN connectivity: ``space.connectivity_from_weights(weights, threshold, history)``.

        Only for model spaces that define ``connectivity_from_weights`` (``FDNSpace``); others raise.
        """
        space = self.supernet
        fn = getattr(space, "connectivity_from_weights", None)
        if fn is None:
            raise ValueError(f"{type(space).__name__} has no connectivity_from_weights(weights, threshold, history): "
                            "connectivity() is for FDN spaces; use strategy.weights() or strategy.export() instead.")
        return fn(self.weights(), self.config.threshold, self.history())

