"""Edge ODS / OIS / AP (:mod:`nni_sparsemask.measure.edges`). On these 1-pixel-high images BSDS's matching radius
(0.0075 x the diagonal) is below a pixel: a prediction matches only by exact overlap. The comparison with the BSDS
benchmark (pyEdgeEval) and larger worked examples are in ``test_metrics_peers.py``."""
import pytest
import torch

from nni_sparsemask.measure.edges import EdgeMetrics


def test_edge_ods_ois_ap_exact_matching():
    gt = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    e1 = torch.tensor([[0.9, 0.2, 0.6, 0.0]])
    m = EdgeMetrics(num_thresholds=3)  # thresholds 0.25, 0.5, 0.75
    m.update(e1.view(1, 1, 4), gt.view(1, 1, 4))
    s = m.compute()
    # t=.25: pred {0,2}: P=1/2 R=1/2; t=.5: same; t=.75: pred {0}: P=1 R=1/2
    assert s.precision.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert s.recall.tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert s.ods == pytest.approx(2 / 3)
    assert s.ods_threshold == pytest.approx(0.75)
    assert s.ois == pytest.approx(2 / 3)
    # BSDS's Area_PR: a curve with a single recall (0.5 at every threshold) has area 0
    assert s.ap == 0.0


def test_edge_ois_differs_from_ods_and_tolerance():
    m = EdgeMetrics(num_thresholds=3)
    gt = torch.tensor([[[1.0, 0.0]]])
    m.update(torch.tensor([[[0.3, 0.0]]]), gt)  # only found at t=.25
    m.update(torch.tensor([[[0.9, 0.6]]]), gt)  # best at t=.75
    s = m.compute()
    # ODS: t=.25 counts (cntP=2, sumP=3, cntR=2, sumR=2) F=0.8; t=.75 (1,1,1,2) F=2/3
    assert s.ods == pytest.approx(0.8)
    assert s.ois == pytest.approx(1.0)  # each image perfect at its own threshold
    tol = EdgeMetrics(num_thresholds=1, tolerance=1)
    tol.update(torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
    assert tol.compute().ods == pytest.approx(1.0)  # off by one pixel: matched within tolerance
    exact = EdgeMetrics(num_thresholds=1)
    exact.update(torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
    assert exact.compute().ods == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        EdgeMetrics(tolerance=-1)
