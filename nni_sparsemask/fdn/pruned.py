"""The final network of a (pruned) connectivity: a plain ``nn.Module`` with only the live edges.

After pruning, w and the per-edge BN of Eq. 4 are removed (section 3.3): every edge is ReLU6 -> 1x1 conv (with
bias) at the source resolution, and each stage sums its edges with one upsampling per source resolution. No NNI
is needed to run it. Its forward reads no size as a number (sources are grouped by encoder reduction, every size is
a tensor's shape), so ``torch.export``, ``torch.onnx`` and ``torch.jit.trace`` keep height and width symbolic:
``sparsemask export`` (:mod:`nni_sparsemask.measure.export`) writes it for any input size.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from nni_sparsemask.fdn.backbones import Encoder, build_backbone
from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.fdn.fusion import BROADCAST, FusionStage
from nni_sparsemask.fdn.space import SegmentationHead, check_model_args

__all__ = ["PrunedFDN", "build_pruned", "decoder_parameter_count"]


class PrunedFDN(nn.Module):
    """Encoder + the live decoder stages of ``connectivity`` + head; ``forward(x) -> logits at the input size``."""

    def __init__(self, encoder: Encoder, connectivity: Connectivity, num_classes: int, decoder_channels: int = 64,
                 edge_bn: bool = False):
        super().__init__()
        check_model_args(num_classes, decoder_channels)
        if [(f.channels, f.reduction) for f in encoder.feature_info] != \
                [(f.channels, f.reduction) for f in connectivity.feature_info]:
            raise ValueError(
                f"connectivity was made for backbone {connectivity.backbone!r} "
                f"{connectivity.backbone_kwargs or ''} with stages "
                f"{[(f.channels, f.reduction) for f in connectivity.feature_info]}, but the encoder "
                f"{encoder.name!r} has {[(f.channels, f.reduction) for f in encoder.feature_info]}; "
                f"use conn.transfer({encoder.name!r}) to move it to this backbone"
            )
        self.encoder = encoder
        self.connectivity = connectivity
        self.num_classes = num_classes
        self.decoder_channels = decoder_channels
        channels = {f"E{i}": f.channels for i, f in enumerate(encoder.feature_info, start=1)}
        channels["G"] = encoder.feature_info[-1].channels
        # sources grouped by resolution (fusion.fuse) by their encoder reduction: E_l and D_l have E_l's, G none
        reduction = {f"E{i}": f.reduction for i, f in enumerate(encoder.feature_info, start=1)}
        reduction.update({f"D{i}": r for i, r in enumerate(list(reduction.values()), start=1)})
        reduction["G"] = BROADCAST
        self.stage_names = connectivity.stages()
        self.stage_inputs = {s: connectivity.inputs(s) for s in self.stage_names}
        self.decoder = nn.ModuleDict()
        for s in self.stage_names:
            in_ch = [channels.get(src, decoder_channels) for src in self.stage_inputs[s]]
            self.decoder[s] = FusionStage(in_ch, decoder_channels, bn=edge_bn,
                                          keys=[reduction[src] for src in self.stage_inputs[s]], target=reduction[s])
        self.output = connectivity.output
        self.head = SegmentationHead(decoder_channels, num_classes)

    #: the forward reads no size as a number: traced for export, its sizes stay symbolic (any height and width;
    #: read by :func:`nni_sparsemask.measure.export.export_form`)
    symbolic_sizes = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, g = self.encoder(x)
        outputs = {f"E{i}": f for i, f in enumerate(features, start=1)}
        outputs["G"] = g
        for s in self.stage_names:
            target = features[int(s[1:]) - 1].shape[-2:]
            outputs[s] = self.decoder[s]([outputs[src] for src in self.stage_inputs[s]], target)
        return self.head(outputs[self.output], x.shape[-2:])


def build_pruned(
    connectivity: Connectivity,
    num_classes: int,
    decoder_channels: int = 64,
    backbone_weights: str | os.PathLike | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    encoder: Encoder | None = None,
) -> PrunedFDN:
    """Build the final network of ``connectivity`` (prune it first: every edge given here is built).

    The encoder is built from ``connectivity.backbone`` (and its ``backbone_kwargs`` unless overridden) or passed
    in ready-made, e.g. a pre-trained one; a mismatch with the connectivity's stages is a ``ValueError``.
    """
    if not isinstance(connectivity, Connectivity):
        raise ValueError(f"build_pruned needs a Connectivity, got {type(connectivity).__name__}")
    if encoder is None:
        kwargs = dict(connectivity.backbone_kwargs if backbone_kwargs is None else backbone_kwargs)
        encoder = build_backbone(connectivity.backbone, weights=backbone_weights, **kwargs)
    return PrunedFDN(encoder, connectivity, num_classes, decoder_channels)


def decoder_parameter_count(connectivity: Connectivity, num_classes: int, decoder_channels: int = 64) -> int:
    """Parameters of the pruned decoder + head by formula: each edge C_src*C + C, the head C*K + K."""
    c = decoder_channels
    channels = {f"E{i}": f.channels for i, f in enumerate(connectivity.feature_info, start=1)}
    channels["G"] = connectivity.feature_info[-1].channels
    stages = set(connectivity.stages())
    total = sum(channels.get(e.source, c) * c + c for e in connectivity.edges if e.target in stages)
    return total + c * num_classes + num_classes
