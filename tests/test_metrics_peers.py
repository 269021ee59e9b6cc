"""SaliencyMetrics and EdgeMetrics against the field's reference implementations.

* Saliency: ``pysodmetrics`` (``py_sod_metrics.Fmeasure`` / ``MAE``, the salient-object-detection community's
  evaluation code), to 1e-4 on maps of several sizes, an all-background mask among them; the same numbers recorded
  from pysodmetrics 1.6.2 (its numpy<2.3.5 pin keeps it out of the ``dev`` extra) are checked without it; the
  per-image curves against torchmetrics' ``binary_precision_recall_curve``.
* Edges: ``pyEdgeEval`` (the BSDS500 benchmark around BSDS's own C++ ``correspondPixels`` and Dollar's NMS), to
  1e-2 on lines and circles with two annotators and shifted / blurred / noisy predictions; thinning against
  scikit-image's ``thin`` (MATLAB's ``bwmorph(.., 'thin', inf)``); worked examples by hand.

The peers are guarded with ``pytest.importorskip`` only; ``pip install -e '.[dev]'`` installs all but pysodmetrics.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from nni_sparsemask.measure._bsds import correspond_pixels, edge_nms, thin
from nni_sparsemask.measure.edges import EdgeMetrics
from nni_sparsemask.measure.saliency import SaliencyMetrics


# ---------------------------------------------------------------------------------------------------- saliency
def _hash_bytes(n: int, seed: int) -> np.ndarray:
    """Deterministic 0..255 values (splitmix64, no random-number library): the recorded values stay valid."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(56)).astype(np.int64)


def _saliency_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 prediction, uint8 mask 0/255): four sizes, the last mask all background."""
    out = []
    for i, (h, w) in enumerate([(37, 53), (64, 48), (90, 120), (31, 31)]):
        yy, xx = np.mgrid[:h, :w]
        fg = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2) & (i != 3)
        noise = _hash_bytes(h * w, i).reshape(h, w)
        pred = np.clip(fg * 100 + noise * 0.7 + 10 * i - 10, 0, 255).astype(np.uint8)
        out.append((pred, (fg * 255).astype(np.uint8)))
    return out


def _ours(cases, mode: str):
    m = SaliencyMetrics(normalize=(mode != "float_raw"))
    for u, g in cases:
        if mode == "uint8":
            m.update(torch.from_numpy(u), torch.from_numpy(g))
        else:  # the same map as probabilities in float64
            m.update(torch.from_numpy(u / 255.0), torch.from_numpy(g > 128).float())
    return m.compute()


#: pysodmetrics 1.6.2 on _saliency_cases() (uint8 maps, its defaults): maxF, meanF, adpF, MAE
PYSOD_RECORDED = {"max_fbeta": 0.608707335564939, "mean_fbeta": 0.40456244619435733,
                  "adaptive_fbeta": 0.48569634868544564, "mae": 0.3725741133746986}


def test_saliency_matches_pysodmetrics():
    sod = pytest.importorskip("py_sod_metrics")
    cases = _saliency_cases()
    worst = {}
    for mode in ("uint8", "float", "float_raw"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Fmeasure's "use FmeasureV2" notice
            fm, mae = sod.Fmeasure(), sod.MAE()
        for u, g in cases:
            if mode == "float_raw":  # normalize=False: the map as given, no per-image min-max scaling
                fm.step(u / 255.0, g > 128, normalize=False)
                mae.step(u / 255.0, g > 128, normalize=False)
            else:
                fm.step(u, g)
                mae.step(u, g)
        ref, s = fm.get_results(), _ours(cases, mode)
        curve = ref["fm"]["curve"][::-1]  # pysodmetrics: thresholds 255 .. 0
        diffs = {"max_fbeta": abs(s.max_fbeta - curve.max()), "mean_fbeta": abs(s.mean_fbeta - curve.mean()),
                 "adaptive_fbeta": abs(s.adaptive_fbeta - ref["fm"]["adp"]),
                 "mae": abs(s.mae - mae.get_results()["mae"]),
                 "fbeta curve": np.abs(s.fbeta.double().numpy() - curve).max(),
                 "precision curve": np.abs(s.precision.double().numpy() - ref["pr"]["p"][::-1]).max(),
                 "recall curve": np.abs(s.recall.double().numpy() - ref["pr"]["r"][::-1]).max()}
        for k, v in diffs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    print("largest |ours - pysodmetrics|:", worst)
    assert max(worst.values()) < 1e-4, worst


def test_saliency_recorded_pysodmetrics_values():
    s = _ours(_saliency_cases(), "uint8")
    for name, value in PYSOD_RECORDED.items():
        assert getattr(s, name) == pytest.approx(value, abs=1e-6), name
    assert s.num_images == 4 and s.best_threshold == pytest.approx(float(np.argmax(s.fbeta)) / 255)


def test_saliency_counts_match_torchmetrics_pr_curve():
    from torchmetrics.functional.classification import binary_precision_recall_curve

    u, g = _saliency_cases()[2]
    s = SaliencyMetrics(normalize=False)
    s.update(torch.from_numpy(u), torch.from_numpy(g))
    s = s.compute()
    levels = torch.floor(torch.from_numpy(u / 255.0) * 255)  # the 8-bit levels the community thresholds
    p, r, _ = binary_precision_recall_curve(levels.flatten() / 255, torch.from_numpy(g > 128).flatten().long(),
                                            thresholds=torch.arange(256, dtype=torch.float64) / 255)
    p, r = torch.nan_to_num(p[:-1]), torch.nan_to_num(r[:-1])  # torchmetrics: 0/0 = NaN; SOD: 0
    assert torch.allclose(s.precision.double(), p.double(), atol=1e-6)
    assert torch.allclose(s.recall.double(), r.double(), atol=1e-6)


def test_saliency_all_background_scores_zero_f():
    s = SaliencyMetrics()
    s.update(torch.rand(1, 20, 30, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 20, 30))
    out = s.compute()
    assert out.max_fbeta == 0.0 and out.adaptive_fbeta == 0.0 and float(out.recall.max()) == 0.0
    assert 0 < out.mae < 1


# ---------------------------------------------------------------------------------------------------- edges
def _circle(h, w, cy, cx, rad):
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2
    return inside & ~ndimage.binary_erosion(inside)


def _line(h, w, r0, c0, r1, c1):
    out = np.zeros((h, w), bool)
    n = 2 * max(abs(r1 - r0), abs(c1 - c0)) + 1
    out[np.rint(np.linspace(r0, r1, n)).astype(int), np.rint(np.linspace(c0, c1, n)).astype(int)] = True
    return out


def _edge_case(seed, h, w, kind):
    """Two annotators (a circle and a line each, 1 px apart) and a prediction: a ridge shifted by (2, 1) px, the
    second annotator blurred, or a ridge with multiplicative and additive noise."""
    rng = np.random.default_rng(seed)
    a1 = _circle(h, w, h / 2, w / 2, min(h, w) / 3) | _line(h, w, 3, 2, h - 4, w // 3)
    a2 = _circle(h, w, h / 2 + 1, w / 2 - 1, min(h, w) / 3 + 1) | _line(h, w, 3, 4, h - 4, w // 3 + 2)
    dist = ndimage.distance_transform_edt(~a1)
    if kind == "shifted":
        pred = np.exp(-np.roll(dist, (2, 1), (0, 1)) ** 2 / 2.0)
    elif kind == "blurred":
        pred = ndimage.gaussian_filter(a2.astype(float), 1.0)
        pred /= pred.max()
    else:
        pred = np.clip(np.exp(-dist ** 2 / 2.0) * (0.6 + 0.4 * rng.random((h, w))) + 0.15 * rng.random((h, w)), 0, 1)
    return pred, np.stack([a1, a2])


EDGE_CASES = [(0, 120, 160, "shifted"), (1, 150, 120, "blurred"), (2, 128, 176, "noisy"), (3, 100, 100, "noisy")]


@pytest.mark.parametrize("nms", [False, True], ids=["thinned", "nms+thinned"])
def test_edges_match_pyedgeeval(nms):
    pytest.importorskip("cv2")  # pyEdgeEval imports OpenCV without declaring it
    binary_label = pytest.importorskip("pyEdgeEval.common.binary_label")
    k = 33  # BSDS uses 99; fewer keep the peer (~0.1 s per image and threshold) inside the test budget
    cases = [_edge_case(*spec) for spec in EDGE_CASES]
    ours = EdgeMetrics(num_thresholds=k, nms=nms)
    for pred, gts in cases:
        ours.update(torch.from_numpy(pred), torch.from_numpy(gts))
    s = ours.compute()
    thresholds = np.linspace(1 / (k + 1), 1 - 1 / (k + 1), k)

    def one(sample):
        return binary_label.evaluate_boundaries_threshold_multiple_gts(
            thresholds, sample["pred"], sample["gts"], max_dist=0.0075, apply_thinning=True, apply_nms=nms)

    samples = [{"name": str(i), "pred": p, "gts": list(g)} for i, (p, g) in enumerate(cases)]
    _, _, ref = binary_label.calculate_metrics(one, k, samples, nproc=1)
    # pyEdgeEval's "AUC" is BSDS's Area_PR without the recall = 1 sample (none of these curves reaches it);
    # its "AP" is another number (VOC-style, /101)
    diffs = {"ods": abs(s.ods - ref["ODS_f1"]), "ois": abs(s.ois - ref["OIS_f1"]), "ap": abs(s.ap - ref["AUC"])}
    print(f"nms={nms}: ours ODS {s.ods:.4f} OIS {s.ois:.4f} AP {s.ap:.4f}; pyEdgeEval ODS {ref['ODS_f1']:.4f} "
          f"OIS {ref['OIS_f1']:.4f} AUC {ref['AUC']:.4f}; |diff| {diffs}")
    assert float(s.recall.max()) < 0.995
    assert max(diffs.values()) < 1e-2, diffs
    assert s.ods > 0.7 and s.ap > 0.3  # the cases are not degenerate


def _maximum_matching_size(a, b, max_dist=0.0075):
    h, w = a.shape
    lim = max_dist * math.hypot(h, w)
    (py, px), (gy, gx) = np.nonzero(a), np.nonzero(b)
    i, j = np.nonzero((py[:, None] - gy[None]) ** 2 + (px[:, None] - gx[None]) ** 2 <= lim * lim)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(py), len(gy))).tocsr()
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def test_correspond_pixels_is_a_largest_matching_like_bsds():
    pred, gts = _edge_case(2, 128, 176, "noisy")
    try:
        from pyEdgeEval import correspond_pixels as lib  # BSDS's C++ correspondPixels
    except ImportError:
        lib = None
    for t in (0.2, 0.5, 0.8):
        bmap = thin(pred >= t)
        for g in gts:
            m1, m2 = correspond_pixels(bmap, g)
            assert m1.sum() == m2.sum() == _maximum_matching_size(bmap, g)
            assert not (m1 & ~bmap).any() and not (m2 & ~g).any()
            if lib is not None:  # BSDS's own C++ (CSA on a sparse random outlier graph): at most a few fewer
                b1, b2, _, _ = lib(bmap.astype(float), g.astype(float), max_dist=0.0075)
                assert m2.sum() - 3 <= (b2 > 0).sum() <= m2.sum()


def test_thin_is_matlab_bwmorph_thin():
    morphology = pytest.importorskip("skimage.morphology")  # skimage's thin reproduces bwmorph 'thin'
    rng = np.random.default_rng(0)
    for _ in range(20):
        bw = ndimage.gaussian_filter(rng.random((40, 50)), 2) > 0.5
        assert np.array_equal(thin(bw), morphology.thin(bw))
    bar = np.zeros((7, 12), bool)
    bar[2:5, 1:11] = True  # a 3-pixel-thick bar thins to its middle row
    assert thin(bar).sum(0).max() == 1 and thin(bar)[3, 2:10].all()


def test_edge_nms_follows_the_structured_edge_toolbox():
    cv2 = pytest.importorskip("cv2")  # noqa: F841
    fast_nms = pytest.importorskip("pyEdgeEval.preprocess").fast_nms
    pred, _ = _edge_case(2, 128, 176, "noisy")
    ours, ref = edge_nms(pred), fast_nms(pred)
    # pyEdgeEval replaces Oxx == 0 by 1e-5 where the toolbox's scripts divide by Oxx + 1e-5: a few orientations differ
    assert (np.abs(ours - ref) < 1e-9).mean() > 0.99
    ridge, _ = _edge_case(0, 120, 160, "shifted")
    assert (edge_nms(ridge) > 0.05).sum() < 0.4 * (ridge > 0.05).sum()  # a band ~5 px wide thinned to its crest


def _vertical(h, w, col, rows):
    out = np.zeros((h, w), bool)
    out[rows, col] = True
    return out


def test_edges_worked_example_by_hand():
    """100x100 images: the matching radius is 0.0075 * 141.4 = 1.06 px. Annotators: vertical lines at columns 50
    and 52 (80 px each); the prediction's line at column 51 lies within 1 px of both."""
    rows = slice(10, 90)
    gts = torch.from_numpy(np.stack([_vertical(100, 100, 50, rows), _vertical(100, 100, 52, rows)])).float()
    img1 = np.zeros((100, 100))
    img1[rows, 51] = 0.9
    img1[10:50, 80] = 0.6  # a spurious line of 40 px, gone at t = .75
    img2 = np.zeros((100, 100))
    img2[10:50, 51] = 0.9
    img2[50:90, 51] = 0.3  # half the true line, found only at t = .25
    m = EdgeMetrics(num_thresholds=3)  # t = .25, .5, .75
    m.update(torch.from_numpy(img1), gts)
    m.update(torch.from_numpy(img2)[None], gts[None])
    s = m.compute()
    # counts (cntP, sumP, cntR, sumR) -- image 1: (80, 120, 160, 160), (80, 120, 160, 160), (80, 80, 160, 160);
    # image 2: (80, 80, 160, 160), (40, 40, 80, 160), (40, 40, 80, 160)
    assert s.precision.tolist() == pytest.approx([160 / 200, 120 / 160, 120 / 120])
    assert s.recall.tolist() == pytest.approx([320 / 320, 240 / 320, 240 / 320])
    assert s.ods == pytest.approx(8 / 9) and s.ods_threshold == pytest.approx(0.25)  # F falls along both segments
    assert s.ois == pytest.approx(1.0)  # image 1 perfect at t = .75, image 2 at t = .25
    # Area_PR: recalls {.75 (P .75, first occurrence), 1 (P .8)}; P linear on [.75, 1] at R = .75, .76, .., 1
    assert s.ap == pytest.approx(sum(0.75 + 0.2 * 0.01 * i for i in range(26)) * 0.01)
    # one-to-one: two predicted pixels beside one boundary pixel, one of them matched
    one = EdgeMetrics(num_thresholds=1)
    pred, gt = np.zeros((100, 100)), np.zeros((100, 100))
    pred[50, 49] = pred[50, 51] = 1.0
    gt[50, 50] = 1.0
    one.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert one.compute().precision.tolist() == [0.5] and one.compute().recall.tolist() == [1.0]
    loose = EdgeMetrics(num_thresholds=1, tolerance=1)  # the earlier simplified matching: both count
    loose.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert loose.compute().precision.tolist() == [1.0]


def test_edges_input_shapes():
    pred, gts = _edge_case(0, 60, 80, "shifted")
    a, b, c = EdgeMetrics(num_thresholds=5), EdgeMetrics(num_thresholds=5), EdgeMetrics(num_thresholds=5)
    a.update(torch.from_numpy(pred), torch.from_numpy(gts))  # (H, W) and (A, H, W)
    b.update(torch.from_numpy(pred)[None, None], torch.from_numpy(gts)[None])  # (N, 1, H, W) and (N, A, H, W)
    c.update(torch.from_numpy(pred)[None], [torch.from_numpy(gts)])  # (N, H, W) and a list of (A, H, W)
    assert a.compute().ods == b.compute().ods == c.compute().ods > 0
    with pytest.raises(ValueError, match="does not fit"):
        a.update(torch.from_numpy(pred)[None], torch.from_numpy(gts[:, :30]))
    with pytest.raises(ValueError, match="sigmoid"):
        a.update(torch.full((4, 4), 2.0), torch.zeros(4, 4))
