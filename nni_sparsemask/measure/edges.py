"""Edge-detection scores ODS / OIS / AP in the form of the BSDS500 benchmark, simplified (see :class:`EdgeMetrics`).

Predictions are probabilities in ``[0, 1]``; ground truth is binary (``> 0.5`` is positive).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nni_sparsemask.measure._inputs import check_prob_pair

__all__ = ["EdgeMetrics", "EdgeScores"]


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
        pred, gt = check_prob_pair(pred, gt, "EdgeMetrics.update")
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
