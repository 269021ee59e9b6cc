"""Salient-object detection data sets from local files: MSRA-B, DUTS, ECSSD. Nothing is ever downloaded.

Expected layouts (as the popular releases extract)::

    MSRA-B (5,000 images; the split of Jiang et al. 2013, as released with DSS / NLDF / Amulet):
        <root>/MSRA-B/image/<id>.jpg
        <root>/MSRA-B/annotation/<id>.png
        <root>/MSRA-B/{train,valid,test}_cvpr2013.txt     2,500 / 500 / 2,000 ids, one a line (``<id>.png`` or
                                                          ``<id>.jpg`` or ``<id>``)
      or the original archive's flat folder, images and masks side by side: ``<root>/MSRA-B/<id>.jpg`` +
      ``<id>.png`` (with the same split lists beside them).
    DUTS (DUTS-TR 10,553 training images, DUTS-TE 5,019 test images):
        <root>/DUTS-TR/DUTS-TR-Image/<id>.jpg   <root>/DUTS-TR/DUTS-TR-Mask/<id>.png
        <root>/DUTS-TE/DUTS-TE-Image/<id>.jpg   <root>/DUTS-TE/DUTS-TE-Mask/<id>.png
    ECSSD (1,000 images, evaluation only):
        <root>/ECSSD/images/<id>.jpg            <root>/ECSSD/ground_truth_mask/<id>.png

``root`` may also be the data set's own folder (``MSRA-B``, the one holding ``DUTS-TR`` / ``DUTS-TE`` or one of
those two, ``ECSSD``).
Splits: MSRA-B ``train`` / ``val`` / ``test`` (the lists) and ``all`` (every image); DUTS ``train`` (DUTS-TR) /
``test`` (DUTS-TE); ECSSD ``test``.

Targets are binary: ``0`` background, ``1`` salient. The mask PNGs hold 0 / 255 (0 / 1 is accepted too); any
other value is an error naming the file, the values and how many pixels hold them (the masks are not thresholded
here: a soft or anti-aliased mask is a different data set).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from nni_sparsemask.data.folders import (PairedFolder, PathLike, check_split, pair_by_stem,
                                         read_ids, resolve_layout)

__all__ = ["MSRAB", "DUTS", "ECSSD", "SALIENCY_CLASSES", "load_binary_mask", "MSRAB_LAYOUT", "DUTS_LAYOUT",
           "ECSSD_LAYOUT"]

SALIENCY_CLASSES = ("background", "salient")

MSRAB_LAYOUT = """expected MSRA-B layout (the DSS / NLDF release with Jiang et al.'s 2013 split):
    <root>/MSRA-B/image/<id>.jpg
    <root>/MSRA-B/annotation/<id>.png          0 / 255 masks
    <root>/MSRA-B/{train,valid,test}_cvpr2013.txt
  or images and masks side by side: <root>/MSRA-B/<id>.jpg + <root>/MSRA-B/<id>.png"""
DUTS_LAYOUT = """expected DUTS layout (DUTS-TR.zip, DUTS-TE.zip):
    <root>/DUTS-TR/DUTS-TR-Image/<id>.jpg  +  <root>/DUTS-TR/DUTS-TR-Mask/<id>.png
    <root>/DUTS-TE/DUTS-TE-Image/<id>.jpg  +  <root>/DUTS-TE/DUTS-TE-Mask/<id>.png"""
ECSSD_LAYOUT = """expected ECSSD layout (images.zip, ground_truth_mask.zip):
    <root>/ECSSD/images/<id>.jpg  +  <root>/ECSSD/ground_truth_mask/<id>.png"""


def load_binary_mask(path: PathLike) -> np.ndarray:
    """A saliency mask PNG as ``uint8 H x W`` in {0, 1}: 0 / 255 (or 0 / 1) masks; grey-level, palette, 1-bit or
    grey RGB(A) files. ValueError naming the file for colour masks and for any other value."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "1":
            return np.array(im, dtype=np.uint8)
        if im.mode == "P":
            im = im.convert("L")
        arr = np.array(im)
        mode = im.mode
    if arr.ndim == 3:  # RGB / RGBA / LA: the colour channels must agree (a grey image saved as RGB)
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if (colour != colour[..., :1]).any():
            raise ValueError(f"{path}: saliency mask is a colour ({mode}) image; expected a grey-level 0 / 255 mask")
        arr = colour[..., 0]
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: saliency mask has mode {mode!r} ({arr.dtype}); expected an 8-bit 0 / 255 mask")
    values = np.unique(arr)
    scale = 255 if values.max(initial=0) > 1 else 1
    bad = values[(values != 0) & (values != scale)]
    if bad.size:
        count = int(np.isin(arr, bad).sum())
        raise ValueError(f"{path}: saliency mask is not binary: values {bad.tolist()[:10]}"
                         f"{' ...' if bad.size > 10 else ''} besides 0 and {scale} in {count} of {arr.size} pixels; "
                         "expected 0 (background) and 255 (salient)")
    return (arr == scale).astype(np.uint8) if scale == 255 else arr.astype(np.uint8)


class _Saliency(PairedFolder):
    """A saliency data set: targets in {0, 1}, 2 classes, ``ignore_index`` 255 (only from padding)."""

    classes = SALIENCY_CLASSES

    def load_target(self, index: int) -> np.ndarray:
        return load_binary_mask(self.samples[index].mask)


class MSRAB(_Saliency):
    """MSRA-B: ``split`` ``train`` (2,500), ``val`` (500), ``test`` (2,000) from the ``*_cvpr2013.txt`` lists, or
    ``all``. ``dataset[i]``: see :class:`~nni_sparsemask.data.folders.PairedFolder` (PIL pair, or
    ``transform(image, target)``)."""

    SPLITS = ("train", "val", "test", "all")
    _LISTS = {"train": "train_cvpr2013.txt", "val": "valid_cvpr2013.txt", "test": "test_cvpr2013.txt"}

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None) -> None:
        super().__init__(check_split(split, self.SPLITS, "MSRA-B"), transform)
        base = self.resolve_root(root, split)
        self.root = str(base)
        images, masks = (base / "image", base / "annotation") if (base / "image").is_dir() else (base, base)
        ids = read_ids(base / self._LISTS[split], MSRAB_LAYOUT) if split != "all" else None
        self.samples = pair_by_stem(images, masks, ".jpg", ".png", MSRAB_LAYOUT, ids)

    @classmethod
    def resolve_root(cls, root: PathLike, split: str = "train") -> Path:
        """The ``MSRA-B`` folder under (or at) ``root``: ``image/`` + ``annotation/``, or ``*.jpg`` beside
        ``*.png``; and the split's list unless ``split`` is ``all``."""
        check_split(split, cls.SPLITS, "MSRA-B")
        root = Path(root).expanduser()
        cands = [root / "MSRA-B", root]
        lists = [cls._LISTS[split]] if split != "all" else []
        for cand in cands:
            if cand.is_dir() and not (cand / "image").is_dir() and any(cand.glob("*.jpg")) and any(cand.glob("*.png")):
                return resolve_layout(root, [cand], lists, "MSRA-B", MSRAB_LAYOUT)  # the flat folder
        return resolve_layout(root, cands, ["image", "annotation", *lists], "MSRA-B", MSRAB_LAYOUT)


class DUTS(_Saliency):
    """DUTS: ``split`` ``train`` (DUTS-TR, 10,553 images) or ``test`` (DUTS-TE, 5,019)."""

    SPLITS = ("train", "test")

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None) -> None:
        super().__init__(check_split(split, self.SPLITS, "DUTS"), transform)
        base = self.resolve_root(root, split)
        self.root = str(base)
        part = self._part(split)
        self.samples = pair_by_stem(base / part / f"{part}-Image", base / part / f"{part}-Mask", ".jpg", ".png",
                                    DUTS_LAYOUT)

    @staticmethod
    def _part(split: str) -> str:
        return "DUTS-TR" if split == "train" else "DUTS-TE"

    @classmethod
    def resolve_root(cls, root: PathLike, split: str = "train") -> Path:
        """The folder under (or at) ``root`` holding ``DUTS-TR`` (``train``) or ``DUTS-TE`` (``test``)."""
        part = cls._part(check_split(split, cls.SPLITS, "DUTS"))
        root = Path(root).expanduser()
        cands = [root / "DUTS", root] + ([root.parent] if root.name in ("DUTS-TR", "DUTS-TE") else [])
        return resolve_layout(root, cands, [f"{part}/{part}-Image", f"{part}/{part}-Mask"], "DUTS", DUTS_LAYOUT)


class ECSSD(_Saliency):
    """ECSSD: 1,000 images, one split, ``test`` (an evaluation set)."""

    SPLITS = ("test",)

    def __init__(self, root: PathLike, split: str = "test",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None) -> None:
        super().__init__(check_split(split, self.SPLITS, "ECSSD"), transform)
        base = self.resolve_root(root, split)
        self.root = str(base)
        self.samples = pair_by_stem(base / "images", base / "ground_truth_mask", ".jpg", ".png", ECSSD_LAYOUT)

    @classmethod
    def resolve_root(cls, root: PathLike, split: str = "test") -> Path:
        """The ``ECSSD`` folder under (or at) ``root``: ``images/`` + ``ground_truth_mask/``."""
        check_split(split, cls.SPLITS, "ECSSD")
        root = Path(root).expanduser()
        return resolve_layout(root, [root / "ECSSD", root], ["images", "ground_truth_mask"], "ECSSD", ECSSD_LAYOUT)
