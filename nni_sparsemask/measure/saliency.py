"""Salient-object scores as reported in the saliency literature (e.g. MSRA-B / ECSSD tables): max F-beta over
thresholds and MAE.

Predictions are probabilities in ``[0, 1]``; ground truth is binary (``> 0.5`` is positive).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nni_sparsemask.measure._inputs import check_prob_pair

__all__ = ["SaliencyMetrics", "SaliencyScores"]


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
        pred, gt = check_prob_pair(pred, gt, "SaliencyMetrics.update")
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
