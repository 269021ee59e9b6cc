"""Salient-object scores as the salient-object-detection community computes them (MSRA-B / ECSSD / DUTS tables):
max F-beta (``beta^2 = 0.3``) over 256 thresholds, and MAE -- the definitions of the community's evaluation code
(the MATLAB toolboxes and their Python port ``pysodmetrics``, ``Fmeasure`` / ``MAE``), to which the tests compare
this module (``tests/test_metrics_peers.py``: agreement to 1e-4; measured 1e-16 on the scores and 3e-8 on the
curves, which are kept in float32).

Predictions are probabilities in ``[0, 1]`` (float) or 8-bit maps (``uint8``, ``0..255``, as read from the PNGs
the community evaluates); ground truth is binary (``> 0.5`` is positive; a ``uint8`` mask: ``> 128``).

Why not torchmetrics (1.x, a dependency of the package): it has no salient-object F-measure. Its
``binary_precision_recall_curve(thresholds=...)`` gives the same per-image counts, but it leaves out the community's
per-image min-max normalisation and 8-bit truncation, returns NaN where the community takes ``0/0 = 0``, and loops
over the 256 thresholds for images above 50k pixels (~50x slower than the histogram here). MAE is the one score it
has: :func:`torchmetrics.functional.mean_absolute_error` computes it here, per image, on the normalised map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional import mean_absolute_error

from nni_sparsemask.measure._inputs import check_prob_pair

__all__ = ["SaliencyMetrics", "SaliencyScores"]


@dataclass(frozen=True)
class SaliencyScores:
    """``max_fbeta`` (maxF) = max over thresholds ``t`` of the **mean over images** of the per-image
    ``F_beta(t) = (1 + b2) P R / (b2 P + R)``; ``fbeta`` is that mean curve, ``mean_fbeta`` (meanF) its mean over
    the thresholds; ``precision`` / ``recall`` are the per-image P(t), R(t) averaged over images;
    ``adaptive_fbeta`` (adpF) is the mean per-image F at the threshold ``min(2 mean(S), 1)``; ``mae`` = mean over
    images of ``mean |S - G|``. ``thresholds`` increase: ``t_k = k / (num_thresholds - 1)``."""

    max_fbeta: float
    best_threshold: float
    mae: float
    thresholds: Tensor
    precision: Tensor
    recall: Tensor
    fbeta: Tensor
    num_images: int
    mean_fbeta: float = float("nan")
    adaptive_fbeta: float = float("nan")


class SaliencyMetrics:
    """Salient-object metrics exactly as the SOD community computes them (``pysodmetrics.Fmeasure`` / ``MAE``).

    Per image, with the prediction ``S`` and the binary mask ``G``:

    1. ``normalize=True`` (the community's default, MATLAB's ``mapminmax(im2double(S))``): ``S`` is scaled to
       ``[0, 1]`` by its own min and max (a constant map is left as it is). ``normalize=False`` takes ``S`` as
       given (``pysodmetrics``'s ``normalize=False``).
    2. ``S`` is truncated to ``K = num_thresholds`` levels, ``q = floor(S (K - 1))`` (``K = 256``: the 8-bit map
       ``uint8(S * 255)``), and binarised at every level ``k = 0..K-1`` (positive iff ``q >= k``).
    3. ``P = TP / #positive`` and ``R = TP / #G`` with ``0/0 := 0`` (an all-background mask has ``R = 0`` and so
       ``F = 0`` at every threshold), ``F = (1 + b2) P R / (b2 P + R)`` (``F = 0`` where ``P R = 0``).
    4. ``MAE = mean |S - G|`` (on the normalised ``S``); adaptive F at ``S >= min(2 mean(S), 1)``.

    Over the data set the per-image curves are averaged; maxF is the maximum of the mean F curve, meanF its mean.
    Everything is computed in float64 on the device of the inputs.
    """

    def __init__(self, beta2: float = 0.3, num_thresholds: int = 256, normalize: bool = True) -> None:
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        self.beta2 = float(beta2)
        self.num_thresholds = int(num_thresholds)
        self.normalize = bool(normalize)
        self.reset()

    def reset(self) -> None:
        k = self.num_thresholds
        self._p_sum = torch.zeros(k, dtype=torch.float64)
        self._r_sum = torch.zeros(k, dtype=torch.float64)
        self._f_sum = torch.zeros(k, dtype=torch.float64)
        self._mae_sum = 0.0
        self._adp_sum = 0.0
        self._n = 0

    def _fbeta(self, p: Tensor, r: Tensor) -> Tensor:
        num = (1 + self.beta2) * p * r
        return num / torch.where(num == 0, torch.ones_like(num), self.beta2 * p + r)

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor) -> None:
        """Add a batch: ``pred``, ``gt`` of shape ``(N, H, W)``, ``(N, 1, H, W)`` or ``(H, W)``."""
        pred64 = pred.detach().double() / 255 if pred.dtype == torch.uint8 else pred.detach().double()
        if gt.dtype == torch.uint8:
            gt = gt > 128
        checked, gt = check_prob_pair(pred64, gt, "SaliencyMetrics.update")
        pred64 = pred64.reshape(checked.shape)
        k = self.num_thresholds
        for s, g in zip(pred64, gt):
            if self.normalize and s.numel() and float(s.max()) != float(s.min()):
                s = (s - s.min()) / (s.max() - s.min())
            level = (s * (k - 1)).long().reshape(-1)  # truncation, as uint8(S * 255) on S >= 0
            g_flat = g.reshape(-1)
            # pixels with level >= t for every t: counts per level, reversed cumulative sum
            tp = torch.bincount(level[g_flat], minlength=k).flip(0).cumsum(0).flip(0).double()
            pos = torch.bincount(level, minlength=k).flip(0).cumsum(0).flip(0).double()
            n_fg = max(int(g_flat.sum()), 1)
            p = tp / pos.clamp_min(1)
            r = tp / n_fg
            self._p_sum += p.cpu()
            self._r_sum += r.cpu()
            self._f_sum += self._fbeta(p, r).cpu()
            self._mae_sum += float(mean_absolute_error(s, g.to(s.dtype)))
            self._adp_sum += self._adaptive(s, g)
            self._n += 1

    def _adaptive(self, s: Tensor, g: Tensor) -> float:
        binary = s >= min(2 * float(s.mean()), 1.0)
        inter = int((binary & g).sum())
        if inter == 0:
            return 0.0
        p, r = inter / int(binary.sum()), inter / int(g.sum())
        return (1 + self.beta2) * p * r / (self.beta2 * p + r)

    def sums(self) -> Tensor:
        """Everything :meth:`compute` needs, as one float64 vector of sums over images (processes of a DDP run
        add theirs up: :meth:`add_sums`)."""
        k = self.num_thresholds
        tail = torch.tensor([self._mae_sum, self._adp_sum, float(self._n)], dtype=torch.float64)
        return torch.cat([self._p_sum, self._r_sum, self._f_sum, tail]).reshape(3 * k + 3)

    def add_sums(self, sums: Tensor) -> "SaliencyMetrics":
        """Add the :meth:`sums` of other images (e.g. another process's) to this one's."""
        k = self.num_thresholds
        sums = torch.as_tensor(sums, dtype=torch.float64).cpu().reshape(-1)
        if sums.numel() != 3 * k + 3:
            raise ValueError(f"sums of {sums.numel()} values do not fit {k} thresholds (need {3 * k + 3})")
        self._p_sum += sums[:k]
        self._r_sum += sums[k:2 * k]
        self._f_sum += sums[2 * k:3 * k]
        self._mae_sum += float(sums[3 * k])
        self._adp_sum += float(sums[3 * k + 1])
        self._n += int(round(float(sums[3 * k + 2])))
        return self

    def compute(self) -> SaliencyScores:
        if self._n == 0:
            raise ValueError("SaliencyMetrics.compute() called before any update()")
        p, r, f = self._p_sum / self._n, self._r_sum / self._n, self._f_sum / self._n
        best = int(torch.argmax(f))
        thr = torch.arange(self.num_thresholds, dtype=torch.float64) / (self.num_thresholds - 1)
        return SaliencyScores(max_fbeta=float(f[best]), best_threshold=float(thr[best]), mae=self._mae_sum / self._n,
                              thresholds=thr.float(), precision=p.float(), recall=r.float(), fbeta=f.float(),
                              num_images=self._n, mean_fbeta=float(f.mean()), adaptive_fbeta=self._adp_sum / self._n)
