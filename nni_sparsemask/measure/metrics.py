"""Evaluation metrics: segmentation (mIoU, per-class IoU, pixel accuracy), saliency (max F-beta, MAE),
edges (ODS / OIS / AP, simplified), parameter counts split encoder + decoder, and inference speed (FPS).

Everything here is plain torch; nothing is computed at import time.

Conventions
-----------
* Segmentation labels use ``ignore_index`` (255 on VOC, the soft borders) for pixels that are not scored.
* Confusion matrices are ``C x C`` int64 with **rows = ground truth, columns = prediction**.
* Saliency / edge predictions are probabilities in ``[0, 1]``; ground truth is binary (``> 0.5`` is positive).
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nni_sparsemask.measure.deploy import AS_GIVEN, INFERENCE_FORM, as_measured

__all__ = [
    "SegmentationMetrics",
    "SegmentationScores",
    "SaliencyMetrics",
    "SaliencyScores",
    "EdgeMetrics",
    "EdgeScores",
    "ParamCount",
    "count_parameters",
    "format_params",
    "FPSResult",
    "measure_fps",
    "INFERENCE_FORM",
]


# ----------------------------------------------------------------------------------------------------------
# Semantic segmentation
# ----------------------------------------------------------------------------------------------------------

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
        self._confmat = None

    @property
    def confusion_matrix(self) -> Tensor:
        """The accumulated ``C x C`` int64 matrix (rows = ground truth, columns = prediction)."""
        if self._confmat is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self._confmat

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
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

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add another accumulator's counts into this one (e.g. results of parallel workers)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics over {other.num_classes} classes into {self.num_classes}")
        if other._confmat is not None:
            mine = self.confusion_matrix.to(other._confmat.device)
            self._confmat = mine + other._confmat
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


# ----------------------------------------------------------------------------------------------------------
# Saliency
# ----------------------------------------------------------------------------------------------------------

def _check_prob_pair(pred: Tensor, gt: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if pred.dim() == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if gt.dim() == 4 and gt.shape[1] == 1:
        gt = gt[:, 0]
    if pred.dim() != 3 or pred.shape != gt.shape:
        raise ValueError(f"{what}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (N, H, W) "
                         "(or (H, W) / (N, 1, H, W)) of the same size")
    pred = pred.detach().float()
    if pred.numel() and (float(pred.min()) < 0.0 or float(pred.max()) > 1.0):
        raise ValueError(f"{what}: predictions must be probabilities in [0, 1] (apply sigmoid first); "
                         f"found range [{float(pred.min()):.3g}, {float(pred.max()):.3g}]")
    return pred, gt.detach().to(pred.device).float() > 0.5


@dataclass(frozen=True)
class SaliencyScores:
    """``max_fbeta`` = max over thresholds of ``F_beta(t) = (1 + b2) P(t) R(t) / (b2 P(t) + R(t))`` with
    ``P(t)``, ``R(t)`` the precision and recall **averaged over images** at threshold ``t``; ``mae`` = mean
    over images of ``mean |S - G|``."""

    max_fbeta: float
    best_threshold: float
    mae: float
    thresholds: Tensor
    precision: Tensor
    recall: Tensor
    fbeta: Tensor
    num_images: int


class SaliencyMetrics:
    """Salient-object metrics as reported in the saliency literature (e.g. MSRA-B / ECSSD tables).

    For each image the prediction ``S`` in ``[0, 1]`` is quantised to ``num_thresholds`` levels and
    binarised at every level ``t_k = k / (num_thresholds - 1)`` (positive iff ``round(S (K-1)) >= k``).
    Per image: ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)`` with ``0/0 := 0``; these are averaged over
    the images, ``F_beta`` (``beta^2 = 0.3`` by default) is computed from the mean P and R for each
    threshold and the maximum is reported (maxF). ``MAE = mean_images mean_pixels |S - G|``.
    """

    def __init__(self, beta2: float = 0.3, num_thresholds: int = 256) -> None:
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        self.beta2 = float(beta2)
        self.num_thresholds = int(num_thresholds)
        self.reset()

    def reset(self) -> None:
        self._p_sum = torch.zeros(self.num_thresholds, dtype=torch.float64)
        self._r_sum = torch.zeros(self.num_thresholds, dtype=torch.float64)
        self._mae_sum = 0.0
        self._n = 0

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor) -> None:
        pred, gt = _check_prob_pair(pred, gt, "SaliencyMetrics.update")
        k = self.num_thresholds
        for s, g in zip(pred, gt):
            level = torch.round(s * (k - 1)).long().reshape(-1)
            g = g.reshape(-1)
            # counts per level, then reversed cumulative sum: #pixels with level >= k
            fg = torch.bincount(level[g], minlength=k).flip(0).cumsum(0).flip(0).double()
            allc = torch.bincount(level, minlength=k).flip(0).cumsum(0).flip(0).double()
            n_pos = float(g.sum())
            precision = torch.where(allc > 0, fg / allc.clamp_min(1), torch.zeros_like(fg))
            recall = fg / n_pos if n_pos > 0 else torch.zeros_like(fg)
            self._p_sum += precision.cpu()
            self._r_sum += recall.cpu()
            self._mae_sum += float((s - g.reshape(s.shape).float()).abs().mean())
            self._n += 1

    def compute(self) -> SaliencyScores:
        if self._n == 0:
            raise ValueError("SaliencyMetrics.compute() called before any update()")
        p = self._p_sum / self._n
        r = self._r_sum / self._n
        den = self.beta2 * p + r
        f = torch.where(den > 0, (1 + self.beta2) * p * r / den.clamp_min(1e-300), torch.zeros_like(den))
        best = int(torch.argmax(f))
        thr = torch.arange(self.num_thresholds, dtype=torch.float64) / (self.num_thresholds - 1)
        return SaliencyScores(max_fbeta=float(f[best]), best_threshold=float(thr[best]), mae=self._mae_sum / self._n,
                              thresholds=thr.float(), precision=p.float(), recall=r.float(), fbeta=f.float(),
                              num_images=self._n)


# ----------------------------------------------------------------------------------------------------------
# Edges (simplified BSDS benchmark)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EdgeScores:
    """``ods``: best F1 over thresholds with counts summed over the data set (one threshold for all images);
    ``ois``: F1 from counts summed over images, each at its own best threshold; ``ap``: area under the
    data-set precision/recall curve."""

    ods: float
    ods_threshold: float
    ois: float
    ap: float
    thresholds: Tensor
    precision: Tensor
    recall: Tensor
    num_images: int


def _f1(p: Tensor, r: Tensor) -> Tensor:
    den = p + r
    return torch.where(den > 0, 2 * p * r / den.clamp_min(1e-300), torch.zeros_like(den))


class EdgeMetrics:
    """Edge-detection scores ODS / OIS / AP in the form of the BSDS500 benchmark, **simplified**.

    Thresholds are ``t_k = k / (K + 1)``, ``k = 1..K`` (``K = 99`` as in BSDS); a pixel is an edge iff
    ``E >= t_k``. For each image and threshold we count ``cntP`` (predicted edge pixels that are matched),
    ``sumP`` (predicted edge pixels), ``cntR`` (ground-truth edge pixels that are matched) and ``sumR``;
    ``P = cntP / sumP``, ``R = cntR / sumR``, ``F = 2PR / (P + R)``.

    * ODS: ``P``, ``R`` from counts summed over all images, max F over thresholds.
    * OIS: for each image its best-F threshold; counts at those thresholds summed, then F.
    * AP: ``sum_k (R_k - R_{k+1}) P_k`` over increasing thresholds with ``R_{K+1} = 0`` (the step-wise area
      under the data-set PR curve, as sklearn's ``average_precision_score``; BSDS interpolates instead).

    Simplified with respect to the BSDS benchmark: (1) **matching** — with ``tolerance=0`` (default) a
    predicted pixel is matched only if it is itself a ground-truth edge pixel (exact overlap); with
    ``tolerance=r`` a predicted pixel is matched if a GT edge pixel lies within Chebyshev distance ``r`` and
    vice versa, but without BSDS's one-to-one bipartite assignment (``correspondPixels``, max distance
    0.0075 x image diagonal), so one predicted pixel may match several GT pixels; (2) no non-maximum
    suppression / thinning of the predictions (apply it before ``update`` if wanted); (3) a single binary
    ground truth per image (BSDS scores against all human annotators; pass e.g. their union or consensus).
    """

    def __init__(self, num_thresholds: int = 99, tolerance: int = 0) -> None:
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.num_thresholds = int(num_thresholds)
        self.tolerance = int(tolerance)
        self.thresholds = torch.arange(1, self.num_thresholds + 1, dtype=torch.float64) / (self.num_thresholds + 1)
        self.reset()

    def reset(self) -> None:
        k = self.num_thresholds
        # columns: cntP, sumP, cntR, sumR
        self._counts = torch.zeros(k, 4, dtype=torch.float64)
        self._best = torch.zeros(4, dtype=torch.float64)
        self._n = 0

    def _image_counts(self, e: Tensor, g: Tensor) -> Tensor:
        thr = self.thresholds.to(e.device, torch.float32).view(-1, 1, 1)
        binary = (e.unsqueeze(0) >= thr)  # K x H x W
        sum_p = binary.flatten(1).sum(1)
        sum_r = g.sum().expand(self.num_thresholds)
        if self.tolerance == 0:
            cnt = (binary & g.unsqueeze(0)).flatten(1).sum(1)
            cnt_p = cnt_r = cnt
        else:
            r = self.tolerance
            g_dil = F.max_pool2d(g.float()[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] > 0
            cnt_p = (binary & g_dil.unsqueeze(0)).flatten(1).sum(1)
            b_dil = F.max_pool2d(binary.float().unsqueeze(1), 2 * r + 1, stride=1, padding=r)[:, 0] > 0
            cnt_r = (b_dil & g.unsqueeze(0)).flatten(1).sum(1)
        return torch.stack([cnt_p, sum_p, cnt_r, sum_r], dim=1).double().cpu()

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor) -> None:
        pred, gt = _check_prob_pair(pred, gt, "EdgeMetrics.update")
        for e, g in zip(pred, gt):
            c = self._image_counts(e, g)
            self._counts += c
            p = torch.where(c[:, 1] > 0, c[:, 0] / c[:, 1].clamp_min(1), torch.zeros_like(c[:, 0]))
            r = torch.where(c[:, 3] > 0, c[:, 2] / c[:, 3].clamp_min(1), torch.zeros_like(c[:, 0]))
            self._best += c[int(torch.argmax(_f1(p, r)))]
            self._n += 1

    def compute(self) -> EdgeScores:
        if self._n == 0:
            raise ValueError("EdgeMetrics.compute() called before any update()")
        c = self._counts
        p = torch.where(c[:, 1] > 0, c[:, 0] / c[:, 1].clamp_min(1), torch.zeros_like(c[:, 0]))
        r = torch.where(c[:, 3] > 0, c[:, 2] / c[:, 3].clamp_min(1), torch.zeros_like(c[:, 0]))
        f = _f1(p, r)
        k = int(torch.argmax(f))
        b = self._best
        p_ois = float(b[0] / b[1]) if b[1] > 0 else 0.0
        r_ois = float(b[2] / b[3]) if b[3] > 0 else 0.0
        ois = 2 * p_ois * r_ois / (p_ois + r_ois) if p_ois + r_ois > 0 else 0.0
        # thresholds increase with k, so recall is non-increasing in k (matching is monotone in the threshold)
        r_next = torch.cat([r[1:], r.new_zeros(1)])
        ap = float(((r - r_next).clamp_min(0) * p).sum())
        return EdgeScores(ods=float(f[k]), ods_threshold=float(self.thresholds[k]), ois=ois, ap=ap,
                          thresholds=self.thresholds.float(), precision=p.float(), recall=r.float(),
                          num_images=self._n)


# ----------------------------------------------------------------------------------------------------------
# Model size and speed
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamCount:
    """Parameters of ``model.encoder`` and of everything else (the decoder, including the head)."""

    encoder: int
    decoder: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder

    def __str__(self) -> str:
        return format_params(self)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> ParamCount:
    """Count parameters split into encoder (``model.encoder``) and decoder (all other parameters).

    Shared (tied) parameters are counted once, buffers (BN running stats) are not counted. With
    ``trainable_only`` only parameters with ``requires_grad`` are counted.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `encoder` submodule; count_parameters splits "
                         "encoder (model.encoder, the backbone) from decoder (everything else)")
    enc_ids = {id(p) for p in encoder.parameters()}
    n_enc = n_dec = 0
    for p in model.parameters():  # nn.Module.parameters() already de-duplicates shared tensors
        if trainable_only and not p.requires_grad:
            continue
        if id(p) in enc_ids:
            n_enc += p.numel()
        else:
            n_dec += p.numel()
    return ParamCount(encoder=n_enc, decoder=n_dec)


def format_params(count: ParamCount, digits: int = 2) -> str:
    """Table 1's form: encoder+decoder in millions, e.g. ``"2.22+0.56M"``."""
    return f"{count.encoder / 1e6:.{digits}f}+{count.decoder / 1e6:.{digits}f}M"


@dataclass(frozen=True)
class FPSResult:
    """Inference speed measured by :func:`measure_fps`: ``fps = batch_size / mean_seconds``."""

    fps: float
    mean_seconds: float
    median_seconds: float
    device: str
    batch_size: int
    input_size: tuple[int, int]
    num_threads: int
    num_runs: int
    form: str = AS_GIVEN

    def __str__(self) -> str:
        h, w = self.input_size
        return (f"{self.fps:.2f} FPS ({self.mean_seconds * 1e3:.2f} ms mean, {self.median_seconds * 1e3:.2f} ms "
                f"median per batch of {self.batch_size} at {h}x{w}, {self.num_runs} runs) on {self.device}, "
                f"{self.num_threads} threads, {self.form}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"{device.type}:{cpu}"


def measure_fps(model: nn.Module, input_size: Union[int, tuple[int, int]] = (512, 512), batch_size: int = 1,
                device: Union[str, torch.device, None] = None, warmup: int = 5, min_run_time: float = 2.0,
                num_threads: Optional[int] = None, in_channels: int = 3, inference: bool = False) -> FPSResult:
    """Frames per second of ``model`` on random input ``(batch_size, in_channels, H, W)``.

    Runs in eval mode under ``torch.no_grad()`` (the model's training flag is restored afterwards), does
    ``warmup`` untimed forward passes, then times with ``torch.utils.benchmark.Timer.blocked_autorange``
    (which synchronises CUDA around each block) for at least ``min_run_time`` seconds.
    ``fps = batch_size / mean seconds per forward``. ``device=None`` uses the device of the model's
    parameters; otherwise the model is **moved** to ``device``. ``num_threads`` defaults to
    ``torch.get_num_threads()`` (the Timer would otherwise use 1 thread).

    ``inference=True`` times the deployment form instead (:func:`nni_sparsemask.measure.deploy.inference_form`: a copy
    with BN folded and ``channels_last`` weights, fed ``channels_last`` input); ``model`` is left as it was.
    """
    from torch.utils import benchmark

    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1 or batch_size < 1:
        raise ValueError(f"input_size and batch_size must be positive, got {input_size}, {batch_size}")
    if warmup < 0 or min_run_time <= 0:
        raise ValueError(f"warmup must be >= 0 and min_run_time > 0, got {warmup}, {min_run_time}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is CUDA but torch.cuda.is_available() is False; pass device='cpu'")
    model = model.to(device)
    threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    model, x, form = as_measured(model, torch.randn(batch_size, in_channels, h, w, device=device), inference)
    was_training = model.training
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        model(x)

    try:
        for _ in range(warmup):
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads,
                                label="measure_fps", description=f"{batch_size}x{in_channels}x{h}x{w}")
        m = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    mean = float(m.mean)
    return FPSResult(fps=batch_size / mean, mean_seconds=mean, median_seconds=float(m.median),
                     device=_device_name(device), batch_size=batch_size, input_size=(h, w),
                     num_threads=threads, num_runs=int(sum(m.number_per_run for _ in m.raw_times)), form=form)
