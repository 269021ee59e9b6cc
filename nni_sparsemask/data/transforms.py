"""Paired image / mask transforms for semantic segmentation (SparseMask section 4.1, DeepLab protocol).

Every transform is a callable ``transform(image, target) -> (image, target)``; they compose with
:class:`Compose`. Inputs may be PIL images, numpy arrays or tensors; :class:`ToTensor` (the first step of
the ready-made pipelines) turns them into ``(FloatTensor 3xHxW in [0, 1], LongTensor HxW)`` and every later
step keeps that form.

Training (:func:`train_transform`): to tensor -> ImageNet normalisation -> random scale in [0.5, 2.0]
(bilinear for the image, nearest for the mask) -> left-right flip with p = 0.5 -> pad (image with 0, which
is the mean after normalisation; mask with 255 = ignore) to at least the crop size -> random crop (513 in
the paper). Normalising before the geometric steps is exact: bilinear interpolation is a convex combination
per channel, so it commutes with the per-channel affine ``(x - mean) / std``.

Evaluation (:func:`eval_transform`): to tensor -> normalisation -> optional resize -> optional pad.

Randomness: each random transform takes an optional ``torch.Generator``; ``None`` uses torch's global RNG
(which ``DataLoader`` re-seeds in every worker). A generator passed here is *copied* into each DataLoader
worker, so all workers would draw the same augmentations; use it for reproducible single-process runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

Size = Union[int, Sequence[int]]

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IGNORE_INDEX", "Compose", "ToTensor", "Normalize", "RandomScale",
    "RandomHorizontalFlip", "RandomCrop", "Resize", "PadTo", "train_transform", "eval_transform",
    "to_tensor_pair",
]


def _pair(size: Size, name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        vals = list(size)
        if len(vals) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
        h, w = int(vals[0]), int(vals[1])
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be >= 1 pixel in each dimension, got {size!r}")
    return h, w


def _image_to_tensor(image: Any) -> Tensor:
    if isinstance(image, Tensor):
        t = image
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be (3, H, W) or (1, H, W), got {tuple(t.shape)}")
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if isinstance(image, np.ndarray):
        arr = image
    elif hasattr(image, "convert"):  # PIL image
        arr = np.asarray(image.convert("RGB"))
    else:
        raise ValueError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3) or (H, W), got {arr.shape}")
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # np.array copies: PIL arrays are read-only
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _target_to_tensor(target: Any) -> Tensor:
    if isinstance(target, Tensor):
        t = target
    else:
        if not isinstance(target, np.ndarray):  # PIL: 'P' (palette) and 'L' both give the label indices
            if getattr(target, "mode", None) not in ("P", "L", "I", "I;16"):
                raise ValueError(f"mask image must be an index image (PIL mode 'P' or 'L'), got mode "
                                 f"{getattr(target, 'mode', type(target).__name__)!r}; do not convert it to RGB")
        t = torch.from_numpy(np.array(target, dtype=np.int64))
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError("mask must hold integer class ids, got a floating-point tensor")
    return t.long()


def to_tensor_pair(image: Any, target: Any) -> tuple[Tensor, Tensor]:
    """``(FloatTensor 3xHxW, LongTensor HxW)``; uint8 images are scaled to [0, 1], float ones kept as they are."""
    img = _image_to_tensor(image)
    tgt = _target_to_tensor(target)
    if img.shape[-2:] != tgt.shape:
        raise ValueError(f"image {tuple(img.shape[-2:])} and mask {tuple(tgt.shape)} differ in size")
    return img, tgt


class Compose:
    """Apply paired transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any, Any], tuple[Any, Any]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Any) -> tuple[Any, Any]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


@dataclass
class ToTensor:
    """PIL / numpy / tensor pair -> ``(FloatTensor 3xHxW in [0, 1], LongTensor HxW)``."""

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        return to_tensor_pair(image, target)


@dataclass
class Normalize:
    """``image = (image - mean) / std`` per channel; the mask is untouched."""

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean!r}, {self.std!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std!r}")

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        mean = torch.tensor(self.mean, dtype=img.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype).view(3, 1, 1)
        return (img - mean) / std, tgt


def _resize_pair(img: Tensor, tgt: Tensor, size: tuple[int, int], antialias: bool) -> tuple[Tensor, Tensor]:
    if tuple(img.shape[-2:]) == size:
        return img, tgt
    down = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                        antialias=antialias and down)[0]
    # nearest-exact matches PIL's NEAREST (pixel centres); class ids are exact in float32 (< 2^24)
    tgt = F.interpolate(tgt[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return img, tgt


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass
class RandomScale:
    """Rescale both by ``s ~ U(scale_range)``: new size ``round(H s) x round(W s)`` (at least 1 pixel);
    image bilinear (antialiased when shrinking), mask nearest."""

    scale_range: tuple[float, float] = (0.5, 2.0)
    antialias: bool = True
    generator: Optional[torch.Generator] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range!r}")
        self.scale_range = (lo, hi)

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        s = _uniform(*self.scale_range, self.generator)
        h, w = img.shape[-2:]
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        return _resize_pair(img, tgt, size, self.antialias)


@dataclass
class RandomHorizontalFlip:
    """Flip image and mask left-right together with probability ``p``."""

    p: float = 0.5
    generator: Optional[torch.Generator] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"flip probability p must be in [0, 1], got {self.p}")

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        if float(torch.rand((), generator=self.generator)) < self.p:
            img, tgt = img.flip(-1), tgt.flip(-1)
        return img, tgt


def _pad_pair(img: Tensor, tgt: Tensor, size: tuple[int, int], fill: Union[float, Sequence[float]],
              ignore_index: int) -> tuple[Tensor, Tensor]:
    h, w = img.shape[-2:]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph == 0 and pw == 0:
        return img, tgt
    fill_t = torch.as_tensor(fill, dtype=img.dtype)
    if fill_t.numel() not in (1, img.shape[0]):
        raise ValueError(f"fill must be a scalar or one value per channel, got {fill!r}")
    out = fill_t.reshape(-1, 1, 1).expand(img.shape[0], h + ph, w + pw).clone()
    out[:, :h, :w] = img
    mask = torch.full((h + ph, w + pw), ignore_index, dtype=tgt.dtype)
    mask[:h, :w] = tgt
    return out, mask


@dataclass
class PadTo:
    """Pad bottom/right to at least ``size``: image with ``fill`` (0 = the mean once normalised), mask with
    ``ignore_index`` so padding is never scored. Larger inputs are left as they are."""

    size: Size
    fill: Union[float, Sequence[float]] = 0.0
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        self.size = _pair(self.size, "pad size")

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        return _pad_pair(img, tgt, self.size, self.fill, self.ignore_index)


@dataclass
class RandomCrop:
    """Pad (as :class:`PadTo`) to at least ``size``, then crop a ``size`` window at a uniformly random offset."""

    size: Size
    fill: Union[float, Sequence[float]] = 0.0
    ignore_index: int = IGNORE_INDEX
    generator: Optional[torch.Generator] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.size = _pair(self.size, "crop size")

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        img, tgt = _pad_pair(img, tgt, self.size, self.fill, self.ignore_index)
        ch, cw = self.size
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=self.generator))
        return img[:, top:top + ch, left:left + cw], tgt[top:top + ch, left:left + cw]


@dataclass
class Resize:
    """Resize both to exactly ``size`` = (H, W) or an int for a square; image bilinear, mask nearest."""

    size: Size
    antialias: bool = True

    def __post_init__(self) -> None:
        self.size = _pair(self.size, "resize size")

    def __call__(self, image: Any, target: Any) -> tuple[Tensor, Tensor]:
        img, tgt = to_tensor_pair(image, target)
        return _resize_pair(img, tgt, self.size, self.antialias)


def train_transform(crop_size: Size = 513, scale_range: tuple[float, float] = (0.5, 2.0), flip_p: float = 0.5,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    ignore_index: int = IGNORE_INDEX, generator: Optional[torch.Generator] = None) -> Compose:
    """The paper's training augmentation: normalise, scale ``U(0.5, 2.0)``, flip, pad + crop to ``crop_size``."""
    return Compose([
        ToTensor(),
        Normalize(mean, std),
        RandomScale(scale_range, generator=generator),
        RandomHorizontalFlip(flip_p, generator=generator),
        RandomCrop(crop_size, fill=0.0, ignore_index=ignore_index, generator=generator),
    ])


def eval_transform(resize: Optional[Size] = None, pad_to: Optional[Size] = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   ignore_index: int = IGNORE_INDEX) -> Compose:
    """Evaluation: normalise only, then optionally resize to ``resize`` and pad to ``pad_to``."""
    steps: list = [ToTensor(), Normalize(mean, std)]
    if resize is not None:
        steps.append(Resize(resize))
    if pad_to is not None:
        steps.append(PadTo(pad_to, fill=0.0, ignore_index=ignore_index))
    return Compose(steps)
