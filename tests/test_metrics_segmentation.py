"""Semantic segmentation scores (:mod:`nni_sparsemask.measure.segmentation`)."""
import math

import pytest
import torch

from nni_sparsemask.measure.segmentation import SegmentationMetrics


def test_confusion_matrix_iou_and_ignore_hand_computed():
    target = torch.tensor([[0, 0, 1], [1, 255, 0]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])  # the 2 sits on an ignored pixel: not counted
    m = SegmentationMetrics(3)
    m.update(pred, target)
    assert m.confusion_matrix.tolist() == [[2, 1, 0], [0, 2, 0], [0, 0, 0]]
    s = m.compute()
    assert s.iou[0].item() == pytest.approx(2 / 3)   # 2 / (3 + 2 - 2)
    assert s.iou[1].item() == pytest.approx(2 / 3)   # 2 / (2 + 3 - 2)
    assert math.isnan(s.iou[2].item())               # absent from target and prediction
    assert s.miou == pytest.approx(2 / 3)            # nan excluded, not counted as 0
    assert s.pixel_accuracy == pytest.approx(4 / 5)
    assert s.mean_accuracy == pytest.approx((2 / 3 + 1.0) / 2)
    assert s.num_pixels == 5
    d = s.as_dict(["bg", "a", "b"])
    assert d["iou"]["b"] is None and d["iou"]["a"] == pytest.approx(2 / 3)


def test_false_positive_only_class_counts_as_zero():
    m = SegmentationMetrics(3)
    m.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    s = m.compute()
    assert s.iou[0].item() == pytest.approx(0.5)
    assert math.isnan(s.iou[1].item())
    assert s.iou[2].item() == 0.0
    assert s.miou == pytest.approx(0.25)


def test_accumulates_over_batches_and_logits_input():
    m = SegmentationMetrics(2)
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 5.0  # predicts [[0, 1]]
    m.update(logits, torch.tensor([[[0, 1]]]))
    m.update(torch.tensor([[1, 1]]), torch.tensor([[0, 255]]))
    assert m.confusion_matrix.tolist() == [[1, 1], [0, 1]]
    assert m.compute().miou == pytest.approx((1 / 2 + 1 / 2) / 2)
    other = SegmentationMetrics(2)
    other.update(torch.tensor([0]), torch.tensor([0]))
    m.merge(other)
    assert m.confusion_matrix.tolist() == [[2, 1], [0, 1]]
    m.reset()
    assert int(m.confusion_matrix.sum()) == 0


def test_matches_torchmetrics_on_random_labels():
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (2, 16, 16), generator=g)
    target[:, :3] = 255
    pred = torch.randint(0, 5, (2, 16, 16), generator=g)
    m = SegmentationMetrics(5)
    m.update(pred, target)
    s = m.compute()
    cm = MulticlassConfusionMatrix(5, ignore_index=255)(pred, target)
    jac = MulticlassJaccardIndex(5, ignore_index=255, average=None)(pred, target)
    assert torch.equal(m.confusion_matrix, cm)
    assert torch.allclose(s.iou, jac, atol=1e-6)
    assert s.miou == pytest.approx(float(jac.mean()), abs=1e-6)


def test_segmentation_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(3, ignore_index=1)
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="target values"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="channels"):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_add_confusion_matrix_equals_updating_with_the_pixels():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    target[:, 0] = 255
    pred = torch.randint(0, 4, (3, 8, 8), generator=g)
    whole = SegmentationMetrics(4)
    whole.update(pred, target)
    parts = [SegmentationMetrics(4) for _ in range(3)]
    for m, p, t in zip(parts, pred, target):  # one "process" per image
        m.update(p, t)
    summed = torch.stack([m.confusion_matrix for m in parts]).sum(0)  # what an all_gather + sum gives
    loaded = SegmentationMetrics(4)
    assert loaded.add_confusion_matrix(summed) is loaded
    assert torch.equal(loaded.confusion_matrix, whole.confusion_matrix)
    assert loaded.compute().miou == pytest.approx(whole.compute().miou)
    summed[0, 0] += 7  # the caller's tensor is not aliased
    assert torch.equal(loaded.confusion_matrix, whole.confusion_matrix)
    loaded.add_confusion_matrix(torch.eye(4, dtype=torch.int32))  # accumulates, any integer dtype
    assert loaded.confusion_matrix.dtype == torch.long
    assert torch.equal(loaded.confusion_matrix, whole.confusion_matrix + torch.eye(4, dtype=torch.long))
    loaded.update(pred, target)  # update keeps counting on top
    assert torch.equal(loaded.confusion_matrix, 2 * whole.confusion_matrix + torch.eye(4, dtype=torch.long))


def test_add_confusion_matrix_bad_counts():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="3 x 3"):
        m.add_confusion_matrix(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        m.add_confusion_matrix(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        m.add_confusion_matrix(-torch.ones(3, 3, dtype=torch.long))
    assert int(m.confusion_matrix.sum()) == 0  # nothing was added
    with pytest.raises(ValueError, match="merge"):
        m.merge(SegmentationMetrics(4))
