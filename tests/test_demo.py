"""The demo's FPS bookkeeping (the end-to-end demo run is the slow test in test_cli.py)."""
import pytest
import torch

from nni_sparsemask.run.demo import _fps_device, demo_table, fps_side_by_side, ratio_over_passes


def test_ratio_over_passes_pairs_each_pass():
    # the machine is twice as slow in pass 2: the within-pass ratios stay 2.0, 1.5, 3.0 whatever the load
    passes = [{"a": 200.0, "fdn": 100.0}, {"a": 75.0, "fdn": 50.0}, {"a": 300.0, "fdn": 100.0}]
    assert ratio_over_passes(passes, "a", "fdn") == (2.0, 1.5, 3.0)
    assert ratio_over_passes(passes[:2], "a", "fdn") == (1.75, 1.5, 2.0)  # even count: mean of the middle two
    assert ratio_over_passes(passes, "fdn", "fdn") == (1.0, 1.0, 1.0)


def test_demo_table_shows_the_ratio_range_when_known():
    row = {"name": "SparseMask (searched)", "edges": 6, "miou": 0.528, "pixel_accuracy": 0.936,
           "params": "0.25+0.01M", "fps": 167.1, "fps_ratio": 1.13, "fps_ratio_range": [1.02, 1.45]}
    table = demo_table([row, {**row, "name": "old", "fps_ratio_range": None}])
    assert "| 1.13x (1.02-1.45) |" in table
    assert table.rstrip().endswith("| 1.13x |")  # a demo.json written before the range existed


def test_fps_device_follows_the_accelerator():
    assert _fps_device("cpu") == "cpu"
    assert _fps_device("auto") is None  # fps_side_by_side then picks CUDA when there is one


def test_fps_side_by_side_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        fps_side_by_side({}, 32, rounds=0)


def test_fps_side_by_side_default_device(monkeypatch, tmp_path):
    # no network to load: the device choice alone, with CUDA made to look present and absent
    seen = {}

    def fake_measure(net, input_size, device, min_run_time, inference):
        seen["device"] = device
        return type("R", (), {"fps": 10.0, "device": f"{device} (fake)"})()

    monkeypatch.setattr("nni_sparsemask.measure.metrics.measure_fps", fake_measure)
    monkeypatch.setattr("nni_sparsemask.run.steps.load_run_network", lambda path: (torch.nn.Identity(), None))
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        out = fps_side_by_side({"fdn": tmp_path}, 32, rounds=2)
        assert seen["device"] == expected and out["device"] == f"{expected} (fake)"
        assert out["fps"] == {"fdn": 10.0} and len(out["rounds"]) == 2
    fps_side_by_side({"fdn": tmp_path}, 32, rounds=1, device="cpu")
    assert seen["device"] == "cpu"
