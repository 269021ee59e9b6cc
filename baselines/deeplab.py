"""DeepLabV3 with a MobileNetV2 encoder ("mobile DeepLabV3"), the hand-designed baseline of Table 1.

Architecture (Chen et al. 2017, with the MobileNetV2 encoder of Sandler et al. 2018):

* encoder: MobileNetV2 (the project's 9-stage :class:`~nni_sparsemask.fdn.backbones.Encoder`, the same stages and
  weights as the FDN's) at output stride 16: the last stride-2 convolution (the depthwise 3x3 of
  ``features[14]``, the s16 -> s32 step) gets stride 1, and it and every later 3x3 convolution get dilation 2
  (padding 2), as torchvision's dilated MobileNetV3 does. ``output_stride=8`` also de-strides the s8 -> s16 step
  (dilation 2 from there on, 4 after s16 -> s32). 1x1 convolutions are untouched, so the weights stay compatible
  with the plain MobileNetV2 (``backbone_weights`` loads the same files);
* the head on the deepest encoder feature ``E_L`` (1280 channels at width 1.0), one of two:

  - ``head="mobile"`` (default), the mobile DeepLabV3 of the MobileNetV2 paper (Sandler et al. 2018, section
    6.3: ASPP without its atrous branches) as SparseMask's Table 1 counts it: the 1x1 branch (1x1 conv -> BN ->
    ReLU) and the image-pooling branch (global average pool -> 1x1 conv -> BN -> ReLU, broadcast back), each
    with ``aspp_channels`` (256) outputs; their concatenation (512 channels) -> dropout -> the classifier. At
    width 1.0 with 21 classes this is 667,157 decoder parameters, Table 1's "2.22+0.67M" (2 x (1280 x 256 +
    512 BN) + 512 x 21 + 21). There is no projection after the concatenation: one 512 -> 256 (+ BN, as TF
    DeepLab's ``concat_projection``) would make it 793,365 (0.79M), not the paper's count;
  - ``head="aspp"``, the full ASPP of DeepLabV3: the 1x1 branch, three 3x3 atrous branches (rates 6/12/18 at
    output stride 16, doubled at 8) and the image-pooling branch, concatenation -> 1x1 projection -> BN -> ReLU
    -> dropout (9.84M decoder parameters at width 1.0, 256 channels, 21 classes);
* a 1x1 classifier and bilinear upsampling of the logits to the input size (any size, e.g. 50x70).

``model.encoder`` is the backbone (for the encoder/decoder parameter split and the 10x decoder learning rate of
:mod:`nni_sparsemask.run.lightning`); everything else (the head + classifier) is the decoder. The image-pooling
branch has BN on a 1x1 map, so training needs batch size >= 2 (a clear ``ValueError`` otherwise, as for the FDN's
G edges).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nni_sparsemask.fdn.backbones import Encoder, build_backbone

__all__ = ["DeepLabV3", "ASPP", "dilate_encoder", "SUPPORTED_BACKBONES", "HEADS"]

SUPPORTED_BACKBONES = ("mobilenet_v2",)
HEADS = ("mobile", "aspp")
_DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def dilate_encoder(encoder: Encoder, output_stride: int) -> Encoder:
    """Replace strides past ``output_stride`` by dilation, in place on the convolutions; returns a re-probed Encoder.

    Walks the 3x3 convolutions in forward order (the module order of MobileNetV2). A stride-2 convolution that
    would take the running stride past ``output_stride`` gets stride 1 and the rate doubles; from then on every
    3x3 convolution (that one included) has dilation = padding = rate. The returned encoder shares the modules
    and reports the new reductions in ``feature_info``.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    stride, rate = 1, 1
    for module in encoder.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        k = module.kernel_size[0]
        if module.stride[0] == 2:
            if stride >= output_stride:
                module.stride = (1, 1)
                rate *= 2
            else:
                stride *= 2
        if k > 1 and rate > 1:
            module.dilation = (rate, rate)
            module.padding = (rate * (k - 1) // 2, rate * (k - 1) // 2)
    dilated = Encoder(f"{encoder.name}_os{output_stride}", list(encoder.stages), encoder.in_channels)
    reached = dilated.feature_info[-1].reduction
    if reached != output_stride:
        raise ValueError(f"encoder {encoder.name!r} reaches output stride {reached}, not {output_stride}")
    return dilated


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1):
        pad = dilation * (kernel - 1) // 2
        super().__init__(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ImagePooling(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            raise ValueError("batch size 1 in training: the image-pooling branch of ASPP has BN on a 1x1 feature and "
                             "needs at least 2 values per channel; train DeepLabV3 with batch size >= 2")
        pooled = self.conv(torch.mean(x, dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, one 3x3 per rate, image pooling; concat -> 1x1 -> BN -> ReLU -> dropout.

    ``rates=()`` and ``project=False`` is the mobile head: the 1x1 and image-pooling branches, concat -> dropout
    (``self.project`` is then the dropout alone). ``out_channels`` after construction is what the classifier reads:
    the branches' channels with the projection, their concatenation without it.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.1, project: bool = True):
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"aspp_channels must be an integer >= 1, got {out_channels!r}")
        rates = tuple(rates)
        if any(not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"atrous rates must be positive integers, got {rates!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.rates = rates
        self.branches = nn.ModuleList([_ConvBNReLU(in_channels, out_channels, 1)]
                                      + [_ConvBNReLU(in_channels, out_channels, 3, r) for r in rates]
                                      + [_ImagePooling(in_channels, out_channels)])
        concat = len(self.branches) * out_channels
        if project:
            self.project = nn.Sequential(_ConvBNReLU(concat, out_channels, 1), nn.Dropout(dropout))
        else:  # the mobile head: no projection, dropout on the concatenation
            self.project = nn.Dropout(dropout)
        self.out_channels = out_channels if project else concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3(nn.Module):
    """Mobile DeepLabV3: dilated MobileNetV2 (output stride 16) + head + 1x1 classifier; see the module docstring.

    Parameters
    ----------
    backbone: ``"mobilenet_v2"`` (the only encoder whose dilation is set up here).
    num_classes: classes of the 1x1 classifier.
    output_stride: 16 (default, as the mobile DeepLabV3) or 8 (or 32: no dilation).
    aspp_channels: channels of every ASPP branch and of the projection (256 in the paper; smaller for tests).
    atrous_rates: the 3x3 branches' rates (``head="aspp"`` only); default (6, 12, 18) at output stride 16,
        (12, 24, 36) at 8, (3, 6, 9) at 32.
    dropout: after the ASPP projection (``"aspp"``), on the branches' concatenation (``"mobile"``).
    backbone_weights: as for :func:`~nni_sparsemask.fdn.backbones.build_backbone` (a local file or a cached name).
    backbone_kwargs: e.g. ``{"width_mult": 0.25}``.
    head: ``"mobile"`` (default: the 1x1 and image-pooling branches, Table 1's 0.67M decoder) or ``"aspp"`` (the
        full ASPP with the atrous branches and the projection).

    ``forward(x)`` returns logits ``(N, num_classes, H, W)`` at the input size.
    """

    def __init__(self, backbone: str = "mobilenet_v2", num_classes: int = 21, output_stride: int = 16,
                 aspp_channels: int = 256, atrous_rates: Sequence[int] | None = None, dropout: float = 0.1,
                 backbone_weights: str | os.PathLike | None = None, backbone_kwargs: dict[str, Any] | None = None,
                 head: str = "mobile"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"DeepLabV3 head must be one of {', '.join(HEADS)}, got {head!r}")
        if backbone not in SUPPORTED_BACKBONES:
            raise ValueError(f"DeepLabV3 supports backbone(s) {', '.join(SUPPORTED_BACKBONES)}, got {backbone!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if head == "mobile":
            if atrous_rates is not None:
                raise ValueError(f"atrous_rates apply to head='aspp' only; the mobile head has no atrous branches, "
                                 f"got {atrous_rates!r}")
            atrous_rates = ()
        elif atrous_rates is None:
            atrous_rates = _DEFAULT_RATES.get(output_stride, (3, 6, 9))
        elif not tuple(atrous_rates):
            raise ValueError("atrous_rates must not be empty with head='aspp' (head='mobile' has none)")
        self.head = head
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.num_classes = num_classes
        self.output_stride = output_stride
        plain = build_backbone(backbone, weights=backbone_weights, **self.backbone_kwargs)
        self.encoder = dilate_encoder(plain, output_stride)
        self.aspp = ASPP(self.encoder.feature_info[-1].channels, aspp_channels, atrous_rates, dropout,
                         project=head == "aspp")
        self.classifier = nn.Conv2d(self.aspp.out_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        features, _ = self.encoder(x)
        logits = self.classifier(self.aspp(features[-1]))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
