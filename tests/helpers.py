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


# ---------------------------------------------------------------- real data sets, tiny, in their layouts
import numpy as np
import scipy.io
from PIL import Image

H, W = 24, 32


def _jpg(path, seed, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=95)


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(path)


def _ade_label(i):
    lab = np.zeros((H, W), np.uint8)  # 0 = other
    lab[:, 8:] = 1 + i  # wall (1) / building (2)
    lab[10:, 20:] = 150  # flag
    return lab


def _saliency_mask(i):
    m = np.zeros((H, W), np.uint8)
    m[4:16, 4 + i:20 + i] = 255
    return m


def _boundaries(n_annot, size=(H, W)):
    """Annotator k marks row 5 (all of them), row 10 (k < 2) and row 15 (k == 0)."""
    maps = np.zeros((n_annot, *size), np.uint8)
    maps[:, 5] = 1
    maps[:2, 10] = 1
    maps[0, 15] = 1
    return maps


def _gt_mat(path, maps, field="Boundaries"):
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = np.empty((1, len(maps)), dtype=object)
    for k, b in enumerate(maps):
        cell[0, k] = {"Segmentation": np.ones(b.shape, np.uint16), field: b.astype(bool)}
    scipy.io.savemat(path, {"groundTruth": cell})

def write_real_fixtures(base):
    """Tiny copies of ADE20K, MSRA-B, DUTS, ECSSD and BSDS500 in their archives' layouts under ``base``; returns
    ``{name: root}`` (``msrab_flat``: MSRA-B without split lists; ``base``)."""
    ade = base / "ade" / "ADEChallengeData2016"
    for split, folder, n in (("train", "training", 3), ("val", "validation", 2)):
        for i in range(n):
            _jpg(ade / "images" / folder / f"ADE_{split}_{i:08d}.jpg", i)
            _png(ade / "annotations" / folder / f"ADE_{split}_{i:08d}.png", _ade_label(i))
    msrab = base / "msrab" / "MSRA-B"
    for i in range(3):
        _jpg(msrab / "image" / f"0_{i}.jpg", i)
        _png(msrab / "annotation" / f"0_{i}.png", _saliency_mask(i))
    (msrab / "train_cvpr2013.txt").write_text("0_0.png\n0_2.png\n")  # the DSS / NLDF lists name the mask
    (msrab / "valid_cvpr2013.txt").write_text("0_1.jpg\n")
    (msrab / "test_cvpr2013.txt").write_text("0_1\n")
    flat = base / "msrab_flat" / "MSRA-B"
    for i in range(2):
        _jpg(flat / f"1_{i}.jpg", i)
        _png(flat / f"1_{i}.png", _saliency_mask(i))
    duts = base / "duts"
    for part, n in (("DUTS-TR", 3), ("DUTS-TE", 2)):
        for i in range(n):
            _jpg(duts / part / f"{part}-Image" / f"ILSVRC_{i}.jpg", i)
            _png(duts / part / f"{part}-Mask" / f"ILSVRC_{i}.png", _saliency_mask(i))
    ecssd = base / "ecssd" / "ECSSD"
    for i in range(2):
        _jpg(ecssd / "images" / f"{i + 1:04d}.jpg", i)
        _png(ecssd / "ground_truth_mask" / f"{i + 1:04d}.png", _saliency_mask(i))
    bsds = base / "bsds" / "BSR" / "BSDS500" / "data"
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        for i in range(n):
            size = (W, H) if i == 1 else (H, W)  # a portrait image, as BSDS500 has
            _jpg(bsds / "images" / split / f"{split}{i}.jpg", i, size)
            _gt_mat(bsds / "groundTruth" / split / f"{split}{i}.mat", _boundaries(3 + i, size))
    (bsds / "images" / "train" / "Thumbs.db").write_bytes(b"\0")  # the archive has these
    return {"ade20k": base / "ade", "msrab": base / "msrab", "msrab_flat": base / "msrab_flat",
            "duts": base / "duts", "ecssd": base / "ecssd", "bsds500": base / "bsds", "base": base}
