"""``SparseMask``: the one-shot NNI strategy of section 3.2, for any space with ``InputChoice(n_chosen=None)``.

Every ``InputChoice(n_chosen=None)`` becomes a :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput` with
weights ``w_l in [0, 1]^{|T_l|}``; the supernet is trained with (Eq. 3)

    L = L_task + lambda * sum_l R(w_l),     alpha_l = min(2 / |T_l|, 0.5)   (Eq. 5)

where ``R`` depends on ``loss`` (:func:`~nni_sparsemask.nas.losses.stage_regulariser`): ``'sparsemask'`` is
``L_bp + L_sp`` (Eq. 2, the paper's loss), ``'binary'`` and ``'sparse'`` its two parts alone (the ablations of
Table 1), ``'task'`` no regulariser, ``'l1'`` ``|w|_1`` (the L1 baseline of Fig. 4).

``optimization='joint'`` (the paper's protocol) does one backward of L per training batch and steps the
evaluator's weight optimizer and the w optimizer together (two parameter groups of disjoint parameters: the
same as one optimizer with a separate learning rate for w), then clamps w into [0, 1].
``optimization='bilevel'`` alternates DARTS-style: a w step on a held-out (validation) batch with
L_task + lambda R, then a weight step on a training batch with L_task.

Other mutables (``LayerChoice``, ``InputChoice(n_chosen=k)``, value choices) are handed to NNI's DARTS
supermodules (softmax logits trained by the same w optimizer, no sparse loss, argmax export) when
``other_choices='darts'``, or refused with a ``ValueError`` when ``other_choices='error'``.

Run directory (``run_dir``): the config, a checkpoint after every epoch and the final result; starting a
search again on the same directory resumes from the checkpoint (see :mod:`.searchdir` for the files and why
NNI's own strategy checkpoint does not cover this). The strategy reseeds python/numpy/torch with
``(seed, epoch)`` at the start of every epoch, so that a resumed CPU run ends exactly where an uninterrupted one
does.

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
from nni_sparsemask.nas.config import LOSSES, OPTIMIZATIONS, SparseMaskConfig
from nni_sparsemask.nas.losses import alpha_rule, regulariser
from nni_sparsemask.nas.supermodule import SparseMixedInput, init_arch_weights
from nni_sparsemask.seeding import seed_epoch

__all__ = ["SparseMask", "SparseMaskConfig", "SparseMaskLightningModule", "binarization_report",
           "LOSSES", "OPTIMIZATIONS"]

_logger = logging.getLogger(__name__)


class SparseMaskLightningModule(BaseOneShotLightningModule):
    """The search loop of :class:`SparseMask` (wraps the evaluator's Lightning module, as NNI's DARTS does).

    ``history`` holds ``{label: w}`` after every training epoch; it is saved in the checkpoints.
    """

    def __init__(self, training_module: LightningModule, config: SparseMaskConfig, run_dir: str | None = None):
        super().__init__(training_module)
        self.config = config
        self.run_dir = run_dir
        self.history: list[dict[str, list[float]]] = []
        # the first epoch this fit runs (> 0 when resuming); the RNGs are seeded for it in ``setup``
        self.start_epoch = 0

    # ---- parameters -------------------------------------------------------------------------------------
    def sparse_modules(self) -> dict[str, SparseMixedInput]:
        """One ``SparseMixedInput`` per label (modules sharing a label share w), in model order."""
        out: dict[str, SparseMixedInput] = {}
        for m in self.supernet_modules():
            # plain str keys: NNI's labels are a str subclass that torch.load(weights_only=True) refuses
            if isinstance(m, SparseMixedInput) and str(m.label) not in out:
                out[str(m.label)] = m
        return out

    def arch_parameters(self) -> list[nn.Parameter]:
        """w of every label first, then the logits of DARTS-handled choices; each once, in a fixed order."""
        params: list[nn.Parameter] = []
        seen: set[int] = set()
        modules = list(self.sparse_modules().values()) + [
            m for m in self.supernet_modules() if not isinstance(m, SparseMixedInput)]
        for m in modules:
            for p in (m.arch_parameters() if hasattr(m, "arch_parameters") else []):  # type: ignore[attr-defined]
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def current_weights(self) -> dict[str, list[float]]:
        return {label: m.arch_weights.detach().cpu().tolist() for label, m in self.sparse_modules().items()}

    @torch.no_grad()
    def clamp_weights(self) -> None:
        for m in self.sparse_modules().values():
            m.clamp_()

    # ---- the loss ---------------------------------------------------------------------------------------
    def regulariser(self) -> torch.Tensor:
        """``lambda * sum_l R(w_l)`` (:func:`~nni_sparsemask.nas.losses.regulariser`) for the configured ``loss``.

        A constant 0, outside the graph, for ``'task'`` and ``lambda_sparse == 0``.
        """
        cfg = self.config
        modules = list(self.sparse_modules().values())
        if cfg.loss == "task" or cfg.lambda_sparse == 0 or not modules:
            return torch.zeros((), device=self.device)
        stages = [(m.arch_weights, cfg.alpha if cfg.alpha is not None else alpha_rule(m.n_candidates))
                  for m in modules]
        return cfg.lambda_sparse * regulariser(stages, cfg.loss, cfg.eps)

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_architecture_optimizers(self):
        params = self.arch_parameters()
        if not params:
            raise ValueError("No architecture parameters found: the model space has no InputChoice(n_chosen=None) "
                             "that SparseMask could search.")
        cfg = self.config
        if cfg.arc_optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.arc_learning_rate, weight_decay=cfg.arc_weight_decay)
        return torch.optim.SGD(params, lr=cfg.arc_learning_rate, momentum=cfg.arc_momentum,
                               weight_decay=cfg.arc_weight_decay)

    def postprocess_weight_optimizers(self, optimizers: Any) -> Any:
        """Take w (and DARTS logits) out of the evaluator's optimizer: the two groups must be disjoint."""
        arch = {id(p) for p in self.arch_parameters()}

        def _strip(opt: Any) -> Any:
            if isinstance(opt, torch.optim.Optimizer):
                for group in opt.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in arch]
                return opt
            if isinstance(opt, (list, tuple)):
                return type(opt)(_strip(o) for o in opt)
            if isinstance(opt, dict):
                return {k: _strip(v) for k, v in opt.items()}
            return opt

        return _strip(optimizers)

    def _task_loss(self, batch: Any, batch_idx: int) -> tuple[Any, torch.Tensor]:
        out = self.training_module.training_step(batch, batch_idx)
        loss = out["loss"] if isinstance(out, dict) else out
        return out, loss

    def _arch_step_enabled(self) -> bool:
        return self.trainer.current_epoch >= self.config.warmup_epochs

    def training_step(self, batch, batch_idx):
        arc_optim = self.architecture_optimizers()
        if isinstance(arc_optim, list):
            raise TypeError(f"expected one architecture optimizer, got {len(arc_optim)}")
        cfg = self.config
        if cfg.optimization == "joint":
            out, task = self._task_loss(batch, batch_idx)
            reg = self.regulariser()
            arc_optim.zero_grad()
            # zero_grad of the weight optimizer, one backward of L, step of the weight optimizer ...
            self.advance_optimization(task + reg, batch_idx, cfg.gradient_clip_val)
            # ... and the w step on the same gradient
            if self._arch_step_enabled():
                arc_optim.step()
                self.clamp_weights()
        else:  # bilevel, DARTS first order
            trn_batch, val_batch = batch["train"], batch["val"]
            reg = torch.zeros(())
            if self._arch_step_enabled():
                arc_optim.zero_grad()
                _, val_task = self._task_loss(val_batch, 2 * batch_idx)
                reg = self.regulariser()
                self.manual_backward(val_task + reg)
                arc_optim.step()
                self.clamp_weights()
            out, task = self._task_loss(trn_batch, 2 * batch_idx + 1)
            self.advance_optimization(task, batch_idx, cfg.gradient_clip_val)
        self.advance_lr_schedulers(batch_idx)
        self.log("sparse_loss", reg.detach(), prog_bar=True)
        if batch_idx % cfg.log_every_n_steps == 0:
            self.log_probs(self.export_probs())
        return out

    def validation_step(self, batch, batch_idx):
        return self.training_module.validation_step(batch, batch_idx)

    def on_validation_epoch_start(self):
        return self.training_module.on_validation_epoch_start()

    def on_validation_epoch_end(self):
        return self.training_module.on_validation_epoch_end()

    # ---- epochs, history, checkpoints ---------------------------------------------------------------------
    def setup(self, stage: str = "fit"):
        # Lightning may create the first epoch's data iterator before ``on_train_epoch_start`` (always when
        # resuming, and when ``estimated_stepping_batches`` is used in ``configure_optimizers``): seed here.
        if stage == "fit":
            seed_epoch(self.config.seed, self.start_epoch)
        return super().setup(stage)

    def on_train_epoch_start(self):
        if self.trainer.current_epoch != self.start_epoch:  # the first epoch of this fit was seeded in setup
            seed_epoch(self.config.seed, self.trainer.current_epoch)
        frozen = not self._arch_step_enabled()
        for p in self.arch_parameters():
            p.requires_grad_(not frozen)
        return super().on_train_epoch_start()

    def on_train_epoch_end(self):
        result = super().on_train_epoch_end()
        self.history.append(self.current_weights())
        if self.run_dir is not None and not self.trainer.sanity_checking:
            searchdir.save_checkpoint(self.trainer, self.run_dir)
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        searchdir.put_state(checkpoint, self.history, dataclasses.asdict(self.config))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = searchdir.load_history(checkpoint)


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
    arc_learning_rate, arc_optimizer ('adam' | 'sgd'), arc_momentum, arc_weight_decay: the w optimizer.
    alpha: a fixed target mean of w for every stage; ``None`` (default) uses ``min(2 / |T_l|, 0.5)``.
    init, init_noise: w starts at ``init + init_noise * N(0, 1)`` (seeded by ``seed``), clamped to [0, 1].
    eps: clamp of the logarithms' argument in the losses.
    seed: seeds the w initialisation and, with the epoch, the RNGs at the start of every epoch.
    warmup_epochs: epochs that train only the network weights (w frozen).
    gradient_clip_val: optional gradient clipping of the network weights.
    other_choices: ``'darts'`` hands other mutables to NNI's DARTS supermodules; ``'error'`` refuses them.
    undecided_warn_fraction: warn at the end when more than this fraction of w is still in (threshold, 0.999).
    log_every_n_steps: how often w is logged (``prob/<label>/<t>``).
    run_dir: where checkpoints and results go (``None``: nothing written, no resume).
    mutation_hooks: extra NNI mutation hooks, run before SparseMask's own.
    """

    def __init__(self, lambda_sparse: float = _D.lambda_sparse, threshold: float = _D.threshold,
                 loss: str = _D.loss, optimization: str = _D.optimization, *,
                 arc_learning_rate: float = _D.arc_learning_rate, arc_optimizer: str = _D.arc_optimizer,
                 arc_momentum: float = _D.arc_momentum, arc_weight_decay: float = _D.arc_weight_decay,
                 alpha: float | None = _D.alpha, init: float = _D.init, init_noise: float = _D.init_noise,
                 eps: float = _D.eps, seed: int = _D.seed, warmup_epochs: int = _D.warmup_epochs,
                 gradient_clip_val: float | None = _D.gradient_clip_val, other_choices: str = _D.other_choices,
                 undecided_warn_fraction: float = _D.undecided_warn_fraction,
                 log_every_n_steps: int = _D.log_every_n_steps,
                 run_dir: str | os.PathLike | None = None, mutation_hooks: list | None = None, **kwargs: Any):
        self.config = SparseMaskConfig(
            lambda_sparse=lambda_sparse, threshold=threshold, loss=loss, optimization=optimization,
            arc_learning_rate=arc_learning_rate, arc_optimizer=arc_optimizer, arc_momentum=arc_momentum,
            arc_weight_decay=arc_weight_decay, alpha=alpha, init=init, init_noise=init_noise, eps=eps, seed=seed,
            warmup_epochs=warmup_epochs, gradient_clip_val=gradient_clip_val, other_choices=other_choices,
            undecided_warn_fraction=undecided_warn_fraction, log_every_n_steps=log_every_n_steps)
        self.config.validate()
        super().__init__(mutation_hooks=mutation_hooks, **kwargs)
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self._arch_memo: dict[str, Any] = {}
        self._resume_from: Path | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"lambda_sparse={c.lambda_sparse}, threshold={c.threshold}, loss={c.loss!r}, "
                f"optimization={c.optimization!r}")

    # ---- supernet ---------------------------------------------------------------------------------------
    def configure_oneshot_module(self, training_module: LightningModule) -> BaseOneShotLightningModule:
        return SparseMaskLightningModule(training_module, self.config,
                                         str(self.run_dir) if self.run_dir is not None else None)

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
                  "init_noise": self.config.init_noise, "softmax": nn.Softmax(-1),
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
        self._resume_from = searchdir.prepare(self.run_dir, dataclasses.asdict(self.config), model)
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
            start_epoch = searchdir.resume_epoch(self._resume_from)
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

