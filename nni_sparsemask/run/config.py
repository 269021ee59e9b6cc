"""The typed configs of a run: the ONE place every default lives.

The CLI (``sparsemask ... --help`` prints these values), the comparison's trial settings, the demo and the Python
API all take their defaults from the dataclasses here; ``tests/test_defaults.py`` checks that they agree.

* :class:`DataConfig` -- which data set, at which size, in which batches;
* :class:`ModelConfig` -- the network around the decoder (backbone, its weights, ``C_dec``);
* :class:`TrainConfig` -- training a fixed network (retraining, hand-designed decoders);
* :class:`SearchConfig` -- the one-shot search's schedule (the strategy's own settings are its arguments);
* :class:`EvalConfig` -- how speed is measured (FPS input side, batch, timed seconds);
* :class:`PretrainConfig` -- the backbone's digit-classification pre-training (its hash names the cache file).

Each config is saved in the run directory's ``config.json`` and read back with :func:`config_from_dict`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "SearchConfig", "EvalConfig", "PretrainConfig", "DATASETS", "PRETRAINED", "DEFAULT_ARC_LR", "COSTS", "SEARCH_LEGACY",
           "DEFAULT_BACKBONE_KWARGS", "default_backbone_kwargs", "checked_fields", "config_from_dict"]

#: constructor arguments a backbone gets when none are given (the demo's small convnet); others get none
DEFAULT_BACKBONE_KWARGS: dict[str, dict[str, Any]] = {"convnet": {"widths": [16, 32, 48, 64, 96]}}


def default_backbone_kwargs(backbone: str) -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULT_BACKBONE_KWARGS` for ``backbone`` (``{}`` for the others)."""
    return json.loads(json.dumps(DEFAULT_BACKBONE_KWARGS.get(backbone, {})))


DATASETS = ("digitscenes", "voc", "ade20k", "msrab", "duts", "ecssd", "bsds500")  # data.datasets.DATASETS
PRETRAINED = "pretrained"  # backbone_weights value: the cached DigitScenes classifier (sparsemask pretrain)


@dataclass(frozen=True)
class DataConfig:
    """Which data set, at which size.

    Attributes:
        dataset: ``digitscenes`` (built in), or a data set read from ``root`` in its archive's layout: ``voc``
            (PASCAL VOC 2012; ``train_aug`` when ``sbd_root`` is given), ``ade20k``, ``msrab``, ``duts``, ``ecssd``,
            ``bsds500`` (:mod:`nni_sparsemask.data.datasets`).
        root / sbd_root: data set folders (``sbd_root``: ``voc`` only).
        image_size: DigitScenes scene side; the training crop of the other data sets (and the padded eval size).
        train_scenes / val_scenes: DigitScenes split sizes.
        batch_size: training batch size (evaluation uses 4x).
        task: ``segmentation``, ``saliency`` or ``edges``: DigitScenes has all three views, the other data sets
            one each (edges on ADE20K is refused).
        seed: seeds the scenes and the batch order.
    """

    dataset: str = "digitscenes"
    root: Optional[str] = None
    sbd_root: Optional[str] = None
    image_size: int = 64
    train_scenes: int = 2000
    val_scenes: int = 500
    batch_size: int = 16
    task: str = "segmentation"
    seed: int = 0

    def __post_init__(self) -> None:
        from nni_sparsemask.data.datasets import check_task, dataset_entry
        entry = dataset_entry(self.dataset)
        if self.dataset == "voc" and not self.root:
            raise ValueError("dataset 'voc' needs its root (--data-root), the folder that holds VOCdevkit/VOC2012")
        if entry.needs_root and not self.root:
            raise ValueError(f"dataset {self.dataset!r} needs its root folder (--data-root); it is read from local "
                             "files, nothing is downloaded")
        if self.sbd_root and self.dataset != "voc":
            raise ValueError(f"sbd_root (--sbd-root) is for dataset 'voc' only, not {self.dataset!r}")
        for name in ("image_size", "train_scenes", "val_scenes", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.task not in ("segmentation", "saliency", "edges"):
            raise ValueError(f"unknown task {self.task!r}; use segmentation, saliency or edges")
        check_task(self.dataset, self.task)  # edges on ADE20K: one line naming the tasks it has
        if self.dataset == "digitscenes":
            _check_scene_size("", self.image_size)

    @property
    def num_classes(self) -> int:
        from nni_sparsemask.data.datasets import num_classes
        return num_classes(self.dataset, self.task)


@dataclass(frozen=True)
class ModelConfig:
    """The network around the decoder.

    Attributes:
        backbone: encoder name (``convnet``, ``mobilenet_v2``, ``resnet18``, ...).
        backbone_kwargs: its constructor arguments (``{"widths": [...]}``, ``{"width_mult": 0.5}``).
        backbone_weights: ``"pretrained"`` (the cached DigitScenes digit classifier of ``sparsemask pretrain``,
            trained on first use), a local ``state_dict`` file, a torchvision weights name, or None (random).
        decoder_channels: ``C_dec`` of the FDN decoder stages (ASPP channels for DeepLabV3).
    """

    backbone: str = "convnet"
    backbone_kwargs: dict = field(default_factory=lambda: default_backbone_kwargs("convnet"))
    backbone_weights: Optional[str] = PRETRAINED
    decoder_channels: int = 32

    def __post_init__(self) -> None:
        from nni_sparsemask.fdn.backbones import available_backbones
        object.__setattr__(self, "backbone_kwargs", json.loads(json.dumps(dict(self.backbone_kwargs or {}))))
        if self.backbone not in available_backbones():
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {', '.join(available_backbones())}")
        if isinstance(self.decoder_channels, bool) or not isinstance(self.decoder_channels, int) \
                or self.decoder_channels < 1:
            raise ValueError(f"decoder_channels must be a positive integer, got {self.decoder_channels!r}")


#: decoder learning rate / encoder learning rate of the paper's recipe (its FDN decoders; DeepLabV3 here too)
PAPER_DECODER_LR_MULT = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Training of a fixed network (retraining, the hand-designed decoders) with L_task only: SGD (momentum 0.9)
    with poly decay (power 0.9), see :mod:`.lightning`.

    Attributes:
        epochs: passes over the training set.
        learning_rate: encoder learning rate (the paper's 0.005 is for VOC with ImageNet weights; 0.02 is what
            the DigitScenes runs were measured with).
        decoder_lr_mult: decoder learning rate / encoder learning rate; None: the decoder's own
            (``DecoderEntry.decoder_lr_mult``): the paper's 10 for the FDN space's decoders, searched or
            hand-designed, and DeepLabV3; per peer for the segmentation_models_pytorch decoders, several of which
            did not learn DigitScenes at 10x (smp FPN 16.1 mIoU at 10x, 54.5 at 1x; ``benchmarks/RESULTS.md``).
        weight_decay: SGD weight decay (paper: 4e-5).
        seed: seeds the network's initial weights and every epoch (batch order, augmentation).
    """

    epochs: int = 15
    learning_rate: float = 0.02
    decoder_lr_mult: Optional[float] = None
    weight_decay: float = 4e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        _positive_number("train", "learning_rate", self.learning_rate)
        if self.decoder_lr_mult is not None:
            _positive_number("train", "decoder_lr_mult", self.decoder_lr_mult)
        _non_negative_number("train", "weight_decay", self.weight_decay)


def checked_fields(cls, data: Any, where: str, noun: Optional[str] = None) -> dict[str, Any]:
    """``data`` as a dict after checking that it is a JSON object whose keys are fields of dataclass ``cls``."""
    from collections.abc import Mapping
    noun = noun or f"{cls.__name__} field"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {noun}(s) {unknown}; known: {sorted(known)}")
    return dict(data)


def config_from_dict(cls, data: Any, where: str):
    """``cls(**data)`` with a clear error for unknown fields (configs read back from JSON)."""
    return cls(**checked_fields(cls, data, where))


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner} {name} must be an integer >= 1, got {value!r}")


def _positive_number(owner: str, name: str, value: Any) -> None:
    """A finite number > 0 (``nan`` and ``inf`` learning rates would train nothing, silently)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{owner} {name} must be a finite number > 0, got {value!r}")


def _non_negative_number(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner} {name} must be a finite number >= 0, got {value!r}")


def _fits_scenes(size: int) -> bool:
    from nni_sparsemask.data.scenes import DigitScenesConfig
    try:
        DigitScenesConfig(image_size=size)
    except ValueError:
        return False
    return True


def _check_scene_size(owner: str, size: int) -> None:
    """``size`` is a side DigitScenes can draw: its digits (8x8) at the smallest digit scale stay >= 8 px."""
    if not _fits_scenes(size):
        smallest = next(s for s in range(1, 4097) if _fits_scenes(s))
        from nni_sparsemask.data.scenes import DigitScenesConfig
        raise ValueError(f"{owner}image_size must be >= {smallest} on DigitScenes (its smallest digits, "
                         f"{DigitScenesConfig.digit_scale[0]} of the side, must be 8 px at least), got {size!r}")


#: the costs a cost-aware search can use (``measure.latency`` kinds)
COSTS = ("latency", "bytes", "flops")

#: w's learning rate when none is given, by ``arc_optimizer`` (``shared``: None, the decoder group's)
DEFAULT_ARC_LR: dict[str, Optional[float]] = {"shared": None, "adam": 0.02, "sgd": 0.02}


@dataclass(frozen=True)
class SearchConfig:
    """The schedule of a one-shot search (SparseMask, L1, MaskConnect) and how it trains w; the strategy's own
    arguments (lambda, sigma, k, ...) are validated by :mod:`.registry`.

    The w defaults are the official code's recipe, as ``SparseMask()``'s: on the demo's search it kept 6 edges with
    1 of 30 w undecided and retrained 4.2 mIoU above the run layer's earlier Adam-on-w setting (ablation:
    ``benchmarks/search_ablation_demo.py``, numbers in ``benchmarks/RESULTS.md``).

    Attributes:
        epochs: search epochs.
        learning_rate: encoder learning rate of the network weights (decoder x ``decoder_lr_mult`` as in training).
        arc_optimizer: ``shared`` (w is one more parameter group of the network's SGD: momentum, poly schedule,
            the decoder's learning rate; the official recipe), ``adam`` or ``sgd`` (an optimizer of w's own).
        arc_learning_rate: learning rate of w; None (``shared`` only) takes the decoder group's.
        arc_noise: std of the noise on w in training forwards (0 turns it off; MaskConnect always uses 0).
        arc_weight_decay: weight decay on w.
        freeze_bn: nearly freeze BatchNorm during the search (the official code's setting).
        arc_warmup_epochs: epochs at the start that train only the network's weights, w held at its start value
            (the warm-up of FBNet and ProxylessNAS; the official code has none): w then meets the sparse loss and a
            cost term only once the decoder has learnt what each input carries. Below ``epochs``.
        cost: a cost-aware search (:mod:`.costaware`): ``latency`` (timed on the FPS device), ``bytes`` or
            ``flops`` (counted), or None (the paper's loss only).
        target_fps: with ``cost='latency'``: the whole network's target FPS at ``cost_size``.
        budget: the decoder's cost budget as a fraction of the dense decoder's (any ``cost``).
        speedup: the whole network's target as a multiple of the dense FDN's predicted speed (any ``cost``; with
            ``latency``, a target FPS relative to the dense FDN's on the same device, which holds from one day's
            timing to the next where an FPS in absolute terms does not).
        cost_weight: mu of the cost term ``mu * max(0, E[cost] / budget - 1)``.
        cost_size: input side the costs are profiled at (the FPS side).
        cost_table: a cost table file (``sparsemask profile``) instead of profiling; refused when made for
            another device, size or space.
    """

    epochs: int = 15
    learning_rate: float = 0.02
    arc_optimizer: str = "shared"
    arc_learning_rate: Optional[float] = None
    arc_noise: float = 0.05
    arc_weight_decay: float = 4e-5
    freeze_bn: bool = False
    arc_warmup_epochs: int = 0
    cost: Optional[str] = None
    target_fps: Optional[float] = None
    budget: Optional[float] = None
    speedup: Optional[float] = None
    cost_weight: float = 1.0
    cost_size: int = 512
    cost_table: Optional[str] = None

    def __post_init__(self) -> None:
        _positive_int("search", "epochs", self.epochs)
        self._check_cost()
        _positive_number("search", "learning_rate", self.learning_rate)
        from nni_sparsemask.nas.config import ARC_OPTIMIZERS  # here: reading the defaults (--help) needs no torch
        if self.arc_optimizer not in ARC_OPTIMIZERS:
            raise ValueError(f"unknown search arc_optimizer {self.arc_optimizer!r}; use one of "
                             f"{', '.join(ARC_OPTIMIZERS)}")
        if self.arc_learning_rate is None:
            if self.arc_optimizer != "shared":
                raise ValueError(f"search arc_optimizer {self.arc_optimizer!r} needs an arc learning rate (--arc-lr); "
                                 "only 'shared' takes the decoder's")
        else:
            _positive_number("search", "arc_learning_rate", self.arc_learning_rate)
        _non_negative_number("search", "arc_noise", self.arc_noise)
        if self.arc_noise >= 0.5:
            raise ValueError(f"search arc_noise must be below 0.5 (w lives in [0, 1]), got {self.arc_noise!r}")
        _non_negative_number("search", "arc_weight_decay", self.arc_weight_decay)
        if not isinstance(self.freeze_bn, bool):
            raise ValueError(f"search freeze_bn must be true or false, got {self.freeze_bn!r}")
        w = self.arc_warmup_epochs
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < self.epochs:
            raise ValueError(f"search arc_warmup_epochs must be an integer in [0, epochs) = [0, {self.epochs}), got "
                             f"{w!r}: w needs at least one epoch to train")

    def _check_cost(self) -> None:
        if self.cost is None:
            given = [n for n in ("target_fps", "budget", "speedup", "cost_table") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"search {', '.join(given)} need a cost (--cost {'|'.join(COSTS)})")
            return
        if self.cost not in COSTS:
            raise ValueError(f"unknown search cost {self.cost!r}; use one of {', '.join(COSTS)}")
        if sum(getattr(self, n) is not None for n in ("target_fps", "budget", "speedup")) != 1:
            raise ValueError("a cost-aware search needs exactly one of a target FPS (--target-fps, with --cost "
                             "latency), a budget (--budget, a fraction of the dense decoder's cost) and a speed-up "
                             "over the dense FDN (--speedup)")
        if self.target_fps is not None:
            if self.cost != "latency":
                raise ValueError(f"--target-fps is a latency target; with --cost {self.cost} give --budget (a fraction "
                                 "of the dense decoder's cost) instead")
            _positive_number("search", "target_fps", self.target_fps)
        if self.budget is not None:
            _positive_number("search", "budget", self.budget)
            if self.budget >= 1:
                raise ValueError(f"search budget is a fraction of the dense decoder's cost, in (0, 1); got "
                                 f"{self.budget!r} (1 or more would let the dense decoder through)")
        if self.speedup is not None:
            _positive_number("search", "speedup", self.speedup)
            if self.speedup <= 1:
                raise ValueError(f"search speedup is a multiple of the dense FDN's speed, above 1; got "
                                 f"{self.speedup!r} (the dense FDN already runs at 1x)")
        _positive_number("search", "cost_weight", self.cost_weight)
        _positive_int("search", "cost_size", self.cost_size)

    def strategy_options(self, noise: bool = True) -> dict[str, Any]:
        """The keyword arguments of the one-shot strategy that say how w is trained (``noise=False``: a strategy
        that takes no noise on w, MaskConnect)."""
        out = {"arc_optimizer": self.arc_optimizer, "arc_learning_rate": self.arc_learning_rate,
               "arc_weight_decay": self.arc_weight_decay, "freeze_bn": self.freeze_bn,
               "warmup_epochs": self.arc_warmup_epochs}
        if noise:
            out["arc_noise"] = self.arc_noise
        return out


#: SearchConfig settings added after the first release, with what searches written before them did (Adam on w,
#: no noise, no weight decay, BN trained, no cost term): a resumed old run directory compares with these
SEARCH_LEGACY: dict[str, Any] = {"arc_optimizer": "adam", "arc_noise": 0.0, "arc_weight_decay": 0.0,
                                 "freeze_bn": False, "cost": None, "target_fps": None, "budget": None, "speedup": None,
                                 "cost_weight": 1.0, "cost_size": 512, "cost_table": None, "arc_warmup_epochs": 0}


@dataclass(frozen=True)
class EvalConfig:
    """How a trained network's speed is measured (its scores need no settings).

    Attributes:
        fps_size: side of the square input FPS is timed at (the paper: 512).
        fps_batch: batch size of the timing (the paper: 1).
        fps_seconds: seconds of timed forwards per measurement.
    """

    fps_size: int = 512
    fps_batch: int = 1
    fps_seconds: float = 2.0

    def __post_init__(self) -> None:
        _positive_int("eval", "fps_size", self.fps_size)
        _positive_int("eval", "fps_batch", self.fps_batch)
        _positive_number("eval", "fps_seconds", self.fps_seconds)


@dataclass(frozen=True)
class PretrainConfig:
    """What a pre-trained backbone is made of; any change gives another cache file.

    Attributes:
        backbone: registry name (``convnet``, ``mobilenet_v2``, ...).
        backbone_kwargs: constructor arguments of the backbone (e.g. ``{"widths": [16, 32, 48, 64, 96]}``).
        image_size: side of the classification scenes (the segmentation image size of the demo).
        num_scenes: training scenes (one digit each); validation uses ``num_scenes // 4`` val scenes.
        epochs: passes over the training scenes (>= 1).
        batch_size: images per step.
        lr: peak AdamW learning rate.
        warmup_epochs: linear warm-up length (fraction of an epoch allowed).
        weight_decay: AdamW weight decay.
        seed: seeds the weights, the scenes and the batch order.
    """

    backbone: str = "convnet"
    backbone_kwargs: dict = field(default_factory=lambda: default_backbone_kwargs("convnet"))
    image_size: int = 64
    num_scenes: int = 6000
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so that the cache key is stable
        object.__setattr__(self, "backbone_kwargs", json.loads(json.dumps(dict(self.backbone_kwargs))))
        for name in ("epochs", "batch_size", "num_scenes", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"pretrain {name} must be a positive int, got {value!r}")
        _check_scene_size("pretrain ", self.image_size)
        _positive_number("pretrain", "lr", self.lr)
        _non_negative_number("pretrain", "warmup_epochs", self.warmup_epochs)
        _non_negative_number("pretrain", "weight_decay", self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short hash of the config: the cache file name."""
        import hashlib
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
