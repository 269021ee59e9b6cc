"""BSDS500 edge detection (Berkeley Segmentation Data Set and Benchmarks 500) from local files.

Nothing is ever downloaded. Expected layout (``BSR_bsds500.tgz`` as extracted)::

    <root>/BSR/BSDS500/data/
        images/{train,val,test}/<id>.jpg         200 / 100 / 200 images, 481 x 321 or 321 x 481
        groundTruth/{train,val,test}/<id>.mat    MATLAB cell array ``groundTruth`` (1 x A, one cell per annotator,
                                                 A = 4..9), each a struct with fields ``Segmentation`` and
                                                 ``Boundaries`` (logical H x W)

``root`` may also be ``BSR``, ``BSR/BSDS500`` or ``BSR/BSDS500/data``. Splits: ``train``, ``val``, ``test`` and
``trainval`` (train + val, the 300 images HED trains on; it tests on ``test``).

Targets. ``dataset[i]`` is ``(image, target)`` as for the other data sets, ``target`` the training label of HED's
convention as in the tensorpack HED reimplementation of Xie & Tu (2015): the annotators' boundary maps are
averaged and a pixel is an edge (1) where at least ``threshold`` = 0.5 of them marked it, else 0. With
``ignore_uncertain=True`` the pixels that some but too few annotators marked are 255 (not scored) instead of 0,
as RCF (Liu et al. 2017) does. With ``with_boundaries=True`` the sample is ``(image, target, boundaries)``,
``boundaries`` a ``uint8`` tensor ``A x H x W`` of every annotator's map, for the benchmark's evaluation (which
matches a prediction against each annotator). ``boundaries`` is not transformed: it stays at the image's size,
so with it use a transform that keeps the image where it is (``eval_transform()``, or ``eval_transform(pad_to=..)``
which pads bottom/right: crop the prediction to ``H x W``); a transform that shrinks the target is refused. A
batch of them needs ``batch_size=1`` (images have 4 to 9 annotators) or a collate function that keeps a list.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from nni_sparsemask.data.folders import PairedFolder, PathLike, check_split, pair_by_stem, resolve_layout

__all__ = ["BSDS500", "EDGE_CLASSES", "SPLITS", "BSDS500_LAYOUT", "load_bsds_boundaries", "edge_target"]

EDGE_CLASSES = ("background", "edge")
SPLITS = ("train", "val", "test", "trainval")
IGNORE_INDEX = 255

BSDS500_LAYOUT = """expected BSDS500 layout (from BSR_bsds500.tgz):
    <root>/BSR/BSDS500/data/images/{train,val,test}/<id>.jpg
    <root>/BSR/BSDS500/data/groundTruth/{train,val,test}/<id>.mat   (cell array groundTruth, field Boundaries)"""


def _unwrap(value: Any) -> Any:
    """A MATLAB 1 x 1 cell / struct level as loadmat returns it -> its one element."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    return value


def load_bsds_boundaries(path: PathLike) -> np.ndarray:
    """The annotators' boundary maps of a BSDS500 ``groundTruth/<split>/<id>.mat`` as ``uint8 A x H x W`` in
    {0, 1}: ``loadmat(path)["groundTruth"][0, k]["Boundaries"][0, 0]`` for each annotator ``k``. ValueError naming
    the file when it is not such a file (no ``groundTruth``, an annotator without ``Boundaries``, maps that are
    not binary or differ in size)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as err:
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from err
    if "groundTruth" not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no groundTruth variable (found {names}); expected a BSDS500 groundTruth file")
    cell = mat["groundTruth"]
    entries = list(cell.ravel()) if isinstance(cell, np.ndarray) and cell.dtype == object else [cell]
    if not entries:
        raise ValueError(f"{path}: groundTruth holds no annotator")
    maps = []
    for k, entry in enumerate(entries, 1):
        entry = _unwrap(entry)
        names = getattr(getattr(entry, "dtype", None), "names", None) or ()
        if "Boundaries" not in names:
            raise ValueError(f"{path}: annotator {k} of {len(entries)} in groundTruth has no Boundaries field "
                             f"(fields: {list(names)}); expected BSDS500 structs with Segmentation and Boundaries")
        b = _unwrap(entry["Boundaries"])
        b = b.toarray() if hasattr(b, "toarray") else np.asarray(b)
        if b.ndim != 2:
            raise ValueError(f"{path}: Boundaries of annotator {k} has shape {b.shape}, expected H x W")
        values = np.unique(b)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{path}: Boundaries of annotator {k} holds {values.tolist()[:10]}, expected 0 and 1")
        if maps and b.shape != maps[0].shape:
            raise ValueError(f"{path}: Boundaries of annotator {k} is {b.shape[0]}x{b.shape[1]}, annotator 1's is "
                             f"{maps[0].shape[0]}x{maps[0].shape[1]}")
        maps.append(b.astype(np.uint8))
    return np.stack(maps)


def edge_target(boundaries: np.ndarray, threshold: float = 0.5, ignore_uncertain: bool = False) -> np.ndarray:
    """HED's training label from ``A x H x W`` boundary maps: ``1`` where the annotators' mean is ``>=
    threshold``, else ``0`` (``255`` where ``0 < mean < threshold`` with ``ignore_uncertain``). ``uint8 H x W``."""
    mean = boundaries.astype(np.float32).mean(axis=0)
    target = (mean >= threshold).astype(np.uint8)
    if ignore_uncertain:
        target[(mean > 0) & (mean < threshold)] = IGNORE_INDEX
    return target


def _size(target: Any) -> tuple[int, int]:
    if isinstance(target, torch.Tensor):
        return int(target.shape[-2]), int(target.shape[-1])
    if hasattr(target, "height"):
        return target.height, target.width
    return tuple(np.shape(target)[-2:])


class BSDS500(PairedFolder):
    """BSDS500 edges: ``split`` ``train`` / ``val`` / ``test`` / ``trainval``; 2 classes (background, edge),
    ``ignore_index`` 255. See the module docstring for the target and ``with_boundaries``."""

    classes = EDGE_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None, with_boundaries: bool = False,
                 threshold: float = 0.5, ignore_uncertain: bool = False) -> None:
        super().__init__(check_split(split, SPLITS, "BSDS500"), transform)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is the fraction of annotators that makes an edge, in (0, 1], got {threshold}")
        self.with_boundaries = with_boundaries
        self.threshold = float(threshold)
        self.ignore_uncertain = ignore_uncertain
        base = self.resolve_root(root, split)
        self.root = str(base)
        self.samples = [s for part in self._parts(split)
                        for s in pair_by_stem(base / "images" / part, base / "groundTruth" / part, ".jpg", ".mat",
                                              BSDS500_LAYOUT)]

    @staticmethod
    def _parts(split: str) -> tuple[str, ...]:
        return ("train", "val") if split == "trainval" else (split,)

    @classmethod
    def resolve_root(cls, root: PathLike, split: str = "train") -> Path:
        """The ``BSDS500/data`` folder under (or at) ``root`` holding ``split``; FileNotFoundError with the expected
        layout and what ``root`` holds."""
        parts = cls._parts(check_split(split, SPLITS, "BSDS500"))
        root = Path(root).expanduser()
        cands = [root / "BSR" / "BSDS500" / "data", root / "BSDS500" / "data", root / "data", root]
        required = [f"{kind}/{p}" for p in parts for kind in ("images", "groundTruth")]
        return resolve_layout(root, cands, required, "BSDS500", BSDS500_LAYOUT)

    def load_boundaries(self, index: int) -> np.ndarray:
        """Every annotator's boundary map of sample ``index``: ``uint8 A x H x W`` in {0, 1}."""
        return load_bsds_boundaries(self.samples[index].mask)

    def load_target(self, index: int) -> np.ndarray:
        return edge_target(self.load_boundaries(index), self.threshold, self.ignore_uncertain)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        boundaries = self.load_boundaries(index)
        image, target = self._image_and_target(index, edge_target(boundaries, self.threshold, self.ignore_uncertain))
        if self.transform is not None:
            image, target = self.transform(image, target)
        if not self.with_boundaries:
            return image, target
        h, w = boundaries.shape[1:]
        th, tw = _size(target)
        if th < h or tw < w:
            raise ValueError(f"with_boundaries=True keeps the annotators' maps at the image's size {h}x{w}, but the "
                             f"transform made the target {th}x{tw}; use a transform that does not crop or shrink "
                             "(eval_transform(), optionally with pad_to)")
        return image, target, torch.from_numpy(boundaries)

    def __repr__(self) -> str:
        return (f"BSDS500(split={self.split!r}, {len(self)} images, root={self.root!r}, threshold={self.threshold}, "
                f"ignore_uncertain={self.ignore_uncertain}, with_boundaries={self.with_boundaries})")
