"""Edge-detection scores ODS / OIS / AP as the BSDS500 boundary benchmark computes them (see :class:`EdgeMetrics`).

Predictions are edge probabilities in ``[0, 1]``; ground truth is one binary boundary map per annotator
(``> 0.5`` is a boundary pixel). The per-image pieces (thinning, NMS, the bipartite matching) are in
:mod:`._bsds`. ``tests/test_metrics_peers.py`` compares this module with ``pyEdgeEval`` (a Python port of the
benchmark around BSDS's own C++ ``correspondPixels``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nni_sparsemask.measure._bsds import edge_nms, image_counts

__all__ = ["EdgeMetrics", "EdgeScores"]


@dataclass(frozen=True)
class EdgeScores:
    """``ods``: best F over one data-set-wide threshold (interpolated between thresholds, as BSDS's ``maxF``);
    ``ois``: F of the counts summed over images, each at its own best threshold; ``ap``: BSDS's area under the
    data-set precision/recall curve (``Area_PR``). ``precision`` / ``recall`` are the data-set curves at the
    increasing ``thresholds``."""

    ods: float
    ods_threshold: float
    ois: float
    ap: float
    thresholds: Tensor
    precision: Tensor
    recall: Tensor
    num_images: int
    ods_precision: float = float("nan")
    ods_recall: float = float("nan")
    ois_precision: float = float("nan")
    ois_recall: float = float("nan")


def _rpf(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BSDS: ``R = cntR / (sumR + (sumR == 0))``, ``P = cntP / (sumP + (sumP == 0))``, ``F = 2PR / (P + R + ((P + R) == 0))``
    from counts ``[..., (cntP, sumP, cntR, sumR)]``."""
    r = c[..., 2] / (c[..., 3] + (c[..., 3] == 0))
    p = c[..., 0] / (c[..., 1] + (c[..., 1] == 0))
    return r, p, 2 * p * r / (p + r + ((p + r) == 0))


def _max_f(thresh: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """BSDS's ``maxF``: the best F on the PR curve linearly interpolated between neighbouring thresholds
    (``d = linspace(0, 1)``, 100 points per segment; the first strict maximum in the benchmark's loop order)."""
    d = np.linspace(0.0, 1.0, 100)[None, :]
    t = np.concatenate([thresh[:1], (thresh[1:, None] * d + thresh[:-1, None] * (1 - d)).ravel()])
    rr = np.concatenate([r[:1], (r[1:, None] * d + r[:-1, None] * (1 - d)).ravel()])
    pp = np.concatenate([p[:1], (p[1:, None] * d + p[:-1, None] * (1 - d)).ravel()])
    f = 2 * pp * rr / (pp + rr + ((pp + rr) == 0))
    k = int(np.argmax(f))
    return float(f[k]), float(t[k]), float(pp[k]), float(rr[k])


def _area_pr(r: np.ndarray, p: np.ndarray) -> float:
    """BSDS's ``Area_PR``: ``[Ru, indR] = unique(R); P_int1 = interp1(Ru, P(indR), 0:0.01:1)`` with NaN (outside
    the recall range) as 0, ``sum(P_int1) * 0.01``; 0 if the curve has a single recall."""
    ru, ind = np.unique(r, return_index=True)
    if len(ru) <= 1:
        return 0.0
    return float(np.interp(np.linspace(0.0, 1.0, 101), ru, p[ind], left=0.0, right=0.0).sum() * 0.01)


class EdgeMetrics:
    """Edge-detection ODS / OIS / AP of the BSDS500 benchmark (``evaluation_bdry_image.m`` per image,
    ``collect_eval_bdry.m`` over the data set).

    Per image, at each of ``K = num_thresholds`` thresholds ``t_k = linspace(1/(K+1), 1 - 1/(K+1), K)`` (BSDS:
    ``K = 99``): the prediction is binarised (``E >= t_k``) and thinned to one-pixel-wide boundaries
    (``bwmorph(.., 'thin', inf)``; ``thin=False`` skips it). Each annotator's boundary map is matched one-to-one
    with it (``correspondPixels``: pairs within ``max_dist`` x the image diagonal, 0.0075 in BSDS; the largest
    matching of least summed distance, an exact assignment solved with SciPy). Recall counts every annotator's
    boundary pixels (``cntR``: matched, ``sumR``: all, summed over the annotators); precision counts the predicted
    pixels matched to *any* annotator (``cntP``) of all predicted pixels (``sumP``).

    * ODS: ``R``, ``P`` from the counts summed over all images; the best F along the PR curve interpolated
      between neighbouring thresholds (BSDS's ``maxF``).
    * OIS: each image's best threshold (the first maximum of its F over the ``K`` thresholds); the counts at
      those thresholds summed over the images, then F.
    * AP: BSDS's ``Area_PR``, the precision interpolated at recalls ``0, 0.01, .., 1`` (0 outside the curve's
      recall range), summed, times 0.01.

    ``nms=True`` first applies the Structured Edge toolbox's non-maximum suppression (``edgesNms``, as the
    evaluation scripts of HED / RCF / BDCN do; see :func:`._bsds.edge_nms`); BSDS itself does not, and the
    default leaves it to the caller.

    ``tolerance=r`` (an int, the only matching of earlier releases) selects a simplified matching instead: a
    predicted pixel is matched iff an annotator's boundary pixel lies within Chebyshev distance ``r`` (``0``:
    exact overlap) and vice versa, not one-to-one, no thinning; computed with torch on the inputs' device. The
    data-set scores are then aggregated as above.

    :meth:`update` takes ``pred`` ``(N, H, W)``, ``(N, 1, H, W)`` or ``(H, W)`` and ``gt`` of the same shape
    (one annotator), ``(N, A, H, W)`` (``(A, H, W)`` for one ``(H, W)`` image: ``A`` annotators) or a sequence of
    ``N`` tensors ``(A_i, H, W)``. Thinning and matching run on the CPU: at 99 thresholds, 0.2-0.6 s per 320x480
    image and annotator, up to ~1.6 s for a noisy map without NMS.

    Against pyEdgeEval 0.2.8 (BSDS's C++ matching) on lines and circles with two annotators, 99 thresholds,
    shifted / blurred / noisy predictions: ODS and OIS within 2e-3, AP within 8e-3 (``Area_PR`` interpolates
    ``P`` over the distinct recalls, which thinning makes non-monotone in the threshold: it magnifies count
    differences). The counts differ by a few pixels because BSDS's solver, on its sparse random graph of
    "unmatched" edges, sometimes matches up to ~1% fewer pairs than the largest matching found here, and because
    pyEdgeEval's thinning stops after a first subiteration that changes nothing where MATLAB's runs both.
    """

    def __init__(self, num_thresholds: int = 99, tolerance: int | None = None, *, max_dist: float = 0.0075,
                 thin: bool = True, nms: bool = False) -> None:
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        if tolerance is not None and tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels (or None for BSDS's matching), got {tolerance}")
        if max_dist <= 0:
            raise ValueError(f"max_dist must be > 0 (a fraction of the image diagonal), got {max_dist}")
        self.num_thresholds = int(num_thresholds)
        self.tolerance = None if tolerance is None else int(tolerance)
        self.max_dist = float(max_dist)
        self.thin = bool(thin)
        self.nms = bool(nms)
        k = self.num_thresholds
        self._thr = np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)
        self.thresholds = torch.from_numpy(self._thr)
        self.reset()

    def reset(self) -> None:
        # columns: cntP, sumP, cntR, sumR
        self._counts = np.zeros((self.num_thresholds, 4))
        self._best = np.zeros(4)
        self._n = 0

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor | Sequence[Tensor]) -> None:
        for e, g in _pairs(pred, gt):
            if self.nms:
                e = torch.from_numpy(edge_nms(e.cpu().numpy())).to(e.device)
            if self.tolerance is None:
                c = image_counts(e.cpu().numpy(), list(g.cpu().numpy()), self._thr, self.max_dist, self.thin)
            else:
                c = self._tolerance_counts(e, g)
            self._counts += c
            _, _, f = _rpf(c)
            self._best += c[int(np.argmax(f))]
            self._n += 1

    def _tolerance_counts(self, e: Tensor, g: Tensor) -> np.ndarray:
        binary = e.unsqueeze(0) >= torch.as_tensor(self._thr, device=e.device).view(-1, 1, 1)  # K x H x W
        sum_r = g.sum().expand(self.num_thresholds)
        r = self.tolerance
        if r == 0:
            cnt_p = (binary & g.any(0)).flatten(1).sum(1)
            cnt_r = sum((binary & ga).flatten(1).sum(1) for ga in g)
        else:
            g_dil = F.max_pool2d(g.float()[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] > 0
            cnt_p = (binary & g_dil.any(0)).flatten(1).sum(1)
            b_dil = F.max_pool2d(binary.float().unsqueeze(1), 2 * r + 1, stride=1, padding=r)[:, 0] > 0
            cnt_r = sum((b_dil & ga).flatten(1).sum(1) for ga in g)
        sum_p = binary.flatten(1).sum(1)
        return torch.stack([cnt_p, sum_p, cnt_r, sum_r], dim=1).double().cpu().numpy()

    def sums(self) -> Tensor:
        """Everything :meth:`compute` needs, as one float64 vector of sums over images (processes of a DDP run
        add theirs up: :meth:`add_sums`)."""
        return torch.from_numpy(np.concatenate([self._counts.reshape(-1), self._best, [float(self._n)]]))

    def add_sums(self, sums: Tensor) -> "EdgeMetrics":
        """Add the :meth:`sums` of other images (e.g. another process's) to this one's."""
        k = self.num_thresholds
        sums = torch.as_tensor(sums, dtype=torch.float64).cpu().reshape(-1).numpy()
        if sums.size != 4 * k + 5:
            raise ValueError(f"sums of {sums.size} values do not fit {k} thresholds (need {4 * k + 5})")
        self._counts += sums[:4 * k].reshape(k, 4)
        self._best += sums[4 * k:4 * k + 4]
        self._n += int(round(float(sums[-1])))
        return self

    def compute(self) -> EdgeScores:
        if self._n == 0:
            raise ValueError("EdgeMetrics.compute() called before any update()")
        r, p, _ = _rpf(self._counts)
        ods, ods_t, ods_p, ods_r = _max_f(self._thr, r, p)
        r_ois, p_ois, f_ois = _rpf(self._best)
        return EdgeScores(ods=ods, ods_threshold=ods_t, ois=float(f_ois), ap=_area_pr(r, p),
                          thresholds=self.thresholds.float(), precision=torch.from_numpy(p).float(),
                          recall=torch.from_numpy(r).float(), num_images=self._n, ods_precision=ods_p,
                          ods_recall=ods_r, ois_precision=float(p_ois), ois_recall=float(r_ois))


def _pairs(pred: Tensor, gt: Tensor | Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``[(E (H, W) float, G (A, H, W) bool)]`` per image, from the shapes :class:`EdgeMetrics` accepts."""
    what = "EdgeMetrics.update"
    single = pred.dim() == 2
    if single:
        pred = pred.unsqueeze(0)
    elif pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.dim() != 3:
        raise ValueError(f"{what}: pred {tuple(pred.shape)} must be (N, H, W), (N, 1, H, W) or (H, W)")
    pred = pred.detach().double() if pred.dtype == torch.float64 else pred.detach().float()
    if pred.numel() and (float(pred.min()) < 0.0 or float(pred.max()) > 1.0):
        raise ValueError(f"{what}: predictions must be probabilities in [0, 1] (apply sigmoid first); "
                         f"found range [{float(pred.min()):.3g}, {float(pred.max()):.3g}]")
    if isinstance(gt, (list, tuple)):
        gts = [torch.as_tensor(g) for g in gt]
        gts = [g.unsqueeze(0) if g.dim() == 2 else g for g in gts]
    elif gt.dim() == 2:
        gts = [gt.unsqueeze(0)]
    elif gt.dim() == 3:
        gts = [gt] if single else list(gt.unsqueeze(1))
    elif gt.dim() == 4:
        gts = list(gt)
    else:
        raise ValueError(f"{what}: gt {tuple(gt.shape)} must be pred's shape, (N, A, H, W) or a list of (A, H, W)")
    if len(gts) != len(pred) or any(g.dim() != 3 or g.shape[1:] != e.shape for e, g in zip(pred, gts)):
        raise ValueError(f"{what}: gt {[tuple(g.shape) for g in gts]} does not fit pred {tuple(pred.shape)}: "
                         "one (A, H, W) boundary stack per (H, W) prediction")
    return [(e, g.detach().to(e.device).float() > 0.5) for e, g in zip(pred, gts)]
