"""``SparseMaskLightningModule``: the search loop of :class:`~nni_sparsemask.nas.strategy.SparseMask` (it wraps the
evaluator's Lightning module, as NNI's DARTS does).

Per training batch (``optimization='joint'``): the evaluator's ``training_step`` (one forward, with noisy w when
``arc_noise > 0``), ``L = L_task + lambda * sum_l R(w_l)`` (R on the forward's noisy w when ``noisy_penalty``),
one backward, a step of the evaluator's optimizer, which holds w when ``arc_optimizer='shared'``, or of it and
w's own optimizer, then w clamped into [0, 1]. ``'bilevel'``: a w step on a validation batch, then a weight step
on a training batch. The epoch seeding, the w history and the per-epoch checkpoint are here too; the settings
are :class:`~nni_sparsemask.nas.config.SparseMaskConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from nni.nas.evaluator.pytorch.lightning import LightningModule
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from torch import nn

from nni_sparsemask.nas import recipe, searchdir
from nni_sparsemask.nas.config import SparseMaskConfig
from nni_sparsemask.nas.losses import alpha_rule, budget_penalty, kept_cost, regulariser
from nni_sparsemask.nas.supermodule import SparseMixedInput
from nni_sparsemask.seeding import seed_epoch

__all__ = ["SparseMaskLightningModule"]

class SparseMaskLightningModule(BaseOneShotLightningModule):
    """The search loop of :class:`SparseMask` (wraps the evaluator's Lightning module, as NNI's DARTS does).

    ``history`` holds ``{label: w}`` after every training epoch; it is saved in the checkpoints.
    """

    def __init__(self, training_module: LightningModule, config: SparseMaskConfig, run_dir: str | None = None,
                 cost_fn: Any = None):
        super().__init__(training_module)
        self.config = config
        self.cost_fn = cost_fn
        self.run_dir = run_dir
        self.history: list[dict[str, list[float]]] = []
        # the first epoch this fit runs (> 0 when resuming); the RNGs are seeded for it in ``setup``
        self.start_epoch = 0
        # arc_optimizer='shared': the evaluator's optimizer, which holds w's group
        self.shared_optimizer: torch.optim.Optimizer | None = None
        self._frozen_bn: list = []

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

    def _reset_forward_weights(self) -> None:
        for m in self.supernet_modules():
            if isinstance(m, SparseMixedInput):
                m.reset_forward_weights()

    # ---- the loss ---------------------------------------------------------------------------------------
    def regulariser(self) -> torch.Tensor:
        """``lambda * sum_l R(w_l)`` (:func:`~nni_sparsemask.nas.losses.regulariser`) for the configured ``loss``.

        A constant 0, outside the graph, for ``'task'`` and ``lambda_sparse == 0``. With ``noisy_penalty`` R sees
        the noisy w of the latest training forward (the first module of a label), otherwise w itself.
        """
        cfg = self.config
        modules = list(self.sparse_modules().values())
        if cfg.loss == "task" or cfg.lambda_sparse == 0 or not modules:
            return torch.zeros((), device=self.device)
        stages = [(m.penalty_weights(cfg.noisy_penalty),
                   cfg.alpha if cfg.alpha is not None else alpha_rule(m.n_candidates)) for m in modules]
        return cfg.lambda_sparse * regulariser(stages, cfg.loss, cfg.eps)

    def expected_cost(self) -> float | None:
        """``cost_fn`` at the current w (None without a cost term)."""
        if self.cost_fn is None:
            return None
        with torch.no_grad():
            return float(self.cost_fn({label: m.arch_weights for label, m in self.sparse_modules().items()}))

    def cost_penalty(self) -> torch.Tensor:
        """``cost_weight * max(0, C(w) / cost_budget - 1)`` (:func:`~nni_sparsemask.nas.losses.budget_penalty`)
        with ``C`` the kept architecture's cost and the expected cost's gradient
        (:func:`~nni_sparsemask.nas.losses.kept_cost`), on w itself (not the noisy w of the forward); a constant 0
        without a cost term."""
        cfg = self.config
        if self.cost_fn is None or cfg.cost_weight == 0:
            return torch.zeros((), device=self.device)
        w = {label: m.arch_weights for label, m in self.sparse_modules().items()}
        cost = kept_cost(self.cost_fn, w, cfg.threshold)
        self.log("expected_cost", cost.detach(), prog_bar=False)
        return cfg.cost_weight * budget_penalty(cost, cfg.cost_budget)

    def architecture_loss(self) -> torch.Tensor:
        """Everything of L besides L_task: the regulariser plus the cost term."""
        return self.regulariser() + self.cost_penalty()

    # ---- optimisation -----------------------------------------------------------------------------------
    def _checked_arch_parameters(self) -> list[nn.Parameter]:
        params = self.arch_parameters()
        if not params:
            raise ValueError("No architecture parameters found: the model space has no InputChoice(n_chosen=None) "
                             "that SparseMask could search.")
        return params

    def configure_optimizers(self) -> Any:
        """NNI's (the evaluator's optimizer plus w's own) or, for ``arc_optimizer='shared'``, the evaluator's
        optimizer with w as one more parameter group (:func:`~nni_sparsemask.nas.recipe.add_arch_group`)."""
        cfg = self.config
        if cfg.freeze_bn and not self._frozen_bn:  # before the evaluator collects its trainable parameters
            self._frozen_bn = recipe.freeze_batchnorm(self.training_module, cfg.bn_momentum)
        if cfg.arc_optimizer != "shared":
            return super().configure_optimizers()
        params = self._checked_arch_parameters()
        conf = self.postprocess_weight_optimizers(self.training_module.configure_optimizers())
        self.shared_optimizer = recipe.the_weight_optimizer(conf)
        recipe.add_arch_group(self.shared_optimizer, params, cfg.arc_learning_rate, cfg.arc_lr_mult,
                              cfg.arc_weight_decay)
        return conf

    def configure_architecture_optimizers(self):
        params = self._checked_arch_parameters()
        cfg = self.config
        if cfg.arc_optimizer == "shared":
            return None
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
        self._reset_forward_weights()
        if cfg.arc_optimizer == "shared":  # joint (validated): one step of the one optimizer moves w too
            out, task = self._task_loss(batch, batch_idx)
            reg = self.architecture_loss()
            self.advance_optimization(task + reg, batch_idx, cfg.gradient_clip_val)
            self.clamp_weights()
        elif cfg.optimization == "joint":
            out, task = self._task_loss(batch, batch_idx)
            reg = self.architecture_loss()
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
                reg = self.architecture_loss()
                self.manual_backward(val_task + reg)
                arc_optim.step()
                self.clamp_weights()
            out, task = self._task_loss(trn_batch, 2 * batch_idx + 1)
            self.advance_optimization(task, batch_idx, cfg.gradient_clip_val)
        self._reset_forward_weights()
        if self.shared_optimizer is None:
            self.advance_lr_schedulers(batch_idx)
        else:  # the evaluator's schedulers were built without w's group; w follows its reference group
            with recipe.arch_group_hidden(self.shared_optimizer):
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
        searchdir.put_state(checkpoint, self.history, dataclasses.asdict(self.config), self.trainer.world_size)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = searchdir.load_history(checkpoint)

    # ---- several processes (DDP started inside fit): what rank 0 hands back to the calling process ----------
    def main_process_state(self) -> dict[str, Any]:
        """The w history (the weights come back with the state dict)."""
        return {"history": [dict(h) for h in self.history]}

    def load_main_process_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]

    def teardown(self, stage: str = None):  # type: ignore[assignment]
        recipe.restore_batchnorm(self._frozen_bn)  # the BatchNorm of the space as it was before the search
        self._frozen_bn = []
        return super().teardown(stage)
