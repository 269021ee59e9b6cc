"""Small shared builders for the tests (tiny shapes so the suite runs in minutes on 2 CPU cores)."""
import torch
from torch import nn

from nni_sparsemask.fdn.backbones import FeatureInfo

TINY = {"backbone": "mobilenet_v2", "backbone_kwargs": {"width_mult": 0.25}}

# MobileNetV2's nine stages (channels at width 1.0, reductions).
MNV2_INFO = [FeatureInfo(c, r) for c, r in
             [(32, 2), (16, 2), (24, 4), (32, 8), (64, 16), (96, 16), (160, 32), (320, 32), (1280, 32)]]
RESNET_INFO = [FeatureInfo(c, r) for c, r in [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]]


def small_info(reductions=(2, 4, 8, 16), channels=(4, 6, 8, 10)):
    return [FeatureInfo(c, r) for c, r in zip(channels, reductions)]


#: trial settings of the comparison tests: 32x32 scenes, a 5-stage convnet 4-8 channels wide, one epoch, no pre-training
TRIAL_TINY = {"data": {"image_size": 32, "train_scenes": 16, "val_scenes": 8, "batch_size": 8},
              "model": {"backbone": "convnet", "backbone_kwargs": {"widths": [4, 8, 8, 8, 8]},
                        "backbone_weights": None, "decoder_channels": 8},
              "search_epochs": 1, "retrain_epochs": 1, "fps_size": 32, "fps_seconds": 0.2, "accelerator": "cpu"}


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN running statistics and affine parameters (eval mode), so that a BN that is skipped or folded
    wrongly cannot pass a comparison of outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()
