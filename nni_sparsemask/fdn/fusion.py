"""One decoder stage of the Fully Dense Network, Eq. 4 of the paper:

    D_l = sum_{t in T_l} w_t * up(bn_t(conv_t(relu6(t))))

Theorems 1 and 2 (supplementary A) make this equal to the naive "upsample every input, concatenate, one 1x1
convolution": a 1x1 convolution over a concatenation is the sum of 1x1 convolutions over the parts, and a 1x1
convolution (pointwise, affine) commutes with bilinear upsampling (a per-pixel convex combination). So each edge
is convolved at its SOURCE resolution and only the C_dec-channel result is upsampled. Upsampling is linear too, so
edges whose sources share a resolution are summed first and upsampled once (:func:`fuse`). The global-pool
feature G is 1x1 and is broadcast, never interpolated.

Each edge is pre-activated with ReLU6 (as the paper's code does), so decoder-to-decoder edges are not linear in the
encoder features. :func:`naive_stage_forward` keeps the upsample -> concat -> conv reference for the equivalence
test and the memory benchmark; it folds eval-mode BN into the convolution. In training mode the two forms differ:
BN statistics are taken at the source resolution in the efficient form and would be taken at the target
resolution after upsampling in a naive form with BN.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EdgeConv", "FusionStage", "fuse", "resize_to", "naive_stage_forward", "fold_bn", "BROADCAST",
           "traced_sizes"]

#: the group key of a 1x1 source that is broadcast, never interpolated (the global-pool feature G)
BROADCAST = None


def traced_sizes(*sides) -> bool:
    """True while a forward is traced for export with the sides symbolic: ``torch.export`` / ``torch.onnx`` give
    ``SymInt`` sides, ``torch.jit.trace`` records them (0-d tensors). A forward then decides nothing from a side's
    value (an ``int()`` or a comparison would bake the traced input's size into the program)."""
    return torch.jit.is_tracing() or not all(isinstance(s, int) for s in sides)


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` (eval-mode ``bn``) for a convolution with ``weight`` and ``bias``:
    ``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``. Differentiable."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, *[1] * (weight.dim() - 1)), (bias - bn.running_mean) * scale + beta


class EdgeConv(nn.Module):
    """One FDN edge before the weighted sum: ReLU6 -> 1x1 conv -> BN (search form) at the source resolution.

    ``bn=False`` gives the final (pruned) form: a 1x1 convolution with bias and no normalisation.
    """

    def __init__(self, in_channels: int, out_channels: int, bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.relu6(x))
        if self.bn is not None:
            if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
                raise ValueError(
                    "batch size 1 in training: the per-edge BN on a 1x1 feature (the global-pool feature G) needs "
                    "at least 2 values per channel; train with batch size >= 2 or build the space with edge_bn=False"
                )
            x = self.bn(x)
        return x


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring ``x`` to spatial ``size``: identity, broadcast for a 1x1 map (G), else bilinear.

    While traced with symbolic sizes (:func:`traced_sizes`) always bilinear, which is exact in the other two cases
    too (bilinear to the same size copies, from 1x1 repeats the value)."""
    h, w = size[0], size[1]
    if traced_sizes(h, w, x.shape[-2], x.shape[-1]):
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    h, w = int(h), int(w)
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    if x.shape[-2] == 1 and x.shape[-1] == 1:
        return x.expand(x.shape[0], x.shape[1], h, w)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def _place(x: torch.Tensor, key: Hashable, target: Hashable, size: Sequence[int]) -> torch.Tensor:
    """A group of ``key`` at ``size``: as it is at the ``target`` key, broadcast (:data:`BROADCAST`), else
    bilinear. Reads no shape, so ``size`` may be symbolic."""
    if key == target:
        return x
    if key is BROADCAST:
        return x.expand(x.shape[0], x.shape[1], size[0], size[1])
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def fuse(tensors: Sequence[torch.Tensor], size: Sequence[int], keys: Sequence[Hashable] | None = None,
         target: Hashable = None) -> torch.Tensor:
    """Sum edge outputs of possibly different resolutions at ``size``, upsampling once per source resolution.

    ``sum_t up(x_t) = sum_r up(sum_{t at resolution r} x_t)`` because bilinear upsampling is linear.
    The resolutions are the tensors' shapes, or, given ``keys`` (one per tensor: its source's encoder reduction,
    :data:`BROADCAST` for G) and the ``target`` key of ``size``, those keys: then no shape is read and ``size``
    may be symbolic (a network traced for export with any height and width, :class:`~nni_sparsemask.fdn.pruned.
    PrunedFDN`). The two agree wherever different resolutions give different shapes.

    The running sum is accumulated in place once it is a tensor made here (an upsampling or a sum), never in a
    tensor passed in: one full-resolution allocation per source resolution instead of two. Safe for autograd,
    since neither upsampling nor addition keeps its output for the backward pass.
    """
    if len(tensors) == 0:
        raise ValueError("a decoder stage needs at least one input")
    if keys is None:  # by shape: the size itself is the target, a 1x1 map elsewhere is G
        target = (int(size[0]), int(size[1]))
        keys = [(int(x.shape[-2]), int(x.shape[-1])) for x in tensors]
        keys = [BROADCAST if k == (1, 1) and k != target else k for k in keys]
    elif len(keys) != len(tensors) or target is BROADCAST:
        raise ValueError(f"fuse with keys needs one per tensor and the target's key (not BROADCAST), got "
                         f"{len(tensors)} tensors, {len(keys)} keys, target {target!r}")
    groups: dict[Hashable, torch.Tensor] = {}
    for key, x in zip(keys, tensors):
        groups[key] = groups[key] + x if key in groups else x
    # start from an upsampled group (a new tensor) so that the sum can grow in place from the first step; a group
    # already at ``size`` (passed through) or the broadcast G (an expanded view) is never written to
    upsampled = [k for k in groups if k != target and k is not BROADCAST]
    first = upsampled[0] if upsampled else next(iter(groups))
    out, owned = _place(groups[first], first, target, size), bool(upsampled)
    for key in groups:
        if key == first:
            continue
        part = _place(groups[key], key, target, size)
        if owned:
            out.add_(part)
        else:
            out, owned = out + part, True
    return out


class FusionStage(nn.Module):
    """A decoder stage with fixed inputs (the pruned network): ``D = fuse([edge_t(x_t)], size)``.

    ``keys`` (one per input) and ``target`` group the inputs by those keys instead of their shapes (:func:`fuse`)
    while the forward is traced for export (:func:`traced_sizes`: the sizes are symbolic, no shape can be read). An
    eager forward groups by shape, which also shares G's broadcast with a source that is 1x1 at this input size:
    the operations the cost tables count (:mod:`nni_sparsemask.fdn.costmodel`). Both give the same output.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, bn: bool = False,
                 keys: Sequence[Hashable] | None = None, target: Hashable = None):
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("a decoder stage needs at least one input")
        if keys is not None and (len(keys) != len(in_channels) or target is BROADCAST):
            raise ValueError(f"a decoder stage with {len(in_channels)} inputs needs as many keys and a target key "
                             f"(not BROADCAST), got {len(keys)} keys, target {target!r}")
        self.edges = nn.ModuleList([EdgeConv(c, out_channels, bn=bn) for c in in_channels])
        self.keys = None if keys is None else list(keys)
        self.target = target

    def forward(self, inputs: list[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        keyed = self.keys is not None and traced_sizes(*size)
        return fuse([edge(x) for edge, x in zip(self.edges, inputs)], size, self.keys if keyed else None, self.target)


def _folded_affine(edge: EdgeConv, weight: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x1 kernel and bias of ``w * bn(conv(.))`` with BN in eval form (:func:`fold_bn`)."""
    kernel = edge.conv.weight[:, :, 0, 0]
    bias = edge.conv.bias if edge.conv.bias is not None else torch.zeros_like(kernel[:, 0])
    if edge.bn is not None:
        kernel, bias = fold_bn(kernel, bias, edge.bn)
    return kernel * weight, bias * weight


def naive_stage_forward(
    inputs: Sequence[torch.Tensor],
    edges: Sequence[EdgeConv],
    weights: Sequence[float] | torch.Tensor,
    size: Sequence[int],
) -> torch.Tensor:
    """Reference form: ReLU6 each input, upsample ALL of them to ``size``, concatenate, one 1x1 convolution.

    The concatenated kernel is ``[w_t * scale_t * W_t]_t`` and the bias ``sum_t w_t (scale_t (b_t - mean_t) +
    beta_t)``. Valid for BN in eval mode (or no BN): in training mode BN statistics would depend on the resolution.
    """
    if any(e.bn is not None and e.bn.training for e in edges):
        raise ValueError("the naive reference folds BN and needs eval-mode BN: call .eval() first")
    upsampled = [
        F.interpolate(F.relu6(x), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
        for x in inputs
    ]
    parts = [_folded_affine(e, w) for e, w in zip(edges, weights)]
    kernel = torch.cat([k for k, _ in parts], dim=1)
    bias = torch.stack([b for _, b in parts]).sum(0)
    return F.conv2d(torch.cat(upsampled, dim=1), kernel[:, :, None, None], bias)
