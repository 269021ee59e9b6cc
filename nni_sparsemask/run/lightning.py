"""Training: one Lightning module for the search, the retraining and the baselines, usable as an NNI evaluator.

Protocol (SparseMask section 4.1, after DeepLab): SGD with momentum 0.9 and weight decay 4e-5; the decoder's
learning rate is 10x the encoder's; both decay per step with the "poly" rule

    lr(t) = base_lr * (1 - t / T) ** power,    power = 0.9,  t = optimizer steps taken,  T = total steps

(``T`` = ``max_steps`` when given, else Lightning's ``trainer.estimated_stepping_batches``); the loss is the
pixel-wise cross-entropy with ``ignore_index=255``.

Model contract: ``model(x)`` returns logits ``(N, num_classes, H, W)`` at the input size; ``model.encoder``,
when present, is the backbone (its parameters get ``learning_rate``, all others ``decoder_lr_mult *
learning_rate``). Parameters whose name satisfies :func:`is_arch_parameter` (architecture weights, e.g. the
``_arch_w`` of :class:`~nni_sparsemask.nas.supermodule.SparseMixedInput`) are left out: the strategy optimises them.

Use it as NNI's ``Classification``::

    from nni_sparsemask.run.lightning import Segmentation, DigitScenesLoader
    evaluator = Segmentation(num_classes=11, learning_rate=0.005,
                             train_dataloaders=DigitScenesLoader(split="train", batch_size=16, shuffle=True),
                             val_dataloaders=DigitScenesLoader(split="val", batch_size=16),
                             max_epochs=30)
    evaluator.evaluate(model)          # or NasExperiment(space, evaluator, SparseMask()).run()

Logged metrics: ``train_loss`` (per step and epoch), ``val_loss``, ``val_miou``, ``val_pixacc`` and
``val_fg_iou`` (foreground = every class but 0 vs background: shows a collapse to "background only"). Run as
an NNI trial (:func:`in_nni_trial`: NNI's trial environment variables), each validation epoch reports
``{"default": val_miou, ...}`` with ``nni.report_intermediate_result`` and the end of ``fit`` reports the last one
with ``nni.report_final_result``, as NNI's own Lightning evaluators do; ``SegmentationModule.report_to_nni`` lets
the caller decide instead (the comparison trial reports the epochs of its retraining and a final result of its own).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import nni
import pytorch_lightning as pl
import torch
from nni.nas.evaluator.pytorch.lightning import DataLoader, Lightning, LightningModule, Trainer
from torch import Tensor, nn

from nni_sparsemask.data.digitscenes import DigitScenes
from nni_sparsemask.measure.segmentation import SegmentationMetrics
from nni_sparsemask.run.config import PAPER_DECODER_LR_MULT, TrainConfig
from nni_sparsemask.run.distributed import ShardedEpochShuffle
from nni_sparsemask.run.tasks import TaskMetrics, check_task_name, foreground_iou, task_info, task_loss
from nni_sparsemask.seeding import seed_epoch

__all__ = [
    "SegmentationTrainConfig", "SegmentationModule", "Segmentation", "PolyLR", "poly_lr", "is_arch_parameter",
    "split_parameters", "segmentation_scores", "DigitScenesLoader", "ARCH_PARAMETER_MARKER", "in_nni_trial",
]

#: substring that marks an architecture parameter's name (``SparseMixedInput._arch_w``)
ARCH_PARAMETER_MARKER = "_arch_"


def in_nni_trial() -> bool:
    """True when NNI's training service started this process as a trial: it sets ``NNI_PLATFORM`` and
    ``NNI_TRIAL_JOB_ID`` (with ``NNI_EXP_ID``, ..., see ``nni.runtime.env_vars``) for every trial;
    ``NNI_PLATFORM=unittest`` is NNI's own stand-alone mode. Read from the environment when called, not from NNI's
    trial state, which an in-process ``NasExperiment`` leaves set (its engine hands its model out as the trial's
    parameter)."""
    platform = os.environ.get("NNI_PLATFORM")
    return bool(platform) and platform != "unittest" and bool(os.environ.get("NNI_TRIAL_JOB_ID"))


def is_arch_parameter(name: str) -> bool:
    """True for architecture parameters (left to the strategy's optimizer): names containing ``_arch_``."""
    return ARCH_PARAMETER_MARKER in name


def split_parameters(model: nn.Module, arch_predicate: Callable[[str], bool] = is_arch_parameter
                     ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """``(encoder, decoder, arch)`` parameters of ``model``, each once (shared parameters are not repeated).

    ``encoder`` are those of ``model.encoder`` (empty when the model has none), ``arch`` those whose qualified
    name satisfies ``arch_predicate``, ``decoder`` everything else. Frozen (``requires_grad=False``) weights
    are in neither the encoder nor the decoder list.
    """
    encoder_module = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder_module.parameters()} if isinstance(encoder_module, nn.Module) else set()
    encoder, decoder, arch = [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if arch_predicate(name):
            arch.append(p)
        elif not p.requires_grad:
            continue
        elif id(p) in encoder_ids:
            encoder.append(p)
        else:
            decoder.append(p)
    return encoder, decoder, arch


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - min(step, T) / T) ** power``: the "poly" learning rate after ``step`` steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Per-step poly decay of every parameter group: ``lr_g(t) = poly_lr(initial_lr_g, t, total_steps, power)``.

    A plain class (not a ``LambdaLR`` with a lambda) so that its state goes into checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                 last_epoch: int = -1) -> None:
        if total_steps < 1:
            raise ValueError(f"PolyLR needs total_steps >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [poly_lr(base, self.last_epoch, self.total_steps, self.power) for base in self.base_lrs]


@dataclass(frozen=True)
class SegmentationTrainConfig:
    """Hyper-parameters of :class:`SegmentationModule` (saved with each run).

    Attributes:
        num_classes: output channels of the model (11 on DigitScenes, 21 on VOC, 2 for saliency / edges).
        learning_rate: encoder learning rate (default: :class:`~.config.TrainConfig`'s; paper: 0.005 on VOC).
        decoder_lr_mult: decoder learning rate / encoder learning rate (paper: 10).
        momentum: SGD momentum (paper: 0.9).
        weight_decay: SGD weight decay on every trained weight (paper: 4e-5).
        poly_power: exponent of the poly decay (paper: 0.9).
        max_steps: ``T`` of the poly decay; ``None`` takes ``trainer.estimated_stepping_batches``.
        ignore_index: target value that is not scored (255).
        class_weights: optional cross-entropy weight per class (e.g. for the sparse edge class).
        seed: seeds python / numpy / torch at ``fit`` start and again at every epoch start from ``(seed, epoch)``
            (when this module is the trainer's top module; a one-shot strategy wrapping it seeds on its own).
        freeze_bn: keep every BatchNorm of the encoder in eval mode with its affine weights frozen.
        task: ``segmentation``, ``saliency`` or ``edges`` (:mod:`.tasks`): the loss and the validation scores;
            saliency and edges take two classes.
        edge_thresholds: thresholds of the ODS / OIS / AP of a validation epoch (edges; the final evaluation
            sweeps BSDS's 99).
    """

    num_classes: int = 11
    learning_rate: float = TrainConfig.learning_rate
    decoder_lr_mult: float = PAPER_DECODER_LR_MULT
    momentum: float = 0.9
    weight_decay: float = TrainConfig.weight_decay
    poly_power: float = 0.9
    max_steps: Optional[int] = None
    ignore_index: int = 255
    class_weights: Optional[tuple[float, ...]] = None
    seed: Optional[int] = TrainConfig.seed
    freeze_bn: bool = False
    task: str = "segmentation"
    edge_thresholds: int = 15

    def __post_init__(self) -> None:
        check_task_name(self.task)
        if self.task != "segmentation" and self.num_classes != 2:
            raise ValueError(f"task {self.task} takes two classes (background, foreground), got num_classes="
                             f"{self.num_classes}")
        if isinstance(self.edge_thresholds, bool) or not isinstance(self.edge_thresholds, int) \
                or self.edge_thresholds < 1:
            raise ValueError(f"edge_thresholds must be a positive integer, got {self.edge_thresholds!r}")
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index={self.ignore_index} is a class id (num_classes={self.num_classes}); "
                             "use a value outside [0, num_classes), 255 by convention")
        for name in ("learning_rate", "decoder_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.poly_power < 0:
            raise ValueError(f"poly_power must be >= 0, got {self.poly_power!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None (take it from the trainer), got {self.max_steps!r}")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries for {self.num_classes} classes")


_DEFAULTS = SegmentationTrainConfig()


def segmentation_scores(metrics: SegmentationMetrics) -> dict[str, float]:
    """``miou`` and ``pixacc`` of :class:`~nni_sparsemask.measure.metrics.SegmentationMetrics` (mIoU over the classes
    present in the target or the prediction), plus ``fg_iou``: the IoU of classes ``1..C-1`` merged (the
    foreground) against class 0, which shows a collapse to "background only" that mIoU hides."""
    scores = metrics.compute()
    return {"miou": scores.miou, "pixacc": scores.pixel_accuracy, "fg_iou": foreground_iou(scores.confusion_matrix)}


@nni.trace
class SegmentationModule(LightningModule):
    """Lightning module for dense prediction with the SparseMask training protocol (see the module docstring).

    The keyword arguments are the fields of :class:`SegmentationTrainConfig` (plain values, so that NNI can
    serialise the module); ``SegmentationModule.from_config(cfg)`` builds one from a config.
    """

    def __init__(self, num_classes: int = _DEFAULTS.num_classes, learning_rate: float = _DEFAULTS.learning_rate,
                 decoder_lr_mult: float = _DEFAULTS.decoder_lr_mult, momentum: float = _DEFAULTS.momentum,
                 weight_decay: float = _DEFAULTS.weight_decay, poly_power: float = _DEFAULTS.poly_power,
                 max_steps: Optional[int] = None, ignore_index: int = _DEFAULTS.ignore_index,
                 class_weights: Optional[Sequence[float]] = None, seed: Optional[int] = _DEFAULTS.seed,
                 freeze_bn: bool = False, task: str = _DEFAULTS.task,
                 edge_thresholds: int = _DEFAULTS.edge_thresholds) -> None:
        super().__init__()
        self.config = SegmentationTrainConfig(
            num_classes=num_classes, learning_rate=learning_rate, decoder_lr_mult=decoder_lr_mult,
            momentum=momentum, weight_decay=weight_decay, poly_power=poly_power, max_steps=max_steps,
            ignore_index=ignore_index, class_weights=tuple(class_weights) if class_weights is not None else None,
            seed=seed, freeze_bn=freeze_bn, task=task, edge_thresholds=edge_thresholds)
        self.save_hyperparameters(dataclasses.asdict(self.config))
        weight = torch.tensor(self.config.class_weights) if self.config.class_weights is not None else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.arch_predicate: Callable[[str], bool] = is_arch_parameter
        self._metrics = self._new_metrics()
        self._val_loss_sum = 0.0
        self._val_pixels = 0
        #: what goes to NNI (see ``_reporting``): None = as NNI's evaluators when this process is an NNI trial
        #: (:func:`in_nni_trial`): every validation epoch as an intermediate result, the end of fit (or of a
        #: ``validate``) as the final result; True = every validation epoch as an intermediate result and no final
        #: result (the caller reports its own); False = nothing
        self.report_to_nni: Optional[bool] = None
        #: scores of the last finished validation epoch: ``val_loss`` and ``val_<score>`` of every score of the task
        #: (:mod:`.tasks`; ``val_miou``, ``val_pixacc``, ``val_fg_iou``, ... ``val_max_fbeta``, ``val_ods``, ...)
        self.last_scores: dict[str, float] = {}

    def _new_metrics(self) -> TaskMetrics:
        cfg = self.config
        return TaskMetrics(cfg.task, cfg.num_classes, cfg.ignore_index, edge_thresholds=cfg.edge_thresholds)

    @classmethod
    def from_config(cls, config: SegmentationTrainConfig) -> "SegmentationModule":
        return cls(**dataclasses.asdict(config))

    # ---- forward / loss ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _logits(self, x: Tensor, target: Tensor) -> Tensor:
        logits = self(x)
        if logits.dim() != 4 or logits.shape[1] != self.config.num_classes:
            raise ValueError(f"the model must return logits (N, {self.config.num_classes}, H, W), "
                             f"got {tuple(logits.shape)}; check num_classes")
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"logits are {tuple(logits.shape[-2:])} but targets {tuple(target.shape[-2:])}: "
                             "the model must upsample its output to the input size")
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The task's loss (:func:`.tasks.task_loss`) over the pixels whose target is not ``ignore_index``:
        cross-entropy (segmentation, saliency), HED's class-balanced BCE (edges)."""
        return task_loss(self.config.task, logits, target, self.config.ignore_index, self.class_weight)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss(self._logits(x, y), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0],
                 sync_dist=True)  # (the epoch's mean over every process's batches under DDP)
        return loss

    # ---- validation -------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._metrics.reset()
        self._val_loss_sum = 0.0
        self._val_pixels = 0

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Accumulates the confusion matrix and the pixel-weighted loss (several val loaders are pooled)."""
        x, y, *rest = batch  # BSDS500's evaluation images carry every annotator's boundaries
        logits = self._logits(x, y)
        loss = self.loss(logits, y)
        n_valid = int((y != self.config.ignore_index).sum())
        self._val_loss_sum += float(loss) * n_valid
        self._val_pixels += n_valid
        self._metrics.update(logits.detach(), y, boundaries=list(rest[0]) if rest else None)
        return loss

    def on_validation_epoch_end(self) -> None:
        metrics = self._metrics
        stats = torch.tensor([self._val_loss_sum, float(self._val_pixels)], dtype=torch.float64)
        if self.trainer.world_size > 1:  # sum the counts of every process before scoring
            sums = self.all_gather(metrics.sums().to(self.device)).sum(0)
            stats = self.all_gather(stats.to(self.device)).sum(0).cpu()
            metrics = self._new_metrics().add_sums(sums)  # the summed counts of all processes
        scores = metrics.compute()
        val_loss = float(stats[0] / stats[1]) if stats[1] > 0 else float("nan")
        self.last_scores = {"val_loss": val_loss, **{_val_name(k): v for k, v in scores.items()}}
        for name, value in self.last_scores.items():
            self.log(name, value, prog_bar=name in ("val_loss", "val_miou"), sync_dist=True)  # (equal on every rank)
        if not self.trainer.sanity_checking and self._reporting():
            nni.report_intermediate_result(self._report())

    def _reporting(self, final: bool = False) -> bool:
        """Send this result (an epoch's, or with ``final`` the end's) to NNI? See ``report_to_nni``.

        Not ``nni.get_current_parameter() is not None`` (the test of NNI's own evaluators): an in-process
        ``NasExperiment`` leaves its model set as the current parameter after it ran, outside trials too. Under DDP
        rank 0 alone reports."""
        trainer = self._trainer
        if trainer is not None and not trainer.is_global_zero:
            return False
        if self.report_to_nni is None:
            return in_nni_trial()
        return bool(self.report_to_nni) and not final

    def _report(self) -> dict[str, Optional[float]]:
        """What NNI receives: ``default`` = the task's main validation score (mIoU, max F-beta, ODS), then every
        score of the task under its own name and ``val_loss``; ``nan`` (e.g. no foreground at all) becomes ``None``
        (JSON)."""
        s = self.last_scores
        info = task_info(self.config.task)
        out = {"default": s[_val_name(info.main)]}
        out.update({k: s[_val_name(k)] for k in info.scores if k != "miou" or info.main != "miou"})
        out["val_loss"] = s["val_loss"]
        return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in out.items()}

    def on_fit_end(self) -> None:
        if self.last_scores and self._reporting(final=True):
            nni.report_final_result(self._report())

    def on_validation_end(self) -> None:
        from pytorch_lightning.trainer.states import TrainerFn
        if self.trainer.state.fn == TrainerFn.VALIDATING and self.last_scores and self._reporting(final=True):
            nni.report_final_result(self._report())

    # ---- optimisation -----------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """``[{"name": "encoder", ...}, {"name": "decoder", ...}]`` (empty groups dropped), without arch params."""
        encoder, decoder, _ = split_parameters(self.model, self.arch_predicate)
        cfg = self.config
        groups = [{"name": "encoder", "params": encoder, "lr": cfg.learning_rate},
                  {"name": "decoder", "params": decoder, "lr": cfg.learning_rate * cfg.decoder_lr_mult}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("the model has no trainable parameters outside the architecture parameters")
        return groups

    def total_steps(self) -> int:
        """``T`` of the poly decay: ``max_steps`` or the trainer's estimate."""
        if self.config.max_steps is not None:
            return self.config.max_steps
        total = self.trainer.estimated_stepping_batches
        if total is None or not math.isfinite(total) or total < 1:
            raise ValueError("cannot size the poly learning-rate decay: give the trainer max_epochs or max_steps, "
                             "or pass max_steps to SegmentationModule")
        return int(total)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.freeze_bn:
            for m in self._encoder_batchnorms():
                for p in m.parameters():
                    p.requires_grad_(False)
        optimizer = torch.optim.SGD(self.param_groups(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = PolyLR(optimizer, self.total_steps(), cfg.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- seeding, frozen BN -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # seed only when this module is what the trainer fits; a one-shot strategy's wrapper seeds by itself
        if stage == "fit" and self.config.seed is not None and self.trainer.lightning_module is self:
            pl.seed_everything(self.config.seed, workers=True, verbose=False)

    def _encoder_batchnorms(self) -> list[nn.Module]:
        encoder = getattr(self.model, "encoder", None)
        if not isinstance(encoder, nn.Module):
            return []
        return [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def on_train_epoch_start(self) -> None:
        # reseed every epoch from (seed, epoch), before Lightning draws the epoch's batch order: a run resumed at
        # epoch k then trains exactly as an uninterrupted run did in epoch k (a one-shot wrapper reseeds itself)
        if self.config.seed is not None and self.trainer.lightning_module is self:
            seed_epoch(self.config.seed, self.trainer.current_epoch)
        if self.config.freeze_bn:  # Lightning puts the model in train mode before every epoch
            for m in self._encoder_batchnorms():
                m.eval()


def _val_name(score: str) -> str:
    """The name a validation epoch logs ``score`` under (``val_pixacc`` for ``pixel_accuracy``, as ever)."""
    return "val_pixacc" if score == "pixel_accuracy" else f"val_{score}"


# ------------------------------------------------------------------------------------------------------------
# Evaluator helpers
# ------------------------------------------------------------------------------------------------------------

def DigitScenesLoader(batch_size: int = 16, shuffle: bool = False, num_workers: int = 0, drop_last: bool = False,
                      **dataset_kwargs: Any) -> DataLoader:
    """An ``nni.trace``d ``DataLoader`` over an ``nni.trace``d :class:`DigitScenes` (built from its arguments in
    the trial: nothing but the arguments is pickled). ``dataset_kwargs`` go to ``DigitScenes`` (``task``,
    ``split``, ``image_size``, ``num_scenes``, ``cache_dir``, ...)."""
    dataset = nni.trace(DigitScenes)(**dataset_kwargs)
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last)
    # the order of an epoch depends on (seed, epoch) only, so that a resumed run sees what an uninterrupted one did;
    # under DDP each process takes its share of it
    order = nni.trace(ShardedEpochShuffle)(len(dataset), dataset.config.seed)  # len: the config's, nothing is loaded
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers, drop_last=drop_last)


@nni.trace
class Segmentation(Lightning):
    """Evaluator for semantic segmentation (and the two-class saliency / edge views), like NNI's ``Classification``.

    Keyword arguments of :class:`SegmentationModule` configure the training; the other keyword arguments go to
    the (traced) Lightning ``Trainer`` (``max_epochs``, ``accelerator``, ...). The data loaders must be traced
    (``nni.nas.evaluator.pytorch.DataLoader`` over a traced data set, see :func:`DigitScenesLoader`), so that the
    evaluator pickles without the data.
    """

    def __init__(self, num_classes: int = _DEFAULTS.num_classes, learning_rate: float = _DEFAULTS.learning_rate,
                 decoder_lr_mult: float = _DEFAULTS.decoder_lr_mult, momentum: float = _DEFAULTS.momentum,
                 weight_decay: float = _DEFAULTS.weight_decay, poly_power: float = _DEFAULTS.poly_power,
                 max_steps: Optional[int] = None, ignore_index: int = _DEFAULTS.ignore_index,
                 class_weights: Optional[Sequence[float]] = None, seed: Optional[int] = _DEFAULTS.seed,
                 freeze_bn: bool = False, task: str = _DEFAULTS.task, edge_thresholds: int = _DEFAULTS.edge_thresholds,
                 train_dataloaders: Optional[Any] = None, val_dataloaders: Union[Any, List[Any], None] = None,
                 datamodule: Optional[pl.LightningDataModule] = None, fit_kwargs: Optional[dict] = None,
                 **trainer_kwargs: Any) -> None:
        module = SegmentationModule(num_classes=num_classes, learning_rate=learning_rate,
                                    decoder_lr_mult=decoder_lr_mult, momentum=momentum, weight_decay=weight_decay,
                                    poly_power=poly_power, max_steps=max_steps, ignore_index=ignore_index,
                                    class_weights=class_weights, seed=seed, freeze_bn=freeze_bn, task=task,
                                    edge_thresholds=edge_thresholds)
        super().__init__(module, Trainer(**trainer_kwargs), train_dataloaders=train_dataloaders,
                         val_dataloaders=val_dataloaders, datamodule=datamodule, fit_kwargs=fit_kwargs)
