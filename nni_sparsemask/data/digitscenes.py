"""DigitScenes: the built-in, download-free benchmark (see ``design.md``, "DigitScenes, the built-in benchmark").

Every scene is a random crop of one of scikit-learn's two sample photos (``china.jpg``, ``flower.jpg``), resized
to ``image_size``, with 1-4 handwritten digits of ``sklearn.datasets.load_digits`` (8x8, grey levels 0-16)
upscaled and alpha-blended on top in a random colour. Everything is generated deterministically from the
config (scene ``i`` of a split only depends on ``(seed, split, i)``) and cached on disk as ``.npz``.

Labels (``task="segmentation"``, 11 classes)
    ``0`` background, ``1 + d`` for digit ``d`` (so ``1..10``), ``255`` (ignore) on the anti-aliased digit
    borders: pixels whose digit opacity is strictly between ``soft_border[0]`` and ``soft_border[1]``.
    Digits are painted in order, a later digit covering the earlier ones (its soft border over an earlier
    digit is ignore as well).
Other views of the same scenes
    ``"saliency"``: ``1`` digit, ``0`` background, ``255`` kept on the soft borders.
    ``"edges"``: ``1`` on class boundaries, ``0`` elsewhere (no ignore). Boundaries are taken from the hard
    label map (opacity >= ``soft_border[1]`` is the digit), a pixel being an edge when a 4-neighbour has another
    class; both sides of a boundary are marked, so edges are 2 px wide.
    ``"classification"``: scenes with exactly one digit each (same photos, split, scale and contrast); the
    target is the digit ``0..9`` (10 classes). It stands in for ImageNet pre-training of the backbone.

Train / val split
    Digits: a fixed permutation of the 1797 digits (independent of ``seed``); the last ``val_fraction`` of it
    are the val digits. Photos: each photo is cut into a 2 x 5 grid of tiles (213 x 128 px) and 2 tiles of
    each photo, in different rows and columns, are val tiles; a crop never leaves its tile. (A top / bottom
    split shifted the distribution: sky and petals vs foliage and buildings.)

Learnability levers (design.md: small digits at 64x64 were hard to learn): ``digit_scale`` (digit side as a
fraction of the image side), ``min_contrast`` (least max-channel difference between a digit's colour and the
mean photo colour under it) and ``background_contrast`` (photo texture damped towards its mean).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DigitScenesConfig", "DigitScenes", "generate_scenes", "load_or_generate", "default_cache_dir", "cache_root",
    "TASKS", "SPLITS", "NUM_CLASSES", "IGNORE_INDEX", "CACHE_ENV", "GENERATOR_VERSION",
]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
TASKS = ("segmentation", "saliency", "edges", "classification")
SPLITS = ("train", "val")
#: classes of each view (``classification``: the digit 0..9)
NUM_CLASSES = {"segmentation": 11, "saliency": 2, "edges": 2, "classification": 10}
#: environment variable overriding the cache root (``<root>/digitscenes/<hash>.npz``)
CACHE_ENV = "NNI_SPARSEMASK_CACHE_DIR"
#: bump when the generator changes, so that old caches are not reused
GENERATOR_VERSION = 1

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
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


def _edges(hard: np.ndarray) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------------------
# Disk cache
# ------------------------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """The project's cache: ``$NNI_SPARSEMASK_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/nni_sparsemask``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nni_sparsemask"


def default_cache_dir() -> Path:
    """``$NNI_SPARSEMASK_CACHE_DIR/digitscenes``, else ``${XDG_CACHE_HOME:-~/.cache}/nni_sparsemask/digitscenes``."""
    return cache_root() / "digitscenes"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_ARRAYS = ("images", "segmentation", "hard", "digits")


def _read_cache(path: Path, config: DigitScenesConfig) -> Optional[dict[str, np.ndarray]]:
    """The cached arrays, or ``None`` (with a log line) when the file is unreadable, stale or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in _ARRAYS}
            stored_sum = str(f["checksum"])
            stored_cfg = json.loads(str(f["config"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        _logger.warning("DigitScenes cache %s is unreadable (%s: %s); regenerating it", path, type(e).__name__, e)
        return None
    if stored_cfg != config.to_dict():
        _logger.warning("DigitScenes cache %s holds another config; regenerating it", path)
        return None
    if _checksum(arrays) != stored_sum:
        _logger.warning("DigitScenes cache %s fails its checksum (corrupt); regenerating it", path)
        return None
    return arrays


def load_or_generate(config: DigitScenesConfig, cache_dir: Union[str, Path, None] = None, cache: bool = True,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """The arrays of :func:`generate_scenes`, from ``<cache_dir>/<config.fingerprint()>.npz`` when that file
    is valid (config and checksum match), otherwise generated and (``cache=True``) written atomically."""
    if not cache:
        return generate_scenes(config, progress=progress)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"{config.fingerprint()}.npz"
    if path.exists():
        arrays = _read_cache(path, config)
        if arrays is not None:
            return arrays
    arrays = generate_scenes(config, progress=progress)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, checksum=np.array(_checksum(arrays)),
                                config=np.array(json.dumps(config.to_dict(), sort_keys=True)), **arrays)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache must not stop a run: the scenes are in memory
        _logger.warning("could not write the DigitScenes cache %s (%s); set %s or pass cache_dir to a writable "
                        "folder to keep it", path, e, CACHE_ENV)
    return arrays


# ------------------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------------------

class DigitScenes(Dataset):
    """torch ``Dataset`` over one DigitScenes split, in one of the views of :data:`TASKS`.

    ``dataset[i]`` is ``(image, target)``: ``image`` a FloatTensor ``3 x H x W``, ImageNet-normalised (or in
    ``[0, 1]`` with ``normalize=False``); ``target`` a LongTensor ``H x W`` (segmentation / saliency / edges)
    or a scalar LongTensor, the digit ``0..9`` (classification). ``transform(image, target)``, when given, is
    applied to that pair last (e.g. the geometric steps of :mod:`nni_sparsemask.data.transforms`; do not
    normalise twice).

    Cheap to construct and to pickle (NNI sends data sets to trials): the scenes are loaded or generated on
    first access and never pickled. Keyword ``overrides`` replace fields of ``config``, e.g.
    ``DigitScenes(split="val", image_size=32, num_scenes=12)``.
    """

    def __init__(self, config: Optional[DigitScenesConfig] = None, task: str = "segmentation",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None,
                 cache_dir: Union[str, Path, None] = None, cache: bool = True, normalize: bool = True,
                 **overrides: Any) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown DigitScenes task {task!r}; use one of {TASKS}")
        config = config if config is not None else DigitScenesConfig()
        if overrides:
            unknown = set(overrides) - {f.name for f in dataclasses.fields(DigitScenesConfig)}
            if unknown:
                raise ValueError(f"unknown DigitScenesConfig field(s) {sorted(unknown)}; known: "
                                 f"{[f.name for f in dataclasses.fields(DigitScenesConfig)]}")
            config = dataclasses.replace(config, **overrides)
        if task == "classification":  # one digit per scene: the label is unambiguous
            config = dataclasses.replace(config, digits_per_image=(1, 1))
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be a callable transform(image, target), got {type(transform).__name__}")
        self.config = config
        self.task = task
        self.transform = transform
        self.cache_dir = cache_dir
        self.cache = cache
        self.normalize = normalize
        self._arrays: Optional[dict[str, np.ndarray]] = None

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.task]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The raw arrays of the split (loaded or generated on first use)."""
        if self._arrays is None:
            arrays = load_or_generate(self.config, self.cache_dir, self.cache)
            if self.task == "edges":
                arrays = {**arrays, "edges": _edges(arrays["hard"])}
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self.config.num_scenes

    def target_array(self, index: int) -> np.ndarray:
        """The target of scene ``index`` as numpy (before any transform)."""
        a = self.arrays
        if self.task == "segmentation":
            return a["segmentation"][index]
        if self.task == "saliency":
            seg = a["segmentation"][index]
            return np.where(seg == IGNORE_INDEX, IGNORE_INDEX, (seg > 0).astype(np.uint8)).astype(np.uint8)
        if self.task == "edges":
            return a["edges"][index]
        return np.asarray(a["digits"][index, 0], dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        index = index % len(self)
        image = torch.from_numpy(self.arrays["images"][index]).permute(2, 0, 1).float().div_(255.0)
        if self.normalize:
            mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
            image = (image - mean) / std
        target = torch.from_numpy(np.array(self.target_array(index), dtype=np.int64))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"DigitScenes(task={self.task!r}, {self.config})"
