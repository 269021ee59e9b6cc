"""The deployment (inference) form of a trained network: BatchNorm folded into the convolution before it, and the
weights in ``channels_last`` memory format. This is the form FPS is measured in (``fps.measure_fps`` with
``inference=True``, as ``evaluate_network`` and the demo call it).

Why it matters here (measured on the 2-core CPU of the development machine, torch 2.14 / oneDNN 3.12, batch 1):

- A 1x1 convolution 16 -> 32 channels on a 128x128 NCHW map (the E1 edge of every decoder with E1 at 256x256
  input) took 1.84 ms through oneDNN, but 0.13 ms in channels_last (0.18 ms as a plain matrix product): a fixed
  cost, shared by the dense FDN and every searched decoder, larger than the whole decoder of a sparse net.
- Bilinear upsampling of a 32-channel map to 128x128 was several times faster in channels_last, and each decoder
  stage does one upsampling per source resolution, so the decoder's cost scales with its connectivity only in
  this form.

Folding BN (eval mode: ``y = gamma (conv(x) - mean) / sqrt(var + eps) + beta``) into the convolution gives
``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` per output channel; the
output is unchanged up to float rounding (tested). Folded: a ``BatchNorm2d`` right after a ``Conv2d`` in an
``nn.Sequential`` (convnet, MobileNetV2, VGG-BN, ResNet downsample), the ``convN``/``bnN`` pairs of torchvision's
ResNet blocks and the per-edge BN of :class:`~nni_sparsemask.fdn.fusion.EdgeConv`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from nni_sparsemask.fdn.fusion import EdgeConv, fold_bn

__all__ = ["fold_bn", "fold_conv_bn", "fold_batchnorm", "inference_form", "as_measured", "AS_GIVEN", "INFERENCE_FORM"]

#: names of the two forms a network is timed (``metrics.measure_fps``) and counted (``cost.inference_cost``) in
AS_GIVEN = "as given"
INFERENCE_FORM = "BN folded, channels_last"


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"fold_conv_bn needs a Conv2d and a BatchNorm2d, got {type(conv).__name__} and "
                         f"{type(bn).__name__}")
    if bn.num_features != conv.out_channels or bn.running_mean is None:
        raise ValueError(f"cannot fold {bn} (needs running statistics and {conv.out_channels} features) into {conv}")
    weight, bias = fold_bn(conv.weight, conv.bias, bn)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(weight)
    folded.bias.copy_(bias)
    return folded


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every foldable BN of ``module`` (in place; see the module docstring) and return how many were folded.

    The module must be in eval mode: folding uses the running statistics, which a training-mode BN ignores.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (call .eval() first): folding uses the running "
                         "statistics")
    from torchvision.models.resnet import BasicBlock, Bottleneck


    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, EdgeConv) and parent.bn is not None:
            parent.conv = fold_conv_bn(parent.conv, parent.bn)
            parent.bn = None
            folded += 1
        elif isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = parent._modules[a], parent._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    parent._modules[a] = fold_conv_bn(conv, bn)
                    parent._modules[b] = nn.Identity()
                    folded += 1
        elif isinstance(parent, (BasicBlock, Bottleneck)):
            for name, child in list(parent.named_children()):
                if name.startswith("conv") and isinstance(child, nn.Conv2d):
                    bn_name = "bn" + name[len("conv"):]
                    bn = getattr(parent, bn_name, None)
                    if isinstance(bn, nn.BatchNorm2d):
                        setattr(parent, name, fold_conv_bn(child, bn))
                        setattr(parent, bn_name, nn.Identity())
                        folded += 1
    return folded


def inference_form(model: nn.Module, channels_last: bool = True, fold_bn: bool = True) -> nn.Module:
    """A copy of ``model`` for inference: eval mode, BN folded (``fold_bn``), ``channels_last`` weights.

    ``model`` itself is left untouched. Feed the copy ``x.contiguous(memory_format=torch.channels_last)`` for the
    full effect (``measure_fps`` does); NCHW input works too and gives the same output.
    """
    net = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def as_measured(model: nn.Module, x: torch.Tensor, inference: bool) -> tuple[nn.Module, torch.Tensor, str]:
    """The network, the input and the name of their form as FPS is timed and cost is counted: as given, or with
    ``inference`` the deployment form (:func:`inference_form`, ``model`` left untouched) fed ``channels_last``
    input."""
    if not inference:
        return model, x, AS_GIVEN
    return inference_form(model), x.contiguous(memory_format=torch.channels_last), INFERENCE_FORM
