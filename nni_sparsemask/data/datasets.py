"""The data sets by name: which class reads each, the tasks it fits, its classes and splits, and the checks a
command makes before it writes anything (:func:`check_task`, :func:`check_root`)::

    name         class (module)                task           classes  train / evaluation split (others)
    ade20k       ADE20K (ade20k)               segmentation   150      train / val
    msrab        MSRAB (saliency)              saliency       2        train / val (test, all)
    duts         DUTS (saliency)               saliency       2        train / test
    ecssd        ECSSD (saliency)              saliency       2        - / test (evaluation only)
    bsds500      BSDS500 (bsds500)             edges          2        trainval / test (train, val)
    voc          VOCSegmentation (voc)         segmentation   21       train, or train_aug with SBD / val
    digitscenes  DigitScenes (digitscenes)     segmentation 11, saliency 2, edges 2, classification 10;
                                               built in, no root: train / val

:func:`build_dataset` checks the task and the root and builds the dataset of a split with a transform; every
folder-based dataset returns what :class:`~.voc.VOCSegmentation` returns (see :mod:`.folders`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from nni_sparsemask.data.ade20k import ADE20K, ADE20K_CLASSES
from nni_sparsemask.data.ade20k import SPLITS as ADE20K_SPLITS
from nni_sparsemask.data.bsds500 import BSDS500, EDGE_CLASSES
from nni_sparsemask.data.bsds500 import SPLITS as BSDS500_SPLITS
from nni_sparsemask.data.digitscenes import DigitScenes
from nni_sparsemask.data.folders import PathLike, check_split, found_entries
from nni_sparsemask.data.saliency import DUTS, ECSSD, MSRAB, SALIENCY_CLASSES
from nni_sparsemask.data.scenes import SPLITS as SCENE_SPLITS
from nni_sparsemask.data.voc import SPLITS as VOC_SPLITS
from nni_sparsemask.data.voc import VOC_CLASSES, VOCSegmentation, resolve_voc_root

__all__ = ["DatasetEntry", "DATASETS", "dataset_entry", "check_task", "check_root", "num_classes", "class_names",
           "build_dataset"]

_DIGITS = tuple(f"digit {d}" for d in range(10))


@dataclass(frozen=True)
class DatasetEntry:
    """One data set: ``cls`` reads it; ``classes`` per task (``num_classes`` is their count); ``splits`` its
    splits, ``train_split`` / ``eval_split`` the ones to train on and to evaluate on (``train_split`` None: an
    evaluation-only set); ``needs_root``: False for the built-in DigitScenes."""

    name: str
    cls: type
    classes: Mapping[str, tuple[str, ...]]
    splits: tuple[str, ...]
    train_split: Optional[str]
    eval_split: str
    needs_root: bool = True

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.classes)

    @property
    def num_classes(self) -> dict[str, int]:
        return {task: len(names) for task, names in self.classes.items()}


DATASETS: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry("ade20k", ADE20K, {"segmentation": ADE20K_CLASSES}, ADE20K_SPLITS, "train", "val"),
    DatasetEntry("msrab", MSRAB, {"saliency": SALIENCY_CLASSES}, MSRAB.SPLITS, "train", "val"),
    DatasetEntry("duts", DUTS, {"saliency": SALIENCY_CLASSES}, DUTS.SPLITS, "train", "test"),
    DatasetEntry("ecssd", ECSSD, {"saliency": SALIENCY_CLASSES}, ECSSD.SPLITS, None, "test"),
    DatasetEntry("bsds500", BSDS500, {"edges": EDGE_CLASSES}, BSDS500_SPLITS, "trainval", "test"),
    DatasetEntry("voc", VOCSegmentation, {"segmentation": VOC_CLASSES}, VOC_SPLITS, "train", "val"),
    DatasetEntry("digitscenes", DigitScenes,
                 {"segmentation": ("background",) + _DIGITS, "saliency": ("background", "digit"),
                  "edges": ("background", "edge"), "classification": tuple(str(d) for d in range(10))},
                 SCENE_SPLITS, "train", "val", needs_root=False),
)}


def dataset_entry(dataset: str) -> DatasetEntry:
    """The entry of ``dataset``; ValueError naming the known data sets."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def check_task(dataset: str, task: str) -> DatasetEntry:
    """The entry of ``dataset`` if it has targets for ``task``; else ValueError, one line saying which tasks it
    supports (e.g. ``edges`` on ADE20K)."""
    entry = dataset_entry(dataset)
    if task not in entry.tasks:
        supported = f"task {entry.tasks[0]} only" if len(entry.tasks) == 1 else f"tasks {', '.join(entry.tasks)}"
        raise ValueError(f"dataset {dataset!r} supports {supported}, not task {task!r}")
    return entry


def num_classes(dataset: str, task: str) -> int:
    return check_task(dataset, task).num_classes[task]


def class_names(dataset: str, task: str) -> list[str]:
    return list(check_task(dataset, task).classes[task])


def _check_voc(root: Path, split: str) -> Path:
    voc = resolve_voc_root(root)
    if split != "train_aug":  # train_aug needs the SBD root too: VOCSegmentation checks it
        lst = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise FileNotFoundError(f"split list {lst} not found; {found_entries(lst.parent)}")
    return voc


def check_root(dataset: str, root: Optional[PathLike], split: Optional[str] = None) -> Optional[Path]:
    """The data set's folder under (or at) ``root`` that holds ``split`` (default: the training split, else the
    evaluation one); None for DigitScenes, which needs no root. A root laid out differently is a
    FileNotFoundError that shows the expected layout and lists the top-level entries found in ``root``."""
    entry = dataset_entry(dataset)
    split = split if split is not None else (entry.train_split or entry.eval_split)
    check_split(split, entry.splits, dataset)
    if not entry.needs_root:
        return None
    if root is None or str(root) == "":
        raise ValueError(f"dataset {dataset!r} needs its root folder (--data-root); it is read from local files, "
                         "nothing is downloaded")
    root = Path(root).expanduser()
    if dataset == "voc":
        try:
            return _check_voc(root, split)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}\n{found_entries(root)}") from None
    return entry.cls.resolve_root(root, split)


def build_dataset(dataset: str, root: Optional[PathLike] = None, split: Optional[str] = None,
                  task: Optional[str] = None, transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None,
                  **kwargs: Any) -> Any:
    """``dataset``'s split (default: its training split, else its evaluation one) for ``task`` (default: its
    first), after :func:`check_task` and :func:`check_root`. ``kwargs`` go to the class: ``sbd_root`` (voc),
    ``with_boundaries`` / ``threshold`` / ``ignore_uncertain`` (bsds500), config fields (digitscenes)."""
    entry = dataset_entry(dataset)
    task = task if task is not None else entry.tasks[0]
    check_task(dataset, task)
    split = split if split is not None else (entry.train_split or entry.eval_split)
    check_root(dataset, root, split)
    if dataset == "digitscenes":
        return DigitScenes(task=task, transform=transform, split=split, **kwargs)
    if dataset == "voc":
        return VOCSegmentation(root, split, transform=transform, **kwargs)
    return entry.cls(root, split, transform=transform, **kwargs)
