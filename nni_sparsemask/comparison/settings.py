"""The settings every entry of one comparison shares: :class:`TrialSettings`, the ``--preset`` values
(:data:`PRESETS`) and :func:`preset_settings` (a preset with ``--settings`` merged in).

Experiment-wide settings (data, backbone, epochs, FPS size) come from the trial's command line: ``--preset quick``
(the DigitScenes CPU comparison) or ``--preset paper`` (PASCAL VOC, MobileNetV2, GPU), changed by ``--settings``
(a JSON object or file, merged into the preset) and ``--data-root`` / ``--sbd-root``. Defaults come from the
typed configs of :mod:`nni_sparsemask.run.config`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from nni_sparsemask.run.config import (PRETRAINED, DataConfig, EvalConfig, ModelConfig, SearchConfig, TrainConfig,
                                       checked_fields, config_from_dict, default_backbone_kwargs)

__all__ = ["TrialSettings", "PRESETS", "preset_settings"]


@dataclass(frozen=True)
class TrialSettings:
    """What every entry of one comparison shares.

    Attributes:
        data / model: the data set and the network around the decoder (see :mod:`.pipeline`).
        search_epochs / search_lr / arc_lr / arc_optimizer / arc_noise / arc_weight_decay / freeze_bn: the one-shot
            search (SparseMask, L1, MaskConnect), as :class:`SearchConfig` (:meth:`search_config`).
        retrain_epochs / retrain_lr: retraining every decoder with L_task (searched and hand-designed alike).
        fps_size / fps_batch / fps_seconds: the FPS measurement (input side, batch, timed seconds).
        pretrain: overrides of :class:`~.pretrain.PretrainConfig` when ``model.backbone_weights`` is
            ``"pretrained"`` (the cached DigitScenes digit classifier).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search_epochs: int = SearchConfig.epochs
    search_lr: float = SearchConfig.learning_rate
    arc_lr: Optional[float] = SearchConfig.arc_learning_rate
    arc_optimizer: str = SearchConfig.arc_optimizer
    arc_noise: float = SearchConfig.arc_noise
    arc_weight_decay: float = SearchConfig.arc_weight_decay
    freeze_bn: bool = SearchConfig.freeze_bn
    retrain_epochs: int = TrainConfig.epochs
    retrain_lr: float = TrainConfig.learning_rate
    fps_size: int = EvalConfig.fps_size
    fps_batch: int = EvalConfig.fps_batch
    fps_seconds: float = EvalConfig.fps_seconds
    pretrain: dict = field(default_factory=dict)
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        for name in ("search_epochs", "retrain_epochs", "fps_size", "fps_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"trial setting {name} must be an integer >= 1, got {value!r}")
        for name in ("search_lr", "retrain_lr", "fps_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"trial setting {name} must be a number > 0, got {value!r}")
        try:
            self.search_config()
        except ValueError as err:
            raise ValueError(f"trial settings: {err}") from None
        if not isinstance(self.pretrain, dict):
            raise ValueError(f"trial setting pretrain must be an object of PretrainConfig fields, got "
                             f"{self.pretrain!r}")
        from nni_sparsemask.run.config import PretrainConfig
        unknown = sorted(set(self.pretrain) - {f.name for f in dataclasses.fields(PretrainConfig)})
        if unknown:
            raise ValueError(f"trial setting pretrain: unknown PretrainConfig field(s) {unknown}")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ValueError(f"trial setting accelerator must be auto, cpu, gpu, cuda or mps, got {self.accelerator!r}")

    def search_config(self) -> SearchConfig:
        """The one-shot search's :class:`SearchConfig` of these settings."""
        return SearchConfig(epochs=self.search_epochs, learning_rate=self.search_lr, arc_optimizer=self.arc_optimizer,
                            arc_learning_rate=self.arc_lr, arc_noise=self.arc_noise,
                            arc_weight_decay=self.arc_weight_decay, freeze_bn=self.freeze_bn,
                            cost_size=self.fps_size)  # a cost-aware entry's costs are taken at the FPS side

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Any, where: str = "trial settings") -> "TrialSettings":
        values = checked_fields(cls, data, where, noun="setting")
        if "data" in values:
            values["data"] = config_from_dict(DataConfig, values["data"], f"{where}: data")
        if "model" in values:
            values["model"] = config_from_dict(ModelConfig, values["model"], f"{where}: model")
        return cls(**values)


#: ``--preset`` values: plain dicts (settings are built on use, so importing this module does no work)
PRESETS: dict[str, dict[str, Any]] = {
    # DigitScenes at the demo's size (64px scenes, the demo's convnet and its cached pre-trained weights) with
    # fewer scenes and epochs, so that the whole grid runs in about 20 minutes on a 2-core CPU (one trial at a time)
    "quick": {
        "data": {"dataset": "digitscenes", "image_size": 64, "train_scenes": 800, "val_scenes": 200,
                 "batch_size": 16},
        "model": {"backbone": "convnet", "backbone_kwargs": default_backbone_kwargs("convnet"),
                  "backbone_weights": PRETRAINED, "decoder_channels": 32},
        "search_epochs": 4, "search_lr": 0.02, "arc_lr": None, "retrain_epochs": 5, "retrain_lr": 0.02,
        "fps_size": 256, "fps_batch": 1, "fps_seconds": 2.0, "pretrain": {}, "accelerator": "auto",
    },
    # the paper's setting on a GPU: PASCAL VOC 2012 (train_aug with --sbd-root), MobileNetV2 with ImageNet weights
    "paper": {
        "data": {"dataset": "voc", "root": None, "sbd_root": None, "image_size": 512, "batch_size": 16},
        "model": {"backbone": "mobilenet_v2", "backbone_kwargs": {}, "backbone_weights": "IMAGENET1K_V1",
                  "decoder_channels": 64},
        "search_epochs": 30, "search_lr": 0.007, "arc_lr": None, "retrain_epochs": 50, "retrain_lr": 0.007,
        "fps_size": 512, "fps_batch": 1, "fps_seconds": 2.0, "pretrain": {}, "accelerator": "auto",
    },
}


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if key in ("data", "model", "pretrain") and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def preset_settings(name: str, overrides: Optional[Mapping[str, Any]] = None) -> TrialSettings:
    """The settings of preset ``name`` with ``overrides`` merged in (``data``/``model``/``pretrain`` per field)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    merged = _merge(PRESETS[name], overrides or {})
    if merged["data"].get("dataset") == "voc" and not merged["data"].get("root"):
        raise ValueError("the VOC comparison needs the data set: pass --data-root (the folder holding "
                         "VOCdevkit/VOC2012) and, for train_aug, --sbd-root")
    return TrialSettings.from_dict(merged, f"preset {name!r} with --settings")
