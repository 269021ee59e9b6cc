"""The per-image pieces of the BSDS500 boundary benchmark (Arbelaez et al., TPAMI 2011), in NumPy / SciPy, used by
:mod:`.edges`:

* :func:`thin` -- MATLAB's ``bwmorph(bw, 'thin', inf)`` (the two-subiteration thinning of Lam, Lee & Suen, by
  3x3 lookup tables), applied to every thresholded prediction by ``evaluation_bdry_image.m``;
* :func:`edge_nms` -- the non-maximum suppression of the Structured Edge toolbox (``edgesNms`` / ``edgesNmsMex``,
  Dollar & Zitnick) that HED, RCF, BDCN... run on their maps before the benchmark;
* :func:`correspond_pixels` -- BSDS's ``correspondPixels``: a one-to-one matching of predicted and ground-truth
  boundary pixels within ``max_dist`` x the image diagonal that maximises the number of matched pairs and, among
  those, minimises the summed distance (BSDS solves the same assignment with its CSA solver; here SciPy's sparse
  Jonker-Volgenant, :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`);
* :func:`image_counts` -- ``cntR, sumR, cntP, sumP`` of one image at every threshold, as ``evaluation_bdry_image.m``
  accumulates them over the annotators.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

__all__ = ["thin", "edge_nms", "correspond_pixels", "image_counts"]

# neighbours x1..x8 of the thinning conditions, counter-clockwise from east: (row offset, column offset)
_NEIGHBOURS = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]


def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations, indexed by the 8-neighbourhood code ``sum x_i << (i - 1)``."""
    code = np.arange(256)
    x = [None] + [(code >> i) & 1 for i in range(8)]  # x[1..8]

    def nb(i: int) -> np.ndarray:
        return x[(i - 1) % 8 + 1]

    g1 = sum((1 - nb(2 * i - 1)) & (nb(2 * i) | nb(2 * i + 1)) for i in range(1, 5)) == 1
    n1 = sum(nb(2 * k - 1) | nb(2 * k) for k in range(1, 5))
    n2 = sum(nb(2 * k) | nb(2 * k + 1) for k in range(1, 5))
    g2 = (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((nb(2) | nb(3) | (1 - nb(8))) & nb(1)) == 0
    g3p = ((nb(6) | nb(7) | (1 - nb(4))) & nb(5)) == 0
    return g1 & g2 & g3, g1 & g2 & g3p


_DELETE1, _DELETE2 = _thin_tables()


def _neighbour_code(bw: np.ndarray) -> np.ndarray:
    p = np.pad(bw, 1).astype(np.int32)
    h, w = bw.shape
    code = np.zeros((h, w), np.int32)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << bit
    return code


def thin(bw: np.ndarray) -> np.ndarray:
    """``bwmorph(bw, 'thin', inf)``: both subiterations, repeated until the image no longer changes."""
    bw = np.asarray(bw, dtype=bool).copy()
    if not bw.any():
        return bw
    # work on the bounding box of the foreground (plus the 1-pixel frame the lookup reads)
    ys, xs = np.nonzero(bw)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = bw[y0:y1, x0:x1]
    while True:
        before = box.copy()
        for table in (_DELETE1, _DELETE2):
            box &= ~table[_neighbour_code(box)]
        if np.array_equal(box, before):
            break
    bw[y0:y1, x0:x1] = box
    return bw


def _conv_tri(img: np.ndarray, r: int) -> np.ndarray:
    """``convTri(I, r)`` of Dollar's toolbox for integer ``r >= 1``: separable triangle filter, symmetric padding."""
    if r == 1:
        f = np.array([1.0, 2.0, 1.0]) / 4.0  # p = 12 / r / (r + 2) - 2 = 2
    else:
        f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64) / (r + 1) ** 2
    out = ndimage.convolve1d(img, f, axis=0, mode="reflect")
    return ndimage.convolve1d(out, f, axis=1, mode="reflect")


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    dx0, dy0 = x - x0, y - y0
    dx1, dy1 = 1 - dx0, 1 - dy0
    return (img[y0, x0] * dx1 * dy1 + img[y0, x0 + 1] * dx0 * dy1 + img[y0 + 1, x0] * dx1 * dy0
            + img[y0 + 1, x0 + 1] * dx0 * dy0)


def edge_nms(pred: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Non-maximum suppression of an edge map as the Structured Edge toolbox's evaluation does it::

        E = convTri(E, 1); [Ox, Oy] = gradient2(convTri(E, 4)); [Oxx, ~] = gradient2(Ox); [Oxy, Oyy] = gradient2(Oy);
        O = mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi); E = edgesNmsMex(E, O, r=1, s=5, m=1.01, nThreads)

    A pixel is zeroed where ``m E`` is below the (bilinearly interpolated) map at distance ``1..r`` across its
    orientation; the ``s`` pixels nearest the border are ramped down linearly. Maps under 2 pixels a side are
    returned smoothed but unsuppressed.
    """
    edge = _conv_tri(np.asarray(pred, dtype=np.float64), 1)
    h, w = edge.shape
    if h < 2 or w < 2:
        return edge
    oy, ox = np.gradient(_conv_tri(edge, 4))
    oxx = np.gradient(ox)[1]  # np.gradient gives [d/dy, d/dx]; gradient2 gives [d/dx, d/dy]
    oyy, oxy = np.gradient(oy)
    ori = np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)
    out = edge.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cos_o, sin_o = np.cos(ori), np.sin(ori)
    stronger = edge * m
    for d in range(-r, r + 1):
        if d:
            out[(edge != 0) & (stronger < _bilinear(edge, xx + d * cos_o, yy + d * sin_o))] = 0
    s = min(s, w // 2, h // 2)
    col, row = np.ones(w), np.ones(h)
    for i in range(s):
        col[i] *= i / s
        col[w - 1 - i] *= i / s
        row[i] *= i / s
        row[h - 1 - i] *= i / s
    return out * col[None, :] * row[:, None]


def correspond_pixels(pred: np.ndarray, gt: np.ndarray, max_dist: float = 0.0075,
                      outlier_cost: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """``[match1, match2] = correspondPixels(pred, gt, max_dist)`` as booleans: which predicted / ground-truth
    boundary pixels are matched.

    Pixels ``p``, ``g`` may be paired when ``|p - g| <= max_dist * sqrt(H^2 + W^2)``; each pixel is paired at most
    once. BSDS's costs: a pair costs ``round(100 |p - g|)``, a pixel left unpaired ``ceil(100 oc)`` with
    ``oc = outlier_cost x`` the distance limit (so the matching is a largest one, of least summed distance). As a
    square assignment: rows are the predicted pixels then one "unpaired" slot per ground-truth pixel, columns the
    ground-truth pixels then one slot per predicted pixel; slot-to-slot edges (cost 1, as is 1 added to every pair,
    the solver takes no zero weights) mirror the candidate pairs, so any matching completes to a perfect one.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    h, w = pred.shape
    m1, m2 = np.zeros((h, w), bool), np.zeros((h, w), bool)
    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    if not len(py) or not len(gy):
        return m1, m2
    limit = max_dist * math.hypot(h, w)
    gid = np.full((h, w), -1, np.int64)
    gid[gy, gx] = np.arange(len(gy))
    rows, cols, costs = [], [], []
    rad = int(math.ceil(limit))
    for dy in range(-rad, rad + 1):
        for dx in range(-rad, rad + 1):
            d2 = dx * dx + dy * dy
            if d2 > limit * limit:
                continue
            y2, x2 = py + dy, px + dx
            inside = np.nonzero((y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w))[0]
            j = gid[y2[inside], x2[inside]]
            hit = j >= 0
            rows.append(inside[hit])
            cols.append(j[hit])
            costs.append(np.full(int(hit.sum()), float(np.rint(math.sqrt(d2) * 100)) + 1.0))
    rows, cols, costs = np.concatenate(rows), np.concatenate(cols), np.concatenate(costs)
    if not len(rows):
        return m1, m2
    # only matchable pixels enter the assignment
    pu, pi = np.unique(rows, return_inverse=True)
    gu, gi = np.unique(cols, return_inverse=True)
    n1, n2 = len(pu), len(gu)
    unpaired = float(math.ceil(outlier_cost * limit * 100))
    r_all = np.concatenate([pi, np.arange(n1), n1 + np.arange(n2), n1 + gi])
    c_all = np.concatenate([gi, n2 + np.arange(n1), np.arange(n2), n2 + pi])
    w_all = np.concatenate([costs, np.full(n1 + n2, unpaired), np.ones(len(pi))])
    n = n1 + n2
    row_ind, col_ind = min_weight_full_bipartite_matching(coo_matrix((w_all, (r_all, c_all)), shape=(n, n)).tocsr())
    real = (row_ind < n1) & (col_ind < n2)
    pm, gm = pu[row_ind[real]], gu[col_ind[real]]
    m1[py[pm], px[pm]] = True
    m2[gy[gm], gx[gm]] = True
    return m1, m2


def image_counts(pred: np.ndarray, gts: list[np.ndarray], thresholds: np.ndarray, max_dist: float = 0.0075,
                 thin_pred: bool = True) -> np.ndarray:
    """``(K, 4)`` float64 counts ``[cntP, sumP, cntR, sumR]`` at every threshold, as ``evaluation_bdry_image.m``:
    ``bmap = thin(pred >= t)``; for each annotator ``a`` ``[m1, m2] = correspondPixels(bmap, gt_a)``,
    ``cntR += |m2|``, ``sumR += |gt_a|``, the matched predicted pixels accumulated over the annotators
    (``accP |= m1``); ``cntP = |accP|``, ``sumP = |bmap|``.
    """
    out = np.zeros((len(thresholds), 4))
    gts = [np.asarray(g, dtype=bool) for g in gts]
    sum_r = float(sum(int(g.sum()) for g in gts))
    previous, previous_counts = None, None
    for k, t in enumerate(thresholds):
        bmap = pred >= t
        if thin_pred:
            bmap = thin(bmap)
        if previous is not None and np.array_equal(bmap, previous):
            out[k] = previous_counts  # same map as at the threshold below: same counts
            continue
        acc = np.zeros(bmap.shape, bool)
        cnt_r = 0
        for g in gts:
            m1, m2 = correspond_pixels(bmap, g, max_dist)
            acc |= m1
            cnt_r += int(m2.sum())
        out[k] = [acc.sum(), bmap.sum(), cnt_r, sum_r]
        previous, previous_counts = bmap, out[k].copy()
    return out
