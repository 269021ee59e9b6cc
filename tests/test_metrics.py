import math

import pytest
import torch
from torch import nn

from nni_sparsemask.measure.metrics import (EdgeMetrics, FPSResult, ParamCount, SaliencyMetrics, SegmentationMetrics,
                                    count_parameters, format_params, measure_fps)


# --------------------------------------------------------------------------- segmentation

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


# --------------------------------------------------------------------------- saliency

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


# --------------------------------------------------------------------------- edges

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
    assert s.ap == pytest.approx(0.5 * 1.0)  # the only recall step (0.5 -> 0) is at t=.75, where P = 1


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


# --------------------------------------------------------------------------- size and speed

class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, padding=1)          # 3*4*9 + 4 = 112
        self.head = nn.Conv2d(4, 2, 1)                        # 4*2 + 2 = 10
        self.tied = self.head                                 # shared: counted once

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def test_count_parameters_split_and_format():
    c = count_parameters(_Tiny())
    assert c == ParamCount(encoder=112, decoder=10)
    assert c.total == 122
    assert format_params(ParamCount(2_220_000, 560_000)) == "2.22+0.56M"
    assert str(ParamCount(3_504_872, 1_000)) == "3.50+0.00M"
    with pytest.raises(ValueError, match="encoder"):
        count_parameters(nn.Linear(2, 2))


def test_measure_fps_on_cpu():
    model = _Tiny().train()
    r = measure_fps(model, input_size=(16, 12), batch_size=2, device="cpu", warmup=1, min_run_time=0.05)
    assert isinstance(r, FPSResult)
    assert r.fps > 0 and r.mean_seconds > 0
    assert r.fps == pytest.approx(2 / r.mean_seconds)
    assert r.batch_size == 2 and r.input_size == (16, 12) and r.num_threads == torch.get_num_threads()
    assert r.device.startswith("cpu")
    assert model.training  # restored
    text = str(r)
    assert "FPS" in text and "16x12" in text and "batch of 2" in text and "threads" in text
    with pytest.raises(ValueError):
        measure_fps(model, input_size=(0, 4), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_and_fps_on_cuda():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 32, 32), generator=g)
    target[:, 0] = 255
    logits = torch.randn(2, 4, 32, 32, generator=g)
    cpu, gpu = SegmentationMetrics(4), SegmentationMetrics(4)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert torch.equal(gpu.confusion_matrix.cpu(), cpu.confusion_matrix)
    assert gpu.compute().miou == pytest.approx(cpu.compute().miou)
    e_cpu, e_gpu = EdgeMetrics(num_thresholds=9, tolerance=1), EdgeMetrics(num_thresholds=9, tolerance=1)
    prob, edge = torch.rand(2, 16, 16, generator=g), (torch.rand(2, 16, 16, generator=g) > 0.8).float()
    e_cpu.update(prob, edge)
    e_gpu.update(prob.cuda(), edge.cuda())
    assert e_gpu.compute().ods == pytest.approx(e_cpu.compute().ods)
    model = _Tiny()
    r = measure_fps(model, input_size=(64, 64), batch_size=4, device="cuda", warmup=3, min_run_time=0.2)
    assert r.device.startswith("cuda:") and r.fps > 0 and r.batch_size == 4
    print(r)
