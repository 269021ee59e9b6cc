"""DigitScenes: the built-in, download-free benchmark (see the README, "The demo").

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

Learnability levers (measured: small digits at 64x64 were hard to learn): ``digit_scale`` (digit side as a
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
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from nni_sparsemask.data.scenes import (GENERATOR_VERSION, IGNORE_INDEX, NUM_CLASSES, SPLITS, TASKS, DigitScenesConfig,
                                        edge_labels, generate_scenes)

__all__ = [
    "DigitScenesConfig", "DigitScenes", "generate_scenes", "load_or_generate", "default_cache_dir", "cache_root",
    "TASKS", "SPLITS", "NUM_CLASSES", "IGNORE_INDEX", "CACHE_ENV", "GENERATOR_VERSION",
]

_logger = logging.getLogger(__name__)

#: environment variable overriding the cache root (``<root>/digitscenes/<hash>.npz``)
CACHE_ENV = "NNI_SPARSEMASK_CACHE_DIR"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


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
    first access (with a progress bar unless ``progress=False``) and never pickled. Keyword ``overrides`` replace
    fields of ``config``, e.g. ``DigitScenes(split="val", image_size=32, num_scenes=12)``.
    """

    def __init__(self, config: Optional[DigitScenesConfig] = None, task: str = "segmentation",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None,
                 cache_dir: Union[str, Path, None] = None, cache: bool = True, normalize: bool = True,
                 progress: bool = True, **overrides: Any) -> None:
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
        self.progress = progress
        self._arrays: Optional[dict[str, np.ndarray]] = None

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.task]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The raw arrays of the split (loaded or generated on first use)."""
        if self._arrays is None:
            arrays = load_or_generate(self.config, self.cache_dir, self.cache, progress=self.progress)
            if self.task == "edges":
                arrays = {**arrays, "edges": edge_labels(arrays["hard"])}
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
