"""``SparseMask``: the one-shot NNI strategy of section 3.2, for any space with ``InputChoice(n_chosen=None)``.

Every ``InputChoice(n_chosen=None)`` becomes a :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput` with
weights ``w_l in [0, 1]^{|T_l|}``; the supernet is trained with (Eq. 3)

    L = L_task + lambda * sum_l R(w_l),     alpha_l = min(2 / |T_l|, 0.5)   (Eq. 5)

where ``R`` depends on ``loss``:

    'sparsemask'  R = L_bp(w) + L_sp(w, alpha)    (Eq. 2, the paper's loss)
    'binary'      R = L_bp(w)                     (the "L_task + L_bp" ablation of Table 1)
    'sparse'      R = L_sp(w, alpha)              (the "L_task + L_sp" ablation)
    'task'        R = 0                           (FDN trained with L_task only)
    'l1'          R = |w|_1                       (the L1 baseline of Fig. 4)

``optimization='joint'`` (the paper's protocol) does one backward of L per training batch and steps the
evaluator's weight optimizer and the w optimizer together (two parameter groups of disjoint parameters: the
same as one optimizer with a separate learning rate for w), then clamps w into [0, 1].
``optimization='bilevel'`` alternates DARTS-style: a w step on a held-out (validation) batch with
L_task + lambda R, then a weight step on a training batch with L_task.

Other mutables (``LayerChoice``, ``InputChoice(n_chosen=k)``, value choices) are handed to NNI's DARTS
supermodules (softmax logits trained by the same w optimizer, no sparse loss, argmax export) when
``other_choices='darts'``, or refused with a ``ValueError`` when ``other_choices='error'``.

Run directory (``run_dir``): ``sparsemask_strategy.json`` (config + search-space fingerprint),
``checkpoints/search-last.ckpt`` (Lightning checkpoint written after every epoch: network weights, w,
optimizer/scheduler states, loop state, w history) and, when the search ends, ``search_result.json``
(final w, exported choices, history, binarisation report). Starting a search again on the same directory
resumes from the checkpoint; the strategy reseeds python/numpy/torch with ``(seed, epoch)`` at the start of
every epoch, so that a resumed CPU run ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.evaluator.pytorch.lightning import Lightning, LightningModule
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from torch import nn

from nni_sparsemask.nas.losses import DEFAULT_EPS, alpha_rule, binary_loss, l1_loss, sparsity_loss
from nni_sparsemask.nas.supermodule import SparseMixedInput, init_arch_weights
from nni_sparsemask.seeding import seed_epoch

__all__ = ["SparseMask", "SparseMaskConfig", "SparseMaskLightningModule", "binarization_report",
           "LOSSES", "OPTIMIZATIONS"]

_logger = logging.getLogger(__name__)

LOSSES = ("sparsemask", "binary", "sparse", "task", "l1")
OPTIMIZATIONS = ("joint", "bilevel")
ARC_OPTIMIZERS = ("adam", "sgd")
OTHER_CHOICES = ("darts", "error")

CONFIG_FILE = "sparsemask_strategy.json"
CHECKPOINT_FILE = os.path.join("checkpoints", "search-last.ckpt")
RESULT_FILE = "search_result.json"
UNDECIDED_HIGH = 0.999  # w in (threshold, UNDECIDED_HIGH) has not binarised yet


@dataclass
class SparseMaskConfig:
    """Hyper-parameters of :class:`SparseMask` (saved to the run directory; see the class docstring)."""

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


def binarization_report(weights: dict[str, list[float]], threshold: float) -> dict[str, Any]:
    """How binary w is: per label and overall.

    For each label: ``kept`` (w >= threshold), ``n_exact_zero`` (w == 0, produced by the [0, 1] clamp),
    ``n_dropped_nonzero`` (0 < w < threshold), ``min_kept``, ``max_dropped_nonzero``,
    ``gap = min_kept / max_dropped_nonzero`` (the paper's "200x"; ``inf`` when every dropped w is exactly 0,
    ``None`` when nothing is kept or dropped), and ``undecided_fraction``, the fraction of w in
    ``(threshold, 0.999)``, i.e. not binarised yet. ``overall`` pools all labels.
    """
    def _one(values: list[float]) -> dict[str, Any]:
        kept = [v for v in values if v >= threshold]
        dropped_nz = [v for v in values if 0.0 < v < threshold]
        zeros = sum(1 for v in values if v == 0.0)
        undecided = sum(1 for v in values if threshold < v < UNDECIDED_HIGH)
        min_kept = min(kept) if kept else None
        max_dropped = max(dropped_nz) if dropped_nz else None
        if min_kept is None or (max_dropped is None and zeros == 0):
            gap = None
        elif max_dropped is None:
            gap = math.inf
        else:
            gap = min_kept / max_dropped
        return {
            "n": len(values), "n_kept": len(kept), "n_exact_zero": zeros, "n_dropped_nonzero": len(dropped_nz),
            "min_kept": min_kept, "max_dropped_nonzero": max_dropped, "gap": gap,
            "undecided_fraction": undecided / len(values) if values else 0.0,
        }

    report: dict[str, Any] = {label: _one(list(v)) for label, v in weights.items()}
    report["overall"] = _one([x for v in weights.values() for x in v])
    return report


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
        """``lambda * sum_l R(w_l)`` for the configured ``loss`` (0 for ``'task'``)."""
        cfg = self.config
        terms = []
        for m in self.sparse_modules().values():
            w = m.arch_weights
            alpha = cfg.alpha if cfg.alpha is not None else alpha_rule(m.n_candidates)
            if cfg.loss in ("sparsemask", "binary"):
                terms.append(binary_loss(w, cfg.eps))
            if cfg.loss in ("sparsemask", "sparse"):
                terms.append(sparsity_loss(w, alpha, cfg.eps))
            if cfg.loss == "l1":
                terms.append(l1_loss(w))
        if not terms or cfg.lambda_sparse == 0:
            return torch.zeros((), device=self.device)
        return cfg.lambda_sparse * torch.stack(terms).sum()

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
            path = Path(self.run_dir) / CHECKPOINT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            self.trainer.save_checkpoint(str(tmp))
            os.replace(tmp, path)
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sparsemask"] = {"history": self.history, "config": dataclasses.asdict(self.config)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sparsemask")
        if state is None:
            raise ValueError("this checkpoint was not written by the SparseMask strategy (no 'sparsemask' entry)")
        self.history = [dict(h) for h in state["history"]]


def _space_fingerprint(model: ModelSpace) -> dict[str, Any]:
    labels = {}
    for label, mutable in model.simplify().items():
        values = getattr(mutable, "values", None)
        labels[label] = {"type": type(mutable).__name__, "n": len(values) if values is not None else None,
                         "n_chosen": getattr(mutable, "n_chosen", None)}
    return {"space": type(model).__name__, "labels": labels}


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

    def __init__(self, lambda_sparse: float = 0.01, threshold: float = 1e-3, loss: str = "sparsemask",
                 optimization: str = "joint", *, arc_learning_rate: float = 3e-3, arc_optimizer: str = "adam",
                 arc_momentum: float = 0.9, arc_weight_decay: float = 0.0, alpha: float | None = None,
                 init: float = 0.5, init_noise: float = 1e-2, eps: float = DEFAULT_EPS, seed: int = 0,
                 warmup_epochs: int = 0, gradient_clip_val: float | None = None, other_choices: str = "darts",
                 undecided_warn_fraction: float = 0.25, log_every_n_steps: int = 10,
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
        self._report: dict[str, Any] | None = None

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
        run_dir = self.run_dir
        if (run_dir / RESULT_FILE).exists():
            raise FileExistsError(f"{run_dir} holds a finished SparseMask search ({RESULT_FILE}); its results are "
                                  "kept and not overwritten. Use a new run_dir, or delete this one to search again.")
        record = {"config": dataclasses.asdict(self.config), "space": _space_fingerprint(model)}
        cfg_path = run_dir / CONFIG_FILE
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            diffs = [f"{k}: {old['config'].get(k)!r} there, {v!r} here"
                     for k, v in record["config"].items() if old.get("config", {}).get(k) != v]
            if old.get("space") != record["space"]:
                diffs.append("the search space (labels / number of candidates) differs")
            if diffs:
                raise ValueError(f"{run_dir} was written by another SparseMask configuration ({'; '.join(diffs)}). "
                                 "Use a new run_dir, or the same settings to resume.")
            ckpt = run_dir / CHECKPOINT_FILE
            if ckpt.exists():
                self._resume_from = ckpt
                _logger.info("SparseMask resumes from %s", ckpt)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(record, indent=2, sort_keys=True))

    def _initialize(self, model_space, engine):
        self._report = None
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
            state = torch.load(self._resume_from, map_location="cpu", weights_only=True).get("sparsemask")
            if state is None:
                raise ValueError(f"{self._resume_from} was not written by SparseMask; delete it or use a new run_dir")
            module = mutated.module
            if isinstance(module, SparseMaskLightningModule):
                module.start_epoch = len(state["history"])
        return mutated

    def _run(self) -> None:
        super()._run()
        self._finish()

    def _finish(self) -> None:
        weights = self.weights()
        report = binarization_report(weights, self.config.threshold)
        self._report = report
        overall = report["overall"]
        if overall["undecided_fraction"] > self.config.undecided_warn_fraction:
            slow = [l for l, r in report.items() if l != "overall"
                    and r["undecided_fraction"] > self.config.undecided_warn_fraction]
            warnings.warn(
                f"SparseMask: {overall['undecided_fraction']:.0%} of w is still in ({self.config.threshold}, "
                f"{UNDECIDED_HIGH}) after the search (labels {', '.join(slow)}): w has not binarised, so the kept set "
                "depends on the threshold. Search longer, raise lambda_sparse or arc_learning_rate.", UserWarning)
        _logger.info("SparseMask binarisation: %s", overall)
        if self.run_dir is not None:
            result = {"config": dataclasses.asdict(self.config), "weights": weights,
                      "export": self.oneshot_module.export(), "history": self.history(),
                      "binarization": report}
            path = self.run_dir / RESULT_FILE
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False))
            os.replace(tmp, path)

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


def _jsonable(obj: Any) -> Any:
    """Plain JSON: infinite gaps become the string ``"inf"``, dict keys strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
