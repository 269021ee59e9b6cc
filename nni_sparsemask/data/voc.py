"""PASCAL VOC 2012 semantic segmentation and the DeepLab ``train_aug`` split (VOC + SBD), from local files.

Nothing is ever downloaded. Expected layouts (the archives' own formats)::

    <voc_root>/VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNG: index = class id 0..20, 255 = border (ignored)
        ImageSets/Segmentation/{train,val,trainval}.txt
    <sbd_root>/benchmark_RELEASE/dataset/
        img/<id>.jpg
        cls/<id>.mat                        MATLAB struct GTcls, field Segmentation (uint8 H x W, 0..20)
        train.txt, val.txt

``voc_root`` may also point at ``VOCdevkit`` or ``VOCdevkit/VOC2012``; ``sbd_root`` at ``benchmark_RELEASE``
or ``benchmark_RELEASE/dataset``.

``train_aug`` (the 10,582 training images of the paper, DeepLab protocol):
``ids = (SBD train U SBD val U VOC train) - VOC val``; with the real lists 11,355 + 1,464 -> 10,582 after
removing the 1,449 VOC val images. For each id the image is read from VOC ``JPEGImages`` when it is there
(SBD's images are the same VOC 2011 photos) and from SBD ``img`` otherwise. The label comes from VOC's
``SegmentationClass`` PNG when the id has one and ``label_priority="voc"`` (the default: the official,
finer masks whose 255 borders are ignored), else from SBD's ``.mat`` (which has no ignore border);
``label_priority="sbd"`` prefers SBD's label wherever SBD has the id, as in the common
``SegmentationClassAug`` conversions.

Datasets store only paths (cheap to pickle for DataLoader workers and NNI trials); files are read in
``__getitem__``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union

import numpy as np
import torch.utils.data

__all__ = ["VOC_CLASSES", "NUM_CLASSES", "IGNORE_INDEX", "VOCSample", "VOCSegmentation", "train_aug_ids",
           "load_voc_mask", "load_sbd_mask", "resolve_voc_root", "resolve_sbd_root"]

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
NUM_CLASSES = len(VOC_CLASSES)  # 21
IGNORE_INDEX = 255
SPLITS = ("train", "val", "trainval", "train_aug")

VOC_LAYOUT = """expected PASCAL VOC 2012 layout (from VOCtrainval_11-May-2012.tar):
    <voc_root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <voc_root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png
    <voc_root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt"""
SBD_LAYOUT = """expected SBD layout (from benchmark.tgz):
    <sbd_root>/benchmark_RELEASE/dataset/img/<id>.jpg
    <sbd_root>/benchmark_RELEASE/dataset/cls/<id>.mat
    <sbd_root>/benchmark_RELEASE/dataset/{train,val}.txt"""

PathLike = Union[str, os.PathLike]


def _missing(paths: Iterable[Path]) -> list[str]:
    return [str(p) for p in paths if not p.exists()]


def resolve_voc_root(root: PathLike) -> Path:
    """The ``.../VOCdevkit/VOC2012`` directory under (or at) ``root``; FileNotFoundError showing the layout."""
    root = Path(root).expanduser()
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if cand.name == "VOC2012" and cand.parent.name == "VOCdevkit" and cand.is_dir():
            missing = _missing([cand / "JPEGImages", cand / "SegmentationClass", cand / "ImageSets" / "Segmentation"])
            if missing:
                raise FileNotFoundError(f"PASCAL VOC 2012 root {cand} is incomplete, missing: {', '.join(missing)}\n"
                                        f"{VOC_LAYOUT}")
            return cand
    raise FileNotFoundError(f"no VOCdevkit/VOC2012 directory found at {root}; extract VOCtrainval_11-May-2012.tar "
                            f"there (nothing is downloaded).\n{VOC_LAYOUT}")


def resolve_sbd_root(root: PathLike) -> Path:
    """The SBD ``benchmark_RELEASE/dataset`` directory under (or at) ``root``."""
    root = Path(root).expanduser()
    for cand in (root / "benchmark_RELEASE" / "dataset", root / "dataset", root):
        if (cand / "img").is_dir() or (cand / "cls").is_dir():
            missing = _missing([cand / "img", cand / "cls", cand / "train.txt", cand / "val.txt"])
            if missing:
                raise FileNotFoundError(f"SBD root {cand} is incomplete, missing: {', '.join(missing)}\n{SBD_LAYOUT}")
            return cand
    raise FileNotFoundError(f"no SBD benchmark_RELEASE/dataset directory found at {root}; extract benchmark.tgz "
                            f"there (nothing is downloaded).\n{SBD_LAYOUT}")


def _read_ids(path: Path, layout: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found\n{layout}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def train_aug_ids(voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
                  sbd_val: Iterable[str]) -> list[str]:
    """DeepLab's ``train_aug``: ``sorted((SBD train U SBD val U VOC train) - VOC val)``."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _check_values(arr: np.ndarray, path: str) -> np.ndarray:
    values = np.unique(arr)
    bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(f"{path}: label values {bad.tolist()[:10]} are not VOC class ids (0..{NUM_CLASSES - 1}) "
                         f"or {IGNORE_INDEX}; is this a VOC SegmentationClass/SBD cls file?")
    return arr


def load_voc_mask(path: PathLike) -> np.ndarray:
    """A VOC ``SegmentationClass`` PNG as ``uint8 H x W`` class ids (palette indices, 255 = border)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: mask PNG has mode {im.mode!r}; VOC masks are palette ('P') images whose "
                             "indices are the class ids (an RGB-converted mask cannot be read back)")
        arr = np.array(im, dtype=np.uint8)
    return _check_values(arr, str(path))


def load_sbd_mask(path: PathLike) -> np.ndarray:
    """An SBD ``cls/<id>.mat`` as ``uint8 H x W`` class ids: ``loadmat(path)["GTcls"][0]["Segmentation"][0]``
    (the ``1 x 1`` struct ``GTcls`` with fields ``Segmentation``, ``Boundaries``, ``CategoriesPresent``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        seg = mat["GTcls"][0]["Segmentation"][0]
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: not an SBD class annotation (expected MATLAB struct GTcls with field "
                         f"Segmentation): {err}") from err
    arr = np.asarray(seg)
    if arr.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {arr.shape}, expected H x W")
    return _check_values(arr.astype(np.uint8), str(path))


@dataclass(frozen=True)
class VOCSample:
    """One sample: its id, the image path, the mask path and the mask's format (``png`` VOC, ``mat`` SBD)."""

    id: str
    image: str
    mask: str
    mask_format: Literal["png", "mat"]


class VOCSegmentation(torch.utils.data.Dataset):
    """PASCAL VOC 2012 segmentation: ``image_set`` in ``train`` (1,464), ``val`` (1,449), ``trainval`` or
    ``train_aug`` (10,582; needs ``sbd_root``). 21 classes, ``ignore_index`` 255.

    ``dataset[i]`` is ``transform(image, mask)`` with ``image`` a PIL RGB image and ``mask`` a PIL ``'L'``
    image of class ids; without a transform that pair itself (see :mod:`nni_sparsemask.data.transforms`).
    Every listed file is checked to exist when the dataset is built (a partial copy fails early).
    """

    classes = VOC_CLASSES
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: PathLike, image_set: str = "train", sbd_root: Optional[PathLike] = None,
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None,
                 label_priority: Literal["voc", "sbd"] = "voc") -> None:
        if image_set not in SPLITS:
            raise ValueError(f"image_set must be one of {SPLITS}, got {image_set!r}")
        if label_priority not in ("voc", "sbd"):
            raise ValueError(f"label_priority must be 'voc' or 'sbd', got {label_priority!r}")
        if image_set == "train_aug" and sbd_root is None:
            raise ValueError("image_set='train_aug' needs sbd_root (the SBD benchmark_RELEASE extraction); "
                             "use image_set='train' for VOC alone")
        self.image_set = image_set
        self.transform = transform
        self.label_priority = label_priority
        voc = resolve_voc_root(root)
        self.voc_root = str(voc)
        self.sbd_root = str(resolve_sbd_root(sbd_root)) if sbd_root is not None else None
        if image_set == "train_aug":
            self.samples = self._train_aug_samples(voc, Path(self.sbd_root))
        else:
            self.samples = self._voc_samples(voc, image_set)
        missing = _missing(Path(p) for s in self.samples for p in (s.image, s.mask))
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{len(missing)} files listed by the '{image_set}' split are missing, e.g. "
                                    f"{', '.join(missing[:5])}{more}; the dataset copy is partial.\n{VOC_LAYOUT}"
                                    + (f"\n{SBD_LAYOUT}" if image_set == "train_aug" else ""))

    @staticmethod
    def _voc_samples(voc: Path, image_set: str) -> list[VOCSample]:
        from torchvision.datasets import VOCSegmentation as TVVOCSegmentation

        split = voc / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        if not split.is_file():
            raise FileNotFoundError(f"split list {split} not found\n{VOC_LAYOUT}")
        # torchvision's class lists the same paths (root = the folder holding VOCdevkit); download stays off
        tv = TVVOCSegmentation(str(voc.parent.parent), year="2012", image_set=image_set, download=False)
        return [VOCSample(Path(img).stem, img, mask, "png") for img, mask in zip(tv.images, tv.targets)]

    def _train_aug_samples(self, voc: Path, sbd: Path) -> list[VOCSample]:
        seg = voc / "ImageSets" / "Segmentation"
        voc_train, voc_val = _read_ids(seg / "train.txt", VOC_LAYOUT), _read_ids(seg / "val.txt", VOC_LAYOUT)
        sbd_train, sbd_val = _read_ids(sbd / "train.txt", SBD_LAYOUT), _read_ids(sbd / "val.txt", SBD_LAYOUT)
        in_sbd = set(sbd_train) | set(sbd_val)
        samples = []
        for i in train_aug_ids(voc_train, voc_val, sbd_train, sbd_val):
            voc_img, voc_png = voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png"
            image = voc_img if voc_img.exists() or i not in in_sbd else sbd / "img" / f"{i}.jpg"
            use_sbd = i in in_sbd and (self.label_priority == "sbd" or not voc_png.exists())
            if use_sbd:
                samples.append(VOCSample(i, str(image), str(sbd / "cls" / f"{i}.mat"), "mat"))
            else:
                samples.append(VOCSample(i, str(image), str(voc_png), "png"))
        return samples

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The label map of sample ``index`` as ``uint8 H x W`` class ids (255 = ignore)."""
        s = self.samples[index]
        return load_voc_mask(s.mask) if s.mask_format == "png" else load_sbd_mask(s.mask)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image

        s = self.samples[index]
        with Image.open(s.image) as im:
            image = im.convert("RGB")
        mask = self.load_mask(index)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"{s.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but image {s.image} is "
                             f"{image.height}x{image.width} (HxW); the annotation does not belong to this image")
        target = Image.fromarray(mask)  # uint8 H x W -> mode "L"
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        src = f", sbd_root={self.sbd_root!r}" if self.sbd_root else ""
        return (f"VOCSegmentation(image_set={self.image_set!r}, {len(self)} images, root={self.voc_root!r}{src}, "
                f"label_priority={self.label_priority!r})")
