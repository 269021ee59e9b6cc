"""Peer decoders from segmentation_models_pytorch (smp) on this project's encoders: U-Net, FPN, DeepLabV3+, PAN and
Linknet, each as a full network (encoder + smp decoder + smp segmentation head, logits at the input size).

smp decoders read a list of features, one per stride ``1`` (the input itself), ``2, 4, 8, 16, 32``, with
``encoder_channels`` their channels. :func:`select_stages` maps an :class:`~nni_sparsemask.fdn.backbones.Encoder`
onto that list: for each stride a decoder needs, the DEEPEST encoder stage at that reduction (MobileNetV2's 1280
channels at stride 32, not the 320 before its last 1x1, and 96 at 16; convnet's stage i at 2^i). A backbone whose
strides do not give what a decoder needs is a ``ValueError`` naming the missing strides. Strides a decoder never
reads are ``None`` in the list (channels 0).

What each decoder reads (encoder depth 5, smp's defaults otherwise; ``decoder_channels`` sets the width):

* ``unet``: strides 2..32, blocks of (c, c/2, c/4, c/8, c/16) channels, c = 256; output at stride 1;
* ``fpn``: strides 4..32, pyramid c = 256 and segmentation c/2 channels (rounded up to a multiple of 32, and 64
  at least: its GroupNorm has 32 groups, each of which needs two values on a 1x1 map), merge by sum; output at
  stride 4;
* ``deeplabv3plus``: strides 4 and 32: separable ASPP (rates 12, 24, 36) of c = 256 channels on the stride-32
  feature, upsampled x8 (smp dilates its encoders to stride 16 and upsamples x4; here every decoder shares the
  same undilated encoder), fused with 48 channels from stride 4; output at stride 4;
* ``pan``: strides 4..32: feature pyramid attention on stride 32, global attention upsampling to 16, 8, 4;
  c = 32; output at stride 4. The pyramid attention max-pools its input three times and needs sides of 8 at
  least: a smaller deep feature (inputs under 256 px) is resized up to 8 before it, and the attention upsampling
  resizes back to stride 16 (nothing changes from 256 px on);
* ``linknet``: strides 2..32, five transposed-convolution blocks, c = 32 before the head; output at stride 1.
  Each block narrows its input to a quarter of its channels: on an encoder with few channels at stride 2 (16 for
  the DigitScenes convnet: 4 channels) the network finds objects but can hardly tell the classes apart.

A network that narrows to fewer than half as many channels as it has classes somewhere on its way to the head
(:func:`narrowest_channels`) warns when it is built (``UserWarning``) with what to change. Half, not all: smp's
U-Net passes 16 channels for VOC's 21 classes and is used that way widely; Linknet's 4 channels for
DigitScenes' 11 classes ended at 10.2 mIoU with a foreground IoU of 0.75 (it found the digits, not which).

The segmentation head is smp's (3x3 convolution for U-Net and PAN, 1x1 for the others, as smp's models), followed
by one bilinear resize to the input size where the output is at stride 4. Inputs of any size work: one whose
sides are not multiples of the deepest stride is zero-padded (bottom and right) to them and the logits are
cropped back (smp's decoders add features of adjacent strides, so they need exact multiples). While traced for
export (``sparsemask export``, :mod:`nni_sparsemask.measure.export`) the forward branches on no size: it always
pads (maybe by 0), crops by a negative pad and takes PAN's ``max(8, side)`` symbolically, so that one exported
file (ONNX, TorchScript, ExportedProgram) is right at every height and width.

``network.encoder`` is the backbone: everything else (smp decoder + head) is the decoder, for the parameter split
of :mod:`nni_sparsemask.measure.params` and the decoder learning rate of training. smp is an optional dependency
(``pip install 'nni-sparsemask[peers]'``), imported when a network is built.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nni_sparsemask.fdn.backbones import Encoder, FeatureInfo, build_backbone
from nni_sparsemask.fdn.fusion import traced_sizes

__all__ = ["PEERS", "STRIDES", "DEFAULT_CHANNELS", "SMPNetwork", "build_smp_network", "select_stages",
           "check_backbone", "require_smp", "narrowest_channels"]

#: smp's stride list (index i: stride 2^i, index 0 the input itself)
SMP_STRIDES = (1, 2, 4, 8, 16, 32)
#: peer -> the encoder strides its decoder reads (besides the input)
STRIDES = {"unet": (2, 4, 8, 16, 32), "fpn": (4, 8, 16, 32), "deeplabv3plus": (4, 32), "pan": (4, 8, 16, 32),
           "linknet": (2, 4, 8, 16, 32)}
PEERS = tuple(STRIDES)
#: peer -> the stride of its head's output (resized to the input size when not 1)
OUTPUT_STRIDE = {"unet": 1, "fpn": 4, "deeplabv3plus": 4, "pan": 4, "linknet": 1}
#: smp's default width of each decoder (``decoder_channels`` None)
DEFAULT_CHANNELS = {"unet": 256, "fpn": 256, "deeplabv3plus": 256, "pan": 32, "linknet": 32}
LABELS = {"unet": "U-Net (smp)", "fpn": "FPN (smp)", "deeplabv3plus": "DeepLabV3+ (smp)", "pan": "PAN (smp)",
          "linknet": "Linknet (smp)"}


def require_smp():
    """The ``segmentation_models_pytorch`` module, or an ImportError saying how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise ImportError(f"the smp peer decoders need segmentation-models-pytorch ({err}): "
                          "pip install 'nni-sparsemask[peers]'") from None
    return smp


def _check_peer(peer: str) -> str:
    if peer not in STRIDES:
        raise ValueError(f"unknown smp peer decoder {peer!r}; known: {', '.join(PEERS)}")
    return peer


def select_stages(feature_info: Sequence[FeatureInfo], peer: str, backbone: str = "the backbone"
                  ) -> list[int | None]:
    """For each of smp's strides 2..32, the index of the deepest encoder stage at that reduction if ``peer``
    reads it, else None (5 entries). A stride ``peer`` needs that no stage has is a ``ValueError`` naming it."""
    needed = STRIDES[_check_peer(peer)]
    deepest = {info.reduction: i for i, info in enumerate(feature_info)}  # later stages overwrite earlier ones
    missing = [s for s in needed if s not in deepest]
    if missing:
        have = ", ".join(str(s) for s in sorted(deepest)) or "none"
        raise ValueError(f"decoder smp-{peer} needs encoder features at stride(s) {', '.join(map(str, missing))} "
                         f"(it reads strides {', '.join(map(str, needed))}); {backbone} has stages at stride(s) "
                         f"{have}: use a backbone with a stage at each of them")
    return [deepest[s] if s in needed else None for s in SMP_STRIDES[1:]]


def check_backbone(peer: str, backbone: str, feature_info: Sequence[FeatureInfo]) -> None:
    """Refuse a backbone without the strides ``peer`` reads, and a missing smp (before anything is trained)."""
    select_stages(feature_info, peer, f"backbone {backbone!r}")
    require_smp()


def narrowest_channels(peer: str, channels: Sequence[int], c: int) -> tuple[int, str]:
    """``(width, where)``: the fewest channels every pixel's features pass through in ``peer``'s decoder, on an
    encoder with smp's 6-entry ``channels`` and decoder width ``c`` (stride-1 input first; 0 for strides it does
    not read): U-Net's last block (c/16), FPN's pyramid and segmentation widths, DeepLabV3+'s ASPP and its 48
    stride-4 channels, PAN's c, Linknet's blocks (a quarter of each block's input) and its c before the head."""
    _check_peer(peer)
    if peer == "unet":
        return max(1, c // 16), f"its last block (c/16, c = {c})"
    if peer == "fpn":
        seg = 32 * max(2, -(-c // 64))
        return min(c, seg), f"its pyramid ({c}) and segmentation ({seg}) channels"
    if peer == "deeplabv3plus":
        return min(c, 48), f"its ASPP ({c}) and stride-4 projection (48) channels"
    if peer == "pan":
        return c, f"its width (c = {c})"
    ins = list(reversed(channels[1:]))  # block inputs, deepest first (smp's LinknetDecoder)
    ins = [ch or ins[i - 1] for i, ch in enumerate(ins)]
    width, i = min((ch // 4, i) for i, ch in enumerate(ins))
    if c < width:
        return c, f"its {c} channels before the head"
    return width, (f"its block {i + 1} of 5, which takes the stride-{2 ** (5 - i)} features' {ins[i]} channels to "
                   f"a quarter")


class _FitPyramid(nn.Module):
    """PAN's feature pyramid attention on a deep feature resized, if needed, to sides of 8 at least."""

    def __init__(self, fpa: nn.Module):
        super().__init__()
        self.fpa = fpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if traced_sizes(h, w):  # traced for export: sides max(8, side) without a branch on them
            fit = [s.clamp(min=8) if isinstance(s, torch.Tensor) else torch.sym_max(8, s) for s in (h, w)]
            return self.fpa(F.interpolate(x, size=fit, mode="bilinear", align_corners=False))  # same size: a copy
        fit = (max(8, h), max(8, w))
        if fit != (h, w):
            x = F.interpolate(x, size=fit, mode="bilinear", align_corners=False)
        return self.fpa(x)


def _decoder(peer: str, channels: list[int], c: int, deep_stride: int) -> tuple[nn.Module, int, int]:
    """The smp decoder of ``peer`` on ``channels`` (smp's 6-entry list): ``(decoder, out_channels, head kernel)``."""
    if peer == "unet":
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
        widths = [max(1, c // 2 ** i) for i in range(5)]
        return UnetDecoder(encoder_channels=channels, decoder_channels=widths, n_blocks=5), widths[-1], 3
    if peer == "fpn":
        from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
        dec = FPNDecoder(encoder_channels=channels, encoder_depth=5, pyramid_channels=c,
                         segmentation_channels=32 * max(2, -(-c // 64)))
        return dec, dec.out_channels, 1
    if peer == "deeplabv3plus":
        from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
        dec = DeepLabV3PlusDecoder(encoder_channels=channels, encoder_depth=5, out_channels=c,
                                   atrous_rates=(12, 24, 36), output_stride=16, aspp_separable=True, aspp_dropout=0.5)
        dec.up = nn.Upsample(mode="bilinear", scale_factor=deep_stride // 4, align_corners=True)
        return dec, c, 1
    if peer == "pan":
        from segmentation_models_pytorch.decoders.pan.decoder import PANDecoder
        dec = PANDecoder(encoder_channels=channels, encoder_depth=5, decoder_channels=c)
        dec.fpa = _FitPyramid(dec.fpa)
        return dec, c, 3
    from segmentation_models_pytorch.decoders.linknet.decoder import LinknetDecoder
    return LinknetDecoder(encoder_channels=channels, prefinal_channels=c, n_blocks=5), c, 1


class SMPNetwork(nn.Module):
    """This project's ``encoder`` + smp's ``peer`` decoder + smp's segmentation head; see the module docstring.

    ``forward(x)`` returns logits ``(N, num_classes, H, W)`` at the input size. It branches on no side while traced
    (``symbolic_sizes``): ``sparsemask export`` writes the network as it is (BN folded), for any height and width.
    """

    #: the forward keeps every size symbolic under tracing (read by :func:`nni_sparsemask.measure.export.export_form`)
    symbolic_sizes = True

    def __init__(self, peer: str, encoder: Encoder, num_classes: int = 21, decoder_channels: int | None = None):
        super().__init__()
        require_smp()
        _check_peer(peer)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        c = DEFAULT_CHANNELS[peer] if decoder_channels is None else decoder_channels
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"decoder_channels must be an integer >= 1, got {c!r}")
        self.peer, self.decoder_channels = peer, c
        self.encoder = encoder
        self.stage_index = select_stages(encoder.feature_info, peer, f"backbone {encoder.name!r}")
        used = [i for i in self.stage_index if i is not None]
        self.multiple = max(encoder.feature_info[i].reduction for i in used)
        channels = [encoder.in_channels] + [0 if i is None else encoder.feature_info[i].channels
                                            for i in self.stage_index]
        self.decoder, out_channels, kernel = _decoder(peer, channels, c, self.multiple)
        width, where = narrowest_channels(peer, channels, c)
        if 2 * width < num_classes:
            import warnings
            fix = (f"a backbone with at least {4 * -(-num_classes // 2)} channels at stride 2 (Linknet's blocks keep a "
                   "quarter of their input)" if peer == "linknet" and width < c else "a wider decoder (--head-channels)")
            warnings.warn(f"smp-{peer} on backbone {encoder.name!r} narrows to {width} channels ({where}), fewer "
                          f"than half its {num_classes} classes: it may find objects but hardly tell the classes "
                          f"apart; use {fix}", UserWarning, stacklevel=2)
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base import initialization

        self.segmentation_head = SegmentationHead(out_channels, num_classes, kernel_size=kernel, upsampling=1)
        initialization.initialize_decoder(self.decoder)  # as smp's models initialise theirs
        initialization.initialize_head(self.segmentation_head)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        padded = traced_sizes(h, w) or bool(pad_h or pad_w)  # traced for export: always pad (maybe by 0) and crop
        if padded:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features, _ = self.encoder(x)
        logits = self.segmentation_head(self.decoder([x] + [None if i is None else features[i]
                                                            for i in self.stage_index]))
        if OUTPUT_STRIDE[self.peer] != 1:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if not padded:
            return logits
        if traced_sizes(h, w):  # crop by a negative pad: a new tensor, no guard on whether the view is contiguous
            return F.pad(logits, (0, -pad_w, 0, -pad_h))
        return logits[..., :h, :w]


def build_smp_network(peer: str, backbone: str = "mobilenet_v2", num_classes: int = 21,
                      decoder_channels: int | None = None, backbone_kwargs: dict[str, Any] | None = None,
                      backbone_weights: str | os.PathLike | None = None) -> SMPNetwork:
    """Encoder ``backbone`` (with ``backbone_weights``) + smp decoder ``peer`` (:data:`PEERS`) + head."""
    _check_peer(peer)
    require_smp()
    encoder = build_backbone(backbone, weights=backbone_weights, **dict(backbone_kwargs or {}))
    return SMPNetwork(peer, encoder, num_classes, decoder_channels)
