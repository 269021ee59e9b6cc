"""Semantic segmentation scores from an accumulated confusion matrix: mIoU, per-class IoU, pixel accuracy and
mean class accuracy.

Labels use ``ignore_index`` (255 on VOC, the soft borders) for pixels that are not scored. Confusion matrices are
``C x C`` int64 with **rows = ground truth, columns = prediction**. Plain torch; nothing is computed at import time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["SegmentationMetrics", "SegmentationScores"]


@dataclass(frozen=True)
class SegmentationScores:
    """Scores derived from an accumulated confusion matrix ``M`` (rows = ground truth, columns = prediction).

    * ``iou[c] = M[c,c] / (sum_j M[c,j] + sum_i M[i,c] - M[c,c])`` = TP / (TP + FP + FN); ``nan`` when the
      class never occurs in the ground truth **and** is never predicted (0/0: the class is absent).
    * ``miou = nanmean(iou)``: the mean over the classes that are present in the target or the prediction.
    * ``pixel_accuracy = trace(M) / sum(M)`` (ignored pixels are not in ``M``).
    * ``class_accuracy[c] = M[c,c] / sum_j M[c,j]`` (recall; ``nan`` when class ``c`` is not in the target),
      ``mean_accuracy = nanmean(class_accuracy)``.
    """

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    iou: Tensor
    class_accuracy: Tensor
    confusion_matrix: Tensor
    num_pixels: int

    def as_dict(self, class_names: Optional[Sequence[str]] = None) -> dict:
        """Plain floats for JSON (``nan`` for absent classes is kept as ``None``)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"class_names has {len(names)} entries but there are {len(self.iou)} classes")
        iou = {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, self.iou.tolist())}
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "mean_accuracy": self.mean_accuracy,
                "num_pixels": self.num_pixels, "iou": iou}


def _nanmean(x: Tensor) -> float:
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if bool(valid.any()) else float("nan")


class SegmentationMetrics:
    """Accumulating confusion matrix for semantic segmentation (``update`` per batch, ``compute`` at the end).

    Pixels whose target equals ``ignore_index`` (255) are dropped before counting. IoU is computed on the
    confusion matrix accumulated over the whole data set (as the VOC devkit does), not averaged per image.

    **Absent classes.** A class that appears neither in the ground truth nor in the prediction of any
    accumulated pixel has IoU 0/0; it is reported as ``nan`` and left out of the mean (``nanmean``), like
    torchmetrics' ``JaccardIndex(average="macro")`` and the usual VOC evaluation code. A class that is
    predicted but absent from the ground truth (only false positives) has IoU 0 and *does* count, as does a
    class that is in the ground truth but never predicted.

    ``update(pred, target)`` accepts labels ``(N, H, W)`` / ``(H, W)`` or logits/scores ``(N, C, H, W)``
    (argmax over dim 1). Integer targets must lie in ``[0, num_classes)`` or equal ``ignore_index``.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} collides with a class id in [0, {num_classes}); "
                             "use a value outside the class range (255 by convention)")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._confmat: Optional[Tensor] = None

    def reset(self) -> None:
        """Forget every count accumulated so far."""
        self._confmat = None

    @property
    def confusion_matrix(self) -> Tensor:
        """The accumulated ``C x C`` int64 matrix (rows = ground truth, columns = prediction)."""
        if self._confmat is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self._confmat

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count one batch: ``pred`` labels (or logits over dim 1) against ``target`` (see the class docstring)."""
        c = self.num_classes
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != c:
                raise ValueError(f"pred has {pred.shape[1]} channels (dim 1) but num_classes={c}")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred labels {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape; "
                             "resize the logits to the target size before scoring")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred labels and target must be integer tensors (pass logits as (N, C, H, W))")
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).long().to(pred.device)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel():
            if int(target.min()) < 0 or int(target.max()) >= c:
                raise ValueError(f"target values must be in [0, {c}) or ignore_index={self.ignore_index}; "
                                 f"found range [{int(target.min())}, {int(target.max())}]")
            if int(pred.min()) < 0 or int(pred.max()) >= c:
                raise ValueError(f"predicted labels must be in [0, {c}); "
                                 f"found range [{int(pred.min())}, {int(pred.max())}]")
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        if self._confmat is None:
            self._confmat = counts
        else:
            self._confmat += counts.to(self._confmat.device)

    @torch.no_grad()
    def add_confusion_matrix(self, counts: Tensor) -> "SegmentationMetrics":
        """Add a ``C x C`` matrix of pixel counts (rows = ground truth, columns = prediction) to the accumulated
        one, as if the pixels it counts had been passed to :meth:`update`; returns ``self``.

        For counts accumulated elsewhere, e.g. the confusion matrices of several processes summed by an
        ``all_gather``. ``counts`` must hold non-negative integers; the sum lies on the device of ``counts``.
        """
        c = self.num_classes
        if tuple(counts.shape) != (c, c):
            raise ValueError(f"counts must be a {c} x {c} confusion matrix, got shape {tuple(counts.shape)}")
        if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
            raise ValueError(f"counts must be an integer tensor of pixel counts, got {counts.dtype}")
        if counts.numel() and int(counts.min()) < 0:
            raise ValueError(f"counts must be non-negative, found {int(counts.min())}")
        self._confmat = self.confusion_matrix.to(counts.device) + counts.long()
        return self

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add another accumulator's counts into this one (e.g. results of parallel workers)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics over {other.num_classes} classes into {self.num_classes}")
        if other._confmat is not None:
            self.add_confusion_matrix(other._confmat)
        return self

    def compute(self) -> SegmentationScores:
        m = self.confusion_matrix.double()
        tp = torch.diagonal(m)
        gt = m.sum(dim=1)
        pr = m.sum(dim=0)
        union = gt + pr - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
        total = m.sum()
        pixacc = float(tp.sum() / total) if total > 0 else float("nan")
        return SegmentationScores(miou=_nanmean(iou), pixel_accuracy=pixacc, mean_accuracy=_nanmean(acc),
                                  iou=iou.float().cpu(), class_accuracy=acc.float().cpu(),
                                  confusion_matrix=self.confusion_matrix.cpu().clone(), num_pixels=int(total))
