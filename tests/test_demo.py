"""The demo's FPS bookkeeping (the end-to-end demo run is the slow test in test_cli.py)."""
import pytest
import torch

from nni_sparsemask.run.demo import demo_table, fps_side_by_side, ratio_over_passes, time_side_by_side


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


def test_fps_side_by_side_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        fps_side_by_side({}, 32, rounds=0)


def test_time_side_by_side_times_every_network_in_every_pass():
    # two real networks, timed for real on this machine's default device (the CPU here, CUDA where there is one)
    from nni_sparsemask.run.pipeline import default_device

    nets = {"small": torch.nn.Conv2d(3, 4, 1), "large": torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1),
                                                                            torch.nn.BatchNorm2d(32).eval())}
    out = time_side_by_side(nets, 16, rounds=3, seconds=0.02)
    assert default_device() in out["device"]
    assert len(out["rounds"]) == 3 and all(set(p) == {"small", "large"} for p in out["rounds"])
    assert all(v > 0 for p in out["rounds"] for v in p.values())
    assert out["fps"] == {name: max(p[name] for p in out["rounds"]) for name in nets}  # the best pass
    assert "cpu" in time_side_by_side(nets, 16, rounds=1, seconds=0.02, device="cpu")["device"]
