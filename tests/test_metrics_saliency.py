"""Saliency max F-beta and MAE (:mod:`nni_sparsemask.measure.saliency`)."""
import pytest
import torch

from nni_sparsemask.measure.saliency import SaliencyMetrics


def test_saliency_fbeta_and_mae_hand_computed():
    gt = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    pred = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    m = SaliencyMetrics(num_thresholds=3)  # levels 0, 0.5, 1 -> pred levels [2, 1, 1, 0]
    m.update(pred.view(1, 1, 4), gt.view(1, 1, 4))
    s = m.compute()
    # t=0: P=2/4, R=1; t=0.5: P=2/3, R=1; t=1: P=1, R=1/2
    assert s.precision.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert s.recall.tolist() == pytest.approx([1.0, 1.0, 0.5])
    f = [(1.3 * p * r) / (0.3 * p + r) for p, r in [(0.5, 1), (2 / 3, 1), (1, 0.5)]]
    assert s.fbeta.tolist() == pytest.approx(f, rel=1e-5)
    assert s.max_fbeta == pytest.approx(max(f), rel=1e-6)
    assert s.best_threshold == pytest.approx(1.0)
    assert s.mae == pytest.approx((0 + 0.5 + 0.5 + 0) / 4)


def test_saliency_averages_over_images_and_rejects_logits():
    m = SaliencyMetrics()
    m.update(torch.ones(2, 4, 4), torch.ones(2, 4, 4))
    m.update(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    s = m.compute()
    assert s.num_images == 3
    assert s.mae == pytest.approx(1 / 3)
    assert s.fbeta[1].item() == pytest.approx(2 / 3, rel=1e-6)  # P = R = 2/3 at every t > 0
    assert s.max_fbeta == pytest.approx(1.0)  # t = 0 marks every pixel salient: P = R = 1 here
    with pytest.raises(ValueError, match="sigmoid"):
        m.update(torch.full((1, 2, 2), 3.0), torch.ones(1, 2, 2))
