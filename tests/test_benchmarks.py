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
                                        "--seconds", "0.02", "--json", str(tmp_path / "r.json"),
                                        "--forms", "as-built,deploy"])
    rows = {(r["network"], r["form"]): r for r in result["rows"]}
    assert set(f for _, f in rows) == {"as built", "deploy"} and result["onnxruntime"] is None
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


def _unet_run(tmp_path):
    conn = decoder_connectivity("unet", "convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]})
    run = tmp_path / "unet"
    run.mkdir()
    (run / "connectivity.json").write_text(conn.to_json())
    return run, conn


@pytest.mark.parametrize("forms,message", [("deploy,tflite", "unknown form 'tflite'"), (",", "no form given")])
def test_decoder_fps_refuses_unknown_forms(tmp_path, forms, message):
    run, _ = _unet_run(tmp_path)
    with pytest.raises(SystemExit, match=message + ".*as-built, deploy, onnxruntime"):
        _load("decoder_fps").main([str(run), "--forms", forms])


def test_decoder_fps_leaves_out_onnxruntime_when_it_is_not_installed(tmp_path, capsys):
    module = _load("decoder_fps")
    module.missing_ort_packages = lambda: ["onnxruntime"]
    run, _ = _unet_run(tmp_path)
    with pytest.raises(SystemExit, match=r"--ort-graph needs onnxruntime .*nni-sparsemask\[export\]"):
        module.main([str(run), "--ort-graph"])
    with pytest.raises(SystemExit, match="no form left to time"):
        module.main([str(run), "--forms", "onnxruntime"])
    capsys.readouterr()
    result = module.main([str(run), "--size", "32", "--decoder-channels", "8", "--rounds", "1", "--seconds", "0.02",
                          "--forms", "deploy,onnxruntime"])
    skipped = [line for line in capsys.readouterr().out.splitlines() if "onnxruntime" in line]
    assert skipped == ["onnxruntime form left out: onnxruntime not installed (pip install 'nni-sparsemask[export]')"]
    assert result["forms"] == ["deploy"] and {r["form"] for r in result["rows"]} == {"deploy"}


@pytest.mark.slow  # three ONNX exports, 8-12 s of CPU each
def test_decoder_fps_times_onnxruntime_and_counts_its_graph(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, conn = _unet_run(tmp_path)
    result = _load("decoder_fps").main([str(run), "--size", "32", "--decoder-channels", "8", "--rounds", "2",
                                        "--seconds", "0.02", "--forms", "deploy,onnxruntime", "--ort-graph"])
    out = capsys.readouterr().out
    rows = {(r["network"], r["form"]): r for r in result["rows"]}
    names = {"fdn", "fcn", f"unet/connectivity.json ({len(conn.edges)} edges)"}
    assert set(rows) == {(n, f) for n in names for f in ("deploy", "onnxruntime")}
    assert rows[("fdn", "onnxruntime")]["ratio"] == pytest.approx(1.0) and "| fcn | onnxruntime |" in out
    assert result["onnxruntime"]["provider"] == "CPUExecutionProvider"
    assert set(result["onnxruntime"]["max_abs_diff"]) == names
    assert all(d <= 1e-4 for d in result["onnxruntime"]["max_abs_diff"].values())
    graph = result["ort_graph"]["fdn"]
    assert graph["before"]["Resize"] == graph["after"]["Resize"] >= 1 and "| fdn | " in out.split("ORT_ENABLE_ALL")[-1]
