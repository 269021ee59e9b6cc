"""How one DigitScenes scene is drawn: the config, the photo tiles and digit split, the painting, and
``generate_scenes`` (every scene of a split, deterministic in the config). :mod:`.digitscenes` caches the
arrays on disk and serves them as a ``Dataset``; its docstring describes the labels and the split."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DigitScenesConfig", "generate_scenes", "edge_labels", "TASKS", "SPLITS", "NUM_CLASSES", "IGNORE_INDEX",
           "GENERATOR_VERSION"]

IGNORE_INDEX = 255
TASKS = ("segmentation", "saliency", "edges", "classification")
SPLITS = ("train", "val")
#: classes of each view (``classification``: the digit 0..9)
NUM_CLASSES = {"segmentation": 11, "saliency": 2, "edges": 2, "classification": 10}
#: bump when the generator changes, so that old caches are not reused
GENERATOR_VERSION = 1

_MAX_DIGITS = 4
_TILE_GRID = (2, 5)  # rows x columns of tiles per photo
# val tiles (row, column) per photo: in different rows and columns, so both splits see sky and ground
_VAL_TILES = {0: ((0, 1), (1, 3)), 1: ((0, 3), (1, 1))}
_DIGIT_SPLIT_SEED = 20190401  # the digit permutation does not depend on the config seed


@dataclass(frozen=True)
class DigitScenesConfig:
    """What a DigitScenes split is made of. Changing any field gives other scenes (and another cache file).

    Attributes:
        image_size: side of the square scenes in pixels (>= 16).
        num_scenes: scenes in this split.
        split: ``"train"`` or ``"val"`` (disjoint digits and photo tiles).
        seed: seeds the scenes (not the train/val split, which is fixed).
        digits_per_image: ``(min, max)`` digits per scene, within ``1..4``.
        digit_scale: ``(min, max)`` side of a digit as a fraction of ``image_size``, within ``(0, 1]``.
        min_contrast: least max-channel difference in ``[0, 1]`` between a digit's colour and the mean photo
            colour under it (the colour is redrawn, then pushed to the far corner of the RGB cube).
        background_contrast: photo texture kept, in ``[0, 1]`` (0: a flat mean colour, 1: the photo as is).
        crop_scale: ``(min, max)`` side of the photo crop as a fraction of the tile's shorter side.
        soft_border: ``(low, high)`` digit opacities; opacity in ``(low, high)`` is ignore (255), ``>= high``
            the digit.
        max_overlap: largest fraction of a new digit's box that may cover earlier digits' boxes (placement
            is redrawn up to 20 times, then the last draw is kept and paint order decides).
        val_fraction: share of digits that are val digits.
    """

    image_size: int = 64
    num_scenes: int = 2000
    split: str = "train"
    seed: int = 0
    digits_per_image: tuple[int, int] = (1, 4)
    digit_scale: tuple[float, float] = (0.35, 0.6)
    min_contrast: float = 0.5
    background_contrast: float = 0.7
    crop_scale: tuple[float, float] = (0.6, 1.0)
    soft_border: tuple[float, float] = (0.25, 0.5)
    max_overlap: float = 0.15
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        # tuples from JSON / nni.trace arrive as lists: normalise so that hashing and equality are stable
        for name in ("digits_per_image", "digit_scale", "crop_scale", "soft_border"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"DigitScenesConfig.{name} must be a (min, max) pair, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the accepted range."""
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 16:
            raise ValueError(f"DigitScenesConfig.image_size must be an int >= 16 (digits are 8x8 and upscaled), "
                             f"got {self.image_size!r}")
        if not isinstance(self.num_scenes, (int, np.integer)) or self.num_scenes < 1:
            raise ValueError(f"DigitScenesConfig.num_scenes must be a positive int, got {self.num_scenes!r}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown DigitScenes split {self.split!r}; use one of {SPLITS}")
        lo, hi = self.digits_per_image
        if not (1 <= lo <= hi <= _MAX_DIGITS):
            raise ValueError(f"DigitScenesConfig.digits_per_image must be (min, max) with "
                             f"1 <= min <= max <= {_MAX_DIGITS}, got {self.digits_per_image!r}")
        lo, hi = self.digit_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"DigitScenesConfig.digit_scale must be (min, max) with 0 < min <= max <= 1 "
                             f"(fraction of image_size), got {self.digit_scale!r}")
        if min(self.digit_scale) * self.image_size < 8:
            raise ValueError(f"digits would be smaller than 8 px (digit_scale[0] * image_size = "
                             f"{self.digit_scale[0] * self.image_size:.1f}); raise digit_scale or image_size")
        lo, hi = self.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"DigitScenesConfig.crop_scale must be (min, max) with 0 < min <= max <= 1, "
                             f"got {self.crop_scale!r}")
        lo, hi = self.soft_border
        if not (0 <= lo < hi <= 1):
            raise ValueError(f"DigitScenesConfig.soft_border must be (low, high) with 0 <= low < high <= 1, "
                             f"got {self.soft_border!r}")
        if not 0 <= self.min_contrast <= 1:
            raise ValueError(f"DigitScenesConfig.min_contrast must be in [0, 1], got {self.min_contrast!r}")
        if not 0 <= self.background_contrast <= 1:
            raise ValueError(f"DigitScenesConfig.background_contrast must be in [0, 1], "
                             f"got {self.background_contrast!r}")
        if not 0 <= self.max_overlap <= 1:
            raise ValueError(f"DigitScenesConfig.max_overlap must be in [0, 1], got {self.max_overlap!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"DigitScenesConfig.val_fraction must be in (0, 1), got {self.val_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def fingerprint(self) -> str:
        """Hash of the config and the generator version: the cache file name."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------------------

def _sources(split: str, val_fraction: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(digit images float32 N x 8 x 8 in [0, 1], digit labels, photo tiles float32 h x w x 3 in [0, 1])."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    order = np.random.RandomState(_DIGIT_SPLIT_SEED).permutation(len(digits.target))
    n_val = int(round(val_fraction * len(order)))
    idx = order[len(order) - n_val:] if split == "val" else order[:len(order) - n_val]
    idx = np.sort(idx)
    images = (digits.images[idx] / 16.0).astype(np.float32)
    labels = digits.target[idx].astype(np.int64)

    tiles = []
    rows, cols = _TILE_GRID
    for p, photo in enumerate(load_sample_images().images):
        h, w = photo.shape[0] // rows, photo.shape[1] // cols
        for r in range(rows):
            for c in range(cols):
                if ((r, c) in _VAL_TILES[p]) == (split == "val"):
                    tiles.append(photo[r * h:(r + 1) * h, c * w:(c + 1) * w].astype(np.float32) / 255.0)
    return images, labels, tiles


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float32 ``h x w`` or ``h x w x 3`` array to ``size x size``."""
    from PIL import Image

    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr, mode="F").resize((size, size), Image.BILINEAR))
    return np.stack([_resize(np.ascontiguousarray(arr[..., k]), size) for k in range(arr.shape[2])], axis=-1)


def _overlap(box: tuple[int, int, int], boxes: list[tuple[int, int, int]]) -> float:
    """Fraction of square ``box = (y, x, side)`` covered by the union of ``boxes`` (exact, via a mask)."""
    if not boxes:
        return 0.0
    y, x, s = box
    covered = np.zeros((s, s), dtype=bool)
    for by, bx, bs in boxes:
        y0, y1 = max(by - y, 0), min(by + bs - y, s)
        x0, x1 = max(bx - x, 0), min(bx + bs - x, s)
        if y0 < y1 and x0 < x1:
            covered[y0:y1, x0:x1] = True
    return float(covered.mean())


def edge_labels(hard: np.ndarray) -> np.ndarray:
    """1 where a 4-neighbour has another label (both sides of each boundary), else 0."""
    e = np.zeros(hard.shape, dtype=bool)
    dv = hard[..., 1:, :] != hard[..., :-1, :]
    dh = hard[..., :, 1:] != hard[..., :, :-1]
    e[..., 1:, :] |= dv
    e[..., :-1, :] |= dv
    e[..., :, 1:] |= dh
    e[..., :, :-1] |= dh
    return e.astype(np.uint8)


def _paint(image: np.ndarray, hard: np.ndarray, ignore: np.ndarray, alpha: np.ndarray, colour: np.ndarray,
           cls: int, low: float, high: float) -> None:
    """Blend one digit (opacity ``alpha``) over the views ``image``, ``hard``, ``ignore`` in place.

    Paint order: where ``alpha >= high`` the digit replaces what was there (label ``cls``, not ignored); where
    ``low < alpha < high`` the pixel becomes ignore (its hard label is kept); elsewhere nothing changes.
    """
    image[...] = (1 - alpha[..., None]) * image + alpha[..., None] * colour
    core = alpha >= high
    soft = (alpha > low) & ~core
    hard[core] = cls
    ignore[core] = False
    ignore[soft] = True


def _scene(cfg: DigitScenesConfig, index: int, digit_images: np.ndarray, digit_labels: np.ndarray,
           tiles: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (image uint8 HxWx3, segmentation uint8 HxW with 255, hard labels uint8 HxW, digits int8 [4])."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(cfg.split), index])
    size = cfg.image_size

    tile = tiles[rng.integers(len(tiles))]
    th, tw = tile.shape[:2]
    side = int(round(rng.uniform(*cfg.crop_scale) * min(th, tw)))
    y, x = rng.integers(0, th - side + 1), rng.integers(0, tw - side + 1)
    crop = tile[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    bg = _resize(np.ascontiguousarray(crop), size)
    bg = bg.mean(axis=(0, 1), keepdims=True) + cfg.background_contrast * (bg - bg.mean(axis=(0, 1), keepdims=True))
    image = np.clip(bg, 0.0, 1.0)

    low, high = cfg.soft_border
    hard = np.zeros((size, size), dtype=np.uint8)
    ignore = np.zeros((size, size), dtype=bool)
    drawn = np.full(_MAX_DIGITS, -1, dtype=np.int8)
    boxes: list[tuple[int, int, int]] = []
    n_digits = int(rng.integers(cfg.digits_per_image[0], cfg.digits_per_image[1] + 1))
    for k in range(n_digits):
        j = int(rng.integers(len(digit_labels)))
        s = int(round(rng.uniform(*cfg.digit_scale) * size))
        s = min(max(s, 8), size)
        for _ in range(20):
            box = (int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1)), s)
            if _overlap(box, boxes) <= cfg.max_overlap:
                break
        boxes.append(box)
        by, bx, _ = box
        alpha = np.clip(_resize(digit_images[j], s), 0.0, 1.0)
        region = (slice(by, by + s), slice(bx, bx + s))

        under = image[region][alpha >= high].mean(axis=0) if (alpha >= high).any() else image[region].mean((0, 1))
        colour = rng.random(3)
        for _ in range(10):
            if np.abs(colour - under).max() >= cfg.min_contrast:
                break
            colour = rng.random(3)
        else:  # the far corner of the RGB cube from the photo's colour
            colour = (under < 0.5).astype(np.float64)
        _paint(image[region], hard[region], ignore[region], alpha, colour, 1 + int(digit_labels[j]), low, high)
        drawn[k] = digit_labels[j]

    seg = np.where(ignore, IGNORE_INDEX, hard).astype(np.uint8)
    return (np.round(image * 255).astype(np.uint8), seg, hard, drawn)


def generate_scenes(config: DigitScenesConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate a split in memory: ``images`` (N,H,W,3) uint8, ``segmentation`` (N,H,W) uint8 (255 = ignore),
    ``hard`` (N,H,W) uint8 (labels without ignore), ``digits`` (N,4) int8 (digits in paint order, -1 pad)."""
    from tqdm.auto import tqdm

    config.validate()
    digit_images, digit_labels, tiles = _sources(config.split, config.val_fraction)
    n, size = config.num_scenes, config.image_size
    out = {"images": np.empty((n, size, size, 3), np.uint8), "segmentation": np.empty((n, size, size), np.uint8),
           "hard": np.empty((n, size, size), np.uint8), "digits": np.empty((n, _MAX_DIGITS), np.int8)}
    for i in tqdm(range(n), desc=f"DigitScenes {config.split} {size}px", disable=not progress or n < 200,
                  leave=False):
        out["images"][i], out["segmentation"][i], out["hard"][i], out["digits"][i] = _scene(
            config, i, digit_images, digit_labels, tiles)
    return out
