"""The Fully Dense Network (section 3.1) as an NNI model space.

``FDNSpace`` = encoder (E_1..E_L, G) + decoder stages D_L..D_1 + head. Decoder stage D_l has the resolution of
E_l and picks any subset of T_l = [E_l..E_L, D_{l+1}..D_L, G] (see :func:`~nni_sparsemask.fdn.connectivity.candidate_names`
for the order) through one ``InputChoice(n_chosen=None, reduction="none")`` labelled ``D{l}``. The choice returns
the (weighted, in a supernet) list of chosen edge outputs; the stage sums them with :func:`~nni_sparsemask.fdn.fusion.fuse`,
which upsamples once per source resolution (Eq. 4, Theorems 1-2). The head (ReLU6, 1x1 conv to classes, bilinear
upsampling to the input size) reads D_1.

How the space runs:

* raw, unmutated: dense mode (every edge on, w = 1): the FDN super-network itself;
* mutated by :class:`~nni_sparsemask.nas.strategy.SparseMask`: every choice becomes a ``SparseMixedInput`` with w in [0, 1];
* frozen by a multi-trial strategy: only the chosen edges are computed; a stage left without inputs is dead.

For a final network without NNI, per-edge BN or w, use :func:`~nni_sparsemask.fdn.pruned.build_pruned`.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from nni.nas.nn.pytorch import InputChoice, ModelSpace
from nni.nas.nn.pytorch.choice import ChosenInputs
from torch import nn

from nni_sparsemask.fdn.backbones import FeatureInfo, build_backbone
from nni_sparsemask.fdn.connectivity import Connectivity, candidate_names
from nni_sparsemask.fdn.fusion import EdgeConv, fuse, resize_to

__all__ = ["FDNSpace", "SegmentationHead", "check_model_args"]


def check_model_args(num_classes: int, decoder_channels: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(decoder_channels, int) or decoder_channels < 1:
        raise ValueError(f"decoder_channels must be an integer >= 1, got {decoder_channels!r}")


class SegmentationHead(nn.Module):
    """ReLU6 -> 1x1 conv to ``num_classes`` -> bilinear upsampling to the input size."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return resize_to(self.classifier(torch.nn.functional.relu6(x)), size)


class FDNSpace(ModelSpace):
    """The FDN search space over ``backbone``; see the module docstring.

    Parameters
    ----------
    backbone: a registered backbone name (``nni_sparsemask.fdn.backbones.available_backbones()``).
    num_classes: output channels of the head.
    decoder_channels: channels of every decoder stage (C_dec).
    backbone_weights: ``None``, a local state_dict file, or a cached torchvision weights name.
    backbone_kwargs: extra builder arguments, e.g. ``{"width_mult": 0.25}`` for MobileNetV2.
    edge_bn: the per-edge BN of Eq. 4 before w (``False`` for the BN ablation of section 4.4).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        num_classes: int = 21,
        decoder_channels: int = 64,
        backbone_weights: str | os.PathLike | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        edge_bn: bool = True,
    ):
        super().__init__()
        check_model_args(num_classes, decoder_channels)
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.num_classes = num_classes
        self.decoder_channels = decoder_channels
        self.encoder = build_backbone(backbone, weights=backbone_weights, **self.backbone_kwargs)
        info = self.encoder.feature_info
        L = len(info)
        self.num_stages = L
        channels = {f"E{i}": fi.channels for i, fi in enumerate(info, start=1)}
        channels.update({f"D{i}": decoder_channels for i in range(1, L + 1)})
        channels["G"] = info[-1].channels
        self.edges = nn.ModuleDict()
        self.choices = nn.ModuleDict()
        for l in range(L, 0, -1):
            label = f"D{l}"
            names = candidate_names(l, L)
            self.edges[label] = nn.ModuleList([EdgeConv(channels[n], decoder_channels, bn=edge_bn) for n in names])
            self.choices[label] = InputChoice(len(names), n_chosen=None, reduction="none", label=label)
        self.head = SegmentationHead(decoder_channels, num_classes)

    # ------------------------------------------------------------------------------------------- structure
    @property
    def feature_info(self) -> list[FeatureInfo]:
        return list(self.encoder.feature_info)

    def labels(self) -> list[str]:
        """The InputChoice labels, deepest stage first: ``["D9", ..., "D1"]`` for MobileNetV2."""
        return [f"D{l}" for l in range(self.num_stages, 0, -1)]

    def candidates(self, label: str) -> list[str]:
        """Candidate names of ``label`` in InputChoice order, e.g. ``candidates("D8") == ["E8", "E9", "D9", "G"]``."""
        if label not in self.choices:
            raise ValueError(f"unknown decoder stage {label!r}; stages are {', '.join(self.labels())}")
        return candidate_names(int(label[1:]), self.num_stages)

    def connectivity_from_weights(
        self,
        weights: dict[str, list[float]],
        threshold: float | None = None,
        history: list[dict[str, list[float]]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Connectivity:
        """A :class:`Connectivity` from searched weights ``{label: [w over T_l]}``; pruned at ``threshold`` if given."""
        conn = Connectivity.from_weights(
            self.backbone_name, self.feature_info, weights, history=history,
            backbone_kwargs=dict(self.backbone_kwargs), meta=dict(meta or {}),
        )
        return conn if threshold is None else conn.prune(threshold)

    def dense_connectivity(self) -> Connectivity:
        return Connectivity.dense(self.backbone_name, self.feature_info, backbone_kwargs=dict(self.backbone_kwargs))

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(x.shape[-2]), int(x.shape[-1])]
        features, g = self.encoder(x)
        outputs: dict[str, torch.Tensor | None] = {f"E{i}": f for i, f in enumerate(features, start=1)}
        outputs["G"] = g
        for l in range(self.num_stages, 0, -1):
            label = f"D{l}"
            names = candidate_names(l, self.num_stages)
            choice = self.choices[label]
            edges = self.edges[label]
            if isinstance(choice, ChosenInputs):  # frozen: compute only the chosen, live edges
                wanted = set(choice.chosen)
                cands = [edges[i](outputs[n]) if i in wanted and outputs[n] is not None else None
                         for i, n in enumerate(names)]
                chosen = [c for c in choice(cands) if c is not None]
            else:
                cands = [edge(outputs[n]) for edge, n in zip(edges, names)]
                # raw InputChoice = dense mode (every edge, w = 1); a supernet module returns the weighted list
                chosen = cands if type(choice) is InputChoice else choice(cands)
            target = features[l - 1].shape[-2:]
            outputs[label] = fuse(chosen, target) if len(chosen) > 0 else None
        if outputs["D1"] is None:
            raise RuntimeError("decoder stage D1 has no live input in this architecture: nothing reaches the head")
        return self.head(outputs["D1"], size)
