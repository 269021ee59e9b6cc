"""ADE20K scene parsing (the MIT Scene Parsing Benchmark, 150 classes) from local files.

Nothing is ever downloaded. Expected layout (``ADEChallengeData2016.zip`` as extracted)::

    <root>/ADEChallengeData2016/
        images/training/ADE_train_<n>.jpg        20,210 images
        images/validation/ADE_val_<n>.jpg         2,000 images
        annotations/training/ADE_train_<n>.png    grey-level PNG: 0 = "other" (not scored), 1..150 = the classes
        annotations/validation/ADE_val_<n>.png

``root`` may also be ``ADEChallengeData2016`` itself. Splits: ``train`` (``training``) and ``val``
(``validation``). Labels are shifted as in the benchmark's evaluation and mmsegmentation's
``reduce_zero_label``: file value ``0`` -> ``255`` (the ignore index of :mod:`nni_sparsemask.data.voc`),
``1..150`` -> ``0..149``; :data:`ADE20K_CLASSES` names ``0..149``. A value above 150 is an error naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from nni_sparsemask.data.folders import PairedFolder, PathLike, check_split, pair_by_stem, resolve_layout

__all__ = ["ADE20K", "ADE20K_CLASSES", "NUM_CLASSES", "IGNORE_INDEX", "SPLITS", "ADE20K_LAYOUT", "load_ade_mask"]

#: the 150 classes of objectInfo150.txt (first name of each), in label order 0..149
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
NUM_CLASSES = len(ADE20K_CLASSES)  # 150
IGNORE_INDEX = 255
SPLITS = ("train", "val")
_FOLDER = {"train": "training", "val": "validation"}

ADE20K_LAYOUT = """expected ADE20K scene-parsing layout (from ADEChallengeData2016.zip):
    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png"""


def load_ade_mask(path: PathLike) -> np.ndarray:
    """An ADE20K annotation PNG as ``uint8 H x W``: ``0`` -> 255 (ignored), ``1..150`` -> ``0..149``."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: annotation PNG has mode {im.mode!r}; ADEChallengeData2016 annotations are "
                             "grey-level ('L') images whose values are the class ids 0..150 (the full ADE20K "
                             "release's RGB-coded masks are not this layout)")
        arr = np.array(im, dtype=np.uint8)
    values = np.unique(arr)
    bad = values[values > NUM_CLASSES]
    if bad.size:
        raise ValueError(f"{path}: label values {bad.tolist()[:10]} are not ADE20K class ids (0 = other, "
                         f"1..{NUM_CLASSES}); is this an ADEChallengeData2016 annotation?")
    out = arr - 1  # uint8: 0 wraps to 255
    return out


class ADE20K(PairedFolder):
    """ADE20K scene parsing: ``split`` ``train`` (20,210 images) or ``val`` (2,000). 150 classes, ``ignore_index``
    255 (the file's "other", 0). ``dataset[i]`` as :class:`~nni_sparsemask.data.voc.VOCSegmentation`'s:
    ``transform(image, target)``, or the PIL pair (RGB image, ``'L'`` labels) without a transform. Every image
    must have its annotation and the reverse (a partial copy fails when the dataset is built)."""

    classes = ADE20K_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None) -> None:
        super().__init__(check_split(split, SPLITS, "ADE20K"), transform)
        base = self.resolve_root(root, split)
        self.root = str(base)
        folder = _FOLDER[split]
        self.samples = pair_by_stem(base / "images" / folder, base / "annotations" / folder, ".jpg", ".png",
                                    ADE20K_LAYOUT)

    @staticmethod
    def resolve_root(root: PathLike, split: str = "train") -> Path:
        """The ``ADEChallengeData2016`` folder under (or at) ``root`` holding ``split``; FileNotFoundError with the
        expected layout and what ``root`` holds."""
        folder = _FOLDER[check_split(split, SPLITS, "ADE20K")]
        root = Path(root).expanduser()
        return resolve_layout(root, [root / "ADEChallengeData2016", root],
                              [f"images/{folder}", f"annotations/{folder}"], "ADE20K", ADE20K_LAYOUT)

    def load_target(self, index: int) -> np.ndarray:
        return load_ade_mask(self.samples[index].mask)
