"""The three dense-prediction tasks of SparseMask's section 5: what a network is trained with and scored by.

=============  ==============================================  =====================================================
task           loss (:func:`task_loss`)                        scores (:class:`TaskMetrics`; main one first)
=============  ==============================================  =====================================================
segmentation   pixel-wise cross-entropy                        mIoU, PixAcc, Score = (PixAcc + mIoU) / 2 (ADE20K's),
                                                               foreground IoU
saliency       cross-entropy of the two classes, i.e. the      max F-beta (beta^2 = 0.3, 256 thresholds), MAE
               BCE of the foreground probability
edges          HED's class-balanced BCE (:func:`balanced_bce`)  ODS, OIS, AP with BSDS's boundary matching
=============  ==============================================  =====================================================

Saliency and edges use two-class networks: the foreground (salient object, edge) probability is
``softmax(logits)[:, 1] = sigmoid(l_1 - l_0)`` (:func:`foreground_probability`). Every task also keeps the
confusion-matrix scores of the arg-max (mIoU, PixAcc, foreground IoU), which show a collapse to "background only".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nni_sparsemask.measure.edges import EdgeMetrics
from nni_sparsemask.measure.saliency import SaliencyMetrics
from nni_sparsemask.measure.segmentation import SegmentationMetrics

__all__ = ["TASKS", "TaskInfo", "task_info", "check_task_name", "foreground_probability", "foreground_iou",
           "balanced_bce",
           "task_loss", "TaskMetrics", "EDGE_EVAL_THRESHOLDS"]

#: thresholds of the final edge evaluation (BSDS's 99); validation epochs use fewer (``edge_thresholds``)
EDGE_EVAL_THRESHOLDS = 99


@dataclass(frozen=True)
class TaskInfo:
    """``main``: the score a task is ranked by (NNI's ``default``, the y axis of its figures); ``label``: how
    tables and axes name it; ``scores``: every score of the task, main first; ``lower_is_better``: the scores
    where lower is better (MAE)."""

    name: str
    main: str
    label: str
    scores: tuple[str, ...]
    lower_is_better: tuple[str, ...] = ()


_CM = ("miou", "pixel_accuracy", "fg_iou")
TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("segmentation", "miou", "mIoU", _CM + ("score",)),
    TaskInfo("saliency", "max_fbeta", "max F-beta", ("max_fbeta", "mae") + _CM, lower_is_better=("mae",)),
    TaskInfo("edges", "ods", "ODS", ("ods", "ois", "ap") + _CM),
)}


def check_task_name(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def task_info(task: str) -> TaskInfo:
    return TASKS[check_task_name(task)]


def foreground_probability(logits: Tensor) -> Tensor:
    """``p = softmax(logits, dim=1)[:, 1] = sigmoid(l_1 - l_0)`` of two-class logits ``(N, 2, H, W)`` -> ``(N, H, W)``."""
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"a two-class task needs logits (N, 2, H, W), got {tuple(logits.shape)}")
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


def foreground_iou(confusion_matrix: Tensor) -> float:
    """IoU of classes ``1..C-1`` merged (the foreground) against class 0, from a ``C x C`` confusion matrix (rows
    ground truth); ``nan`` when neither the target nor the prediction has foreground."""
    m = confusion_matrix.double()
    tp = m[1:, 1:].sum()
    union = m[1:, :].sum() + m[:, 1:].sum() - tp
    return float(tp / union) if union > 0 else float("nan")


def balanced_bce(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """HED's class-balanced binary cross-entropy (Xie & Tu 2015, Eq. 2), over the batch's scored pixels::

        z = l_1 - l_0,   beta = |Y-| / |Y|,
        L = -( beta * sum_{y=1} log sigmoid(z) + (1 - beta) * sum_{y=0} log(1 - sigmoid(z)) ) / |Y|

    ``Y``: the pixels whose target is not ``ignore_index`` (``Y+`` edges, ``Y-`` the rest). Edges are rare, so
    each edge pixel weighs ``beta`` (close to 1) and each non-edge pixel ``1 - beta``. Returns 0 (with a gradient)
    when no pixel is scored."""
    z = logits[:, 1] - logits[:, 0] if logits.dim() == 4 else logits
    valid = target != ignore_index
    n = valid.sum()
    if int(n) == 0:
        return z.sum() * 0.0
    positive = (target == 1) & valid
    beta = (n - positive.sum()).to(z.dtype) / n.to(z.dtype)
    weight = torch.where(positive, beta, 1.0 - beta) * valid.to(z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, positive.to(z.dtype), weight=weight, reduction="sum")
    return loss / n.to(z.dtype)


def task_loss(task: str, logits: Tensor, target: Tensor, ignore_index: int = 255,
              class_weight: Optional[Tensor] = None) -> Tensor:
    """The training loss of ``task``: cross-entropy (``segmentation``, ``saliency``; mean over scored pixels,
    ``class_weight`` per class) or :func:`balanced_bce` (``edges``)."""
    if task == "edges":
        return balanced_bce(logits, target, ignore_index)
    check_task_name(task)
    return F.cross_entropy(logits, target.long(), weight=class_weight, ignore_index=ignore_index)


class TaskMetrics:
    """The scores of :data:`TASKS` for one task, accumulated over batches of logits and targets.

    ``update(logits, target)``; ``compute()`` -> ``{score: value}`` (the names of ``task_info(task).scores``);
    ``sums()`` / ``add_sums()``: the state as one float64 vector, which DDP processes add up. ``edge_thresholds``:
    how many thresholds ODS / OIS / AP sweep (BSDS: 99; validation epochs take fewer, the matching is the costly
    part). ``boundaries`` (edges only): a list of ``(A, H, W)`` annotator maps per image for ``update``, matched
    instead of the target's edge pixels (BSDS500 scores every annotator). ``edge_nms`` (edges only): thin the
    predicted edge map by non-maximum suppression first, as the evaluation scripts of HED / RCF do (BSDS's own
    benchmark does not)."""

    def __init__(self, task: str, num_classes: int, ignore_index: int = 255,
                 edge_thresholds: int = EDGE_EVAL_THRESHOLDS, edge_nms: bool = False) -> None:
        self.task = check_task_name(task)
        if edge_nms and task != "edges":
            raise ValueError(f"edge NMS applies to edge maps; this is a {task} network (leave --edge-nms out)")
        if task != "segmentation" and num_classes != 2:
            raise ValueError(f"task {task} takes two-class networks (background, foreground), got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = SegmentationMetrics(num_classes, ignore_index)
        self.extra: Optional[SaliencyMetrics | EdgeMetrics] = None
        if task == "saliency":
            self.extra = SaliencyMetrics()
        elif task == "edges":
            self.extra = EdgeMetrics(num_thresholds=edge_thresholds, nms=edge_nms)

    def reset(self) -> None:
        self.confusion.reset()
        if self.extra is not None:
            self.extra.reset()

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor, boundaries: Optional[list[Tensor]] = None) -> None:
        self.confusion.update(logits, target)
        if self.extra is None:
            return
        prob = foreground_probability(logits.float())
        if self.task == "saliency":
            self.extra.update(prob, target == 1)
        elif boundaries is None:
            self.extra.update(prob, target == 1)
        else:  # annotator maps at each image's own size: the prediction of a padded image is cropped to it
            if len(boundaries) != len(prob):
                raise ValueError(f"{len(boundaries)} boundary stacks for {len(prob)} images")
            for p, b in zip(prob, boundaries):
                b = b if b.dim() == 3 else b.unsqueeze(0)
                h, w = b.shape[-2:]
                if h > p.shape[0] or w > p.shape[1]:
                    raise ValueError(f"boundaries {tuple(b.shape[-2:])} are larger than the prediction "
                                     f"{tuple(p.shape)}: evaluate at the image's size (no resize)")
                self.extra.update(p[:h, :w], [b])

    def sums(self) -> Tensor:
        parts = [self.confusion.confusion_matrix.double().cpu().reshape(-1)]
        if self.extra is not None:
            parts.append(self.extra.sums())
        return torch.cat(parts)

    def add_sums(self, sums: Tensor) -> "TaskMetrics":
        sums = torch.as_tensor(sums, dtype=torch.float64).cpu().reshape(-1)
        c = self.num_classes * self.num_classes
        self.confusion.add_confusion_matrix(sums[:c].reshape(self.num_classes, self.num_classes).round().long())
        if self.extra is not None:
            self.extra.add_sums(sums[c:])
        return self

    def compute(self) -> dict[str, float]:
        scores = self.confusion.compute()
        out = {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
               "fg_iou": foreground_iou(scores.confusion_matrix)}
        if self.task == "segmentation":
            out["score"] = (out["miou"] + out["pixel_accuracy"]) / 2
        elif self.task == "saliency":
            s = self.extra.compute()
            out.update(max_fbeta=s.max_fbeta, mae=s.mae)
        else:
            e = self.extra.compute()
            out.update(ods=e.ods, ois=e.ois, ap=e.ap)
        return {k: out[k] for k in task_info(self.task).scores}
