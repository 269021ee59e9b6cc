"""Parameter counts and FPS (:mod:`nni_sparsemask.measure.params`, :mod:`.fps`), and the metrics on CUDA."""
import pytest
import torch
from torch import nn

from nni_sparsemask.measure.edges import EdgeMetrics
from nni_sparsemask.measure.fps import FPSResult, measure_fps
from nni_sparsemask.measure.params import ParamCount, count_parameters, format_params
from nni_sparsemask.measure.segmentation import SegmentationMetrics


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


def test_fps_times_about_the_requested_time():
    # the contract: blocks of about a tenth of min_run_time, stopped once it is reached (torch's blocked_autorange,
    # used before, sized its blocks from an overhead estimate: in the demo it timed 1000 calls of a 7 ms network,
    # 7.3 s, for a 1 s request)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    r = measure_fps(net, input_size=128, device="cpu", warmup=2, min_run_time=0.2, num_threads=2)
    timed = r.num_runs * r.mean_seconds
    assert 0.2 <= timed < 0.3, (r.num_runs, r.mean_seconds)


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
