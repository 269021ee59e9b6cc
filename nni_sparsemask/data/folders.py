"""What the folder-based data sets (ADE20K, MSRA-B, DUTS, ECSSD, BSDS500) share: finding the root of a known layout
(with an error that shows the expected layout and what the folder actually holds), pairing images with their
annotations by file name, and a ``Dataset`` base that returns the pair as :class:`~nni_sparsemask.data.voc.
VOCSegmentation` does.

Like the VOC dataset, these store only paths (cheap to pickle for DataLoader workers and NNI trials) and read the
files in ``__getitem__``; nothing is ever downloaded.
"""
from __future__ import annotations

import abc

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch.utils.data

__all__ = ["PathLike", "Sample", "PairedFolder", "found_entries", "resolve_layout", "pair_by_stem", "read_ids",
           "check_split", "read_rgb"]

PathLike = Union[str, os.PathLike]
#: how many top-level entries an error lists
_SHOWN = 12


def found_entries(root: PathLike) -> str:
    """What ``root`` holds at its top level, for an error: ``found in ROOT: a/, b/, c.txt (and 3 more)``."""
    root = Path(root).expanduser()
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    if not entries:
        return f"{root} is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:_SHOWN]]
    more = f" (and {len(entries) - _SHOWN} more)" if len(entries) > _SHOWN else ""
    return f"found in {root}: {', '.join(names)}{more}"


def resolve_layout(root: PathLike, candidates: Sequence[Path], required: Sequence[str], name: str,
                   layout: str) -> Path:
    """The first of ``candidates`` (folders under or at ``root``) that holds every path of ``required``.

    FileNotFoundError otherwise: the candidate that holds part of the layout and what it misses, or that none
    does, with the expected ``layout`` and the top-level entries of ``root``.
    """
    root = Path(root).expanduser()
    tops = {r.split("/")[0] for r in required}
    partial = None
    for cand in candidates:
        if not cand.is_dir():
            continue
        missing = [r for r in required if not (cand / r).exists()]
        if not missing:
            return cand
        if partial is None and any((cand / t).exists() for t in tops):  # part of the layout is there
            partial = (cand, missing)
    found = found_entries(root)
    if partial is not None:
        cand, missing = partial
        head = f"{name} root {cand} is incomplete, missing: {', '.join(str(cand / m) for m in missing)}"
        found += f"; {found_entries(cand)}" if cand != root else ""
    else:
        head = f"no {name} layout found at {root} (nothing is downloaded)"
    raise FileNotFoundError(f"{head}; {found}\n{layout}")


def read_ids(path: Path, layout: str) -> list[str]:
    """The ids of a split list (one per line; an extension such as ``.jpg`` / ``.png`` is dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found; {found_entries(path.parent)}\n{layout}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [i.rsplit(".", 1)[0] if i.lower().endswith((".jpg", ".jpeg", ".png")) else i for i in ids]


def check_split(split: str, splits: Sequence[str], name: str) -> str:
    if split not in splits:
        raise ValueError(f"{name} has split(s) {', '.join(splits)}, got {split!r}")
    return split


def _stems(folder: Path, ext: str) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ext and p.is_file()}


def _examples(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def pair_by_stem(image_dir: Path, mask_dir: Path, image_ext: str, mask_ext: str, layout: str,
                 ids: Optional[Sequence[str]] = None) -> list["Sample"]:
    """``Sample(id, image, mask)`` for every ``<id><image_ext>`` of ``image_dir`` with its ``<id><mask_ext>`` in
    ``mask_dir``, sorted by id (or in the order of ``ids``, a split list). An image without its annotation, or an
    annotation without its image, is a partial copy: FileNotFoundError naming some of them."""
    images, masks = _stems(image_dir, image_ext), _stems(mask_dir, mask_ext)
    if ids is None:
        if not images:
            raise FileNotFoundError(f"no *{image_ext} images in {image_dir}; {found_entries(image_dir)}\n{layout}")
        lonely_images, lonely_masks = set(images) - set(masks), set(masks) - set(images)
        ids = sorted(images)
    else:
        lonely_images = {i for i in ids if i in images and i not in masks}
        lonely_masks = {i for i in ids if i in masks and i not in images}
        absent = [i for i in ids if i not in images and i not in masks]
        if absent:
            raise FileNotFoundError(f"{len(absent)} ids of the split list have neither image nor annotation, e.g. "
                                    f"{_examples(absent)} (looked in {image_dir} and {mask_dir}); the copy is "
                                    f"partial.\n{layout}")
    if lonely_images:
        raise FileNotFoundError(f"{len(lonely_images)} images in {image_dir} have no *{mask_ext} annotation in "
                                f"{mask_dir}, e.g. {_examples(lonely_images)}; the copy is partial.\n{layout}")
    if lonely_masks:
        raise FileNotFoundError(f"{len(lonely_masks)} annotations in {mask_dir} have no *{image_ext} image in "
                                f"{image_dir}, e.g. {_examples(lonely_masks)}; the copy is partial.\n{layout}")
    return [Sample(i, str(images[i]), str(masks[i])) for i in ids]


def read_rgb(path: PathLike):
    """The image at ``path`` as a PIL RGB image (grey-level JPEGs, which ADE20K has, are converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass(frozen=True)
class Sample:
    """One sample: its id, the image path and the annotation path."""

    id: str
    image: str
    mask: str


class PairedFolder(torch.utils.data.Dataset, abc.ABC):
    """Images paired with one annotation file each; subclasses set ``samples`` and define :meth:`load_target`.

    ``dataset[i]`` is ``transform(image, target)`` with ``image`` a PIL RGB image and ``target`` a PIL ``'L'``
    image of labels (``ignore_index`` 255 where a pixel is not scored); without a transform that pair itself,
    as :class:`~nni_sparsemask.data.voc.VOCSegmentation` returns it (see :mod:`nni_sparsemask.data.transforms`:
    ``train_transform`` / ``eval_transform`` give ``(FloatTensor 3xHxW, LongTensor HxW)``).
    """

    classes: tuple[str, ...] = ()
    ignore_index = 255
    samples: list[Sample]

    def __init__(self, split: str, transform: Optional[Callable[[Any, Any], tuple[Any, Any]]]) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be a callable transform(image, target), got {type(transform).__name__}")
        self.split = split
        self.transform = transform
        self.root = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @abc.abstractmethod
    def load_target(self, index: int) -> np.ndarray:
        """The target of sample ``index`` as ``uint8 H x W`` labels (255 = ignore); each data set reads its own."""

    def _image_and_target(self, index: int, target: Optional[np.ndarray] = None) -> tuple[Any, Any]:
        """The PIL pair of sample ``index`` (``target``: the labels when the caller already has them)."""
        from PIL import Image

        s = self.samples[index]
        image = read_rgb(s.image)
        target = self.load_target(index) if target is None else target
        if target.shape != (image.height, image.width):
            raise ValueError(f"{s.mask}: annotation is {target.shape[0]}x{target.shape[1]} but image {s.image} is "
                             f"{image.height}x{image.width} (HxW); the annotation does not belong to this image")
        return image, Image.fromarray(target)  # uint8 H x W -> mode "L"

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, target = self._image_and_target(index)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, {len(self)} images, root={self.root!r})"
