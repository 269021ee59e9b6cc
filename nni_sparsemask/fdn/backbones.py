"""Encoders: an image classifier cut into stages E_1..E_L plus the global-pool feature G (section 3.1.1).

One contract for every backbone (the timm ``features_only`` idea):

* ``encoder(x)`` returns ``(features, g)``: ``features`` is the list of stage outputs ``[E_1, ..., E_L]`` (shallow
  to deep) and ``g`` is the global average pool of ``E_L`` with shape ``(N, C_L, 1, 1)``;
* ``encoder.feature_info`` lists one :class:`FeatureInfo` ``(channels, reduction)`` per stage, where ``reduction``
  is the stride of the stage output relative to the input image.

Backbones are looked up by name in a small registry (:func:`build_backbone`, :func:`available_backbones`).
Weights never download: ``weights`` is ``None`` (random init), a path to a local ``state_dict`` file of the
torchvision model, or a torchvision weights name (``"IMAGENET1K_V1"``) whose file is already in the torch hub
cache. Anything else is a clear error, never a silent random initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = [
    "FeatureInfo",
    "Encoder",
    "build_backbone",
    "available_backbones",
    "register_backbone",
]


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and spatial reduction (stride w.r.t. the input) of one encoder stage output."""

    channels: int
    reduction: int


class Encoder(nn.Module):
    """A backbone split into stages; ``forward(x) -> ([E_1..E_L], G)``.

    ``feature_info`` is measured once at construction with a dry forward pass on a 64x64 input, so it is correct
    for any stage split without hand-kept tables.
    """

    def __init__(self, name: str, stages: list[nn.Module], in_channels: int = 3):
        super().__init__()
        self.name = name
        self.in_channels = in_channels
        self.stages = nn.ModuleList(stages)
        self.feature_info: list[FeatureInfo] = self._probe_feature_info()

    @torch.no_grad()
    def _probe_feature_info(self, size: int = 64) -> list[FeatureInfo]:
        was_training = self.training
        self.eval()
        x = torch.zeros(1, self.in_channels, size, size)
        info = []
        for stage in self.stages:
            x = stage(x)
            info.append(FeatureInfo(channels=int(x.shape[1]), reduction=size // int(x.shape[-1])))
        self.train(was_training)
        return info

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"encoder {self.name!r} expects images of shape (N, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        g = torch.mean(x, dim=(2, 3), keepdim=True)
        return features, g


# --------------------------------------------------------------------------------------------------- weights


def _load_weights(model: nn.Module, weights: str | os.PathLike | None, weights_enum: Callable | None, name: str):
    """Load ``weights`` into the torchvision ``model``; never download."""
    if weights is None:
        return
    path = Path(weights)
    if path.suffix in {".pth", ".pt", ".ckpt", ".bin"} or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}; give an existing .pth state_dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            missing, _ = model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
            raise ValueError(f"weights file {path} does not fit backbone {name!r}: {first[0].strip()}") from None
        # The classifier head is dropped by the encoder, so only its keys may be missing.
        missing = [k for k in missing if not k.startswith(("classifier", "fc."))]
        if missing:
            raise ValueError(
                f"weights file {path} does not fit backbone {name!r}: {len(missing)} missing keys, e.g. {missing[:3]}"
            )
        return
    if weights_enum is None:
        raise ValueError(f"backbone {name!r} has no torchvision weights; give a local state_dict file instead")
    try:
        entry = weights_enum[str(weights)]
    except KeyError:
        known = ", ".join(w.name for w in weights_enum)
        raise ValueError(
            f"unknown weights {weights!r} for backbone {name!r}: give a file path or one of: {known}"
        ) from None
    filename = os.path.basename(entry.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise FileNotFoundError(
            f"weights {weights!r} for {name!r} are not cached at {cached} and nothing is downloaded here: "
            f"copy {filename} (from {entry.url}) there, or pass the path of a local state_dict file"
        )
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))


# --------------------------------------------------------------------------------------------------- builders


def _mobilenet_v2(weights=None, width_mult: float = 1.0, **kwargs) -> Encoder:
    """MobileNetV2 in the paper's 9 stages: 32/s2, 16/s2, 24/s4, 32/s8, 64/s16, 96/s16, 160/s32, 320/s32, 1280/s32."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if weights is not None and width_mult != 1.0 and not Path(str(weights)).exists():
        raise ValueError("torchvision's MobileNetV2 weights exist only for width_mult=1.0; give a local file instead")
    net = mobilenet_v2(weights=None, width_mult=width_mult, **kwargs)
    _load_weights(net, weights, MobileNet_V2_Weights, "mobilenet_v2")
    f = net.features
    groups = [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17], [18]]
    stages = [nn.Sequential(*[f[i] for i in g]) for g in groups]
    return Encoder("mobilenet_v2", stages)


def _resnet(arch: str):
    def build(weights=None, **kwargs) -> Encoder:
        """ResNet split at the stem (s2), layer1 (s4, after the max-pool), layer2..layer4 (s8..s32)."""
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=None, **kwargs)
        enum = getattr(tvm, {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                             "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}[arch])
        _load_weights(net, weights, enum, arch)
        stages = [
            nn.Sequential(net.conv1, net.bn1, net.relu),
            nn.Sequential(net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            net.layer4,
        ]
        return Encoder(arch, stages)

    return build


def _vgg(arch: str):
    def build(weights=None, **kwargs) -> Encoder:
        """VGG split after each of its 5 max-pool layers (s2, s4, s8, s16, s32)."""
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=None, **kwargs)
        enum = getattr(tvm, {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}[arch])
        _load_weights(net, weights, enum, arch)
        stages, current = [], []
        for layer in net.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        return Encoder(arch, stages)

    return build


def _convnet(weights=None, widths: tuple[int, ...] = (16, 32, 64, 96, 128), **kwargs) -> Encoder:
    """A plain VGG-style CNN for CPU demos: per stage conv3x3(stride 2)-BN-ReLU, conv3x3-BN-ReLU.

    Stage i has reduction 2^i. On the small DigitScenes images it learns in minutes on a CPU, where MobileNetV2
    from scratch stayed at chance for 10-19 epochs in our measurements. ``weights`` is a local state_dict of this Encoder (e.g. from
    ``sparsemask pretrain``).
    """
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"convnet widths must be positive integers, got {widths}")

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    stages, cin = [], 3
    for w in widths:
        stages.append(nn.Sequential(*block(cin, w, 2), *block(w, w, 1)))
        cin = w
    encoder = Encoder("convnet", stages)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}; run `sparsemask pretrain` first")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            encoder.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"weights file {path} does not fit convnet{widths}: {str(err).splitlines()[0]}") from None
    return encoder


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_backbone(name: str, builder: Callable[..., Encoder]) -> None:
    """Add a backbone builder ``builder(weights=None, **kwargs) -> Encoder`` under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = builder


register_backbone("mobilenet_v2", _mobilenet_v2)
register_backbone("convnet", _convnet)
for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_backbone(_arch, _resnet(_arch))
for _arch in ("vgg16", "vgg16_bn"):
    register_backbone(_arch, _vgg(_arch))


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _encoder_state(weights: str | os.PathLike | None) -> dict | None:
    """The ``state_dict`` of an :class:`Encoder` itself (keys ``stages.*``, as ``sparsemask pretrain`` saves it) in
    the local file ``weights``; None for anything else (a torchvision model's own keys, a weights name)."""
    if weights is None or not Path(weights).is_file():
        return None
    state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state and all(str(k).startswith("stages.") for k in state):
        return state
    return None


def build_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs) -> Encoder:
    """Build the registered encoder ``name`` (e.g. ``build_backbone("mobilenet_v2", width_mult=0.25)``).

    ``weights``: a torchvision weights name, a local file of the torchvision model's ``state_dict``, or a local file
    of the encoder's own ``state_dict`` (``sparsemask pretrain`` writes these)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(available_backbones())}")
    own = _encoder_state(weights)
    try:
        encoder = _REGISTRY[name](weights=None if own is not None else weights, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments {sorted(kwargs)} for backbone {name!r}: {err}") from None
    if own is not None:
        try:
            encoder.load_state_dict(own)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
            raise ValueError(f"weights file {weights} does not fit backbone {name!r} {kwargs}: "
                             f"{first[0].strip()}") from None
    return encoder
