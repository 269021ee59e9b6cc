"""The benchmark scripts run end to end on tiny settings (their numbers are measured elsewhere)."""
import importlib.util
from pathlib import Path

import pytest

from nni_sparsemask.run.registry import decoder_connectivity

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decoder_fps_times_both_forms_against_the_dense_fdn(tmp_path):
    conn = decoder_connectivity("unet", "convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]})
    run = tmp_path / "unet"
    run.mkdir()
    (run / "connectivity.json").write_text(conn.to_json())
    result = _load("decoder_fps").main([str(run), "--size", "32", "--decoder-channels", "8", "--rounds", "1",
                                        "--seconds", "0.02", "--json", str(tmp_path / "r.json")])
    rows = {(r["network"], r["form"]): r for r in result["rows"]}
    assert set(f for _, f in rows) == {"as built", "deploy"}
    assert {n for n, _ in rows} == {"fdn", "fcn", f"unet/connectivity.json ({len(conn.edges)} edges)"}
    for form in ("as built", "deploy"):
        assert rows[("fdn", form)]["ratio"] == pytest.approx(1.0)
    assert all(r["fps"] > 0 and r["ms"] == pytest.approx(1e3 / r["fps"]) for r in rows.values())
    assert all(r["ratio_range"][0] <= r["ratio"] <= r["ratio_range"][1] for r in rows.values())
    costs = {c["network"]: c for c in result["costs"]}
    assert costs["fdn"]["dense_over"]["ops"] == 1.0 and costs["fcn"]["ops"] < costs["fdn"]["ops"]
    assert (tmp_path / "r.json").is_file()
    with pytest.raises(SystemExit, match="r.json exists"):  # checked before any timing
        _load("decoder_fps").main([str(run), "--json", str(tmp_path / "r.json")])


def test_decoder_fps_refuses_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="no connectivity file"):
        _load("decoder_fps").main([str(tmp_path / "nope.json")])
