"""benchmarks/table1.py (Table 1 in form) runs end to end with --quick; its numbers are measured elsewhere."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_has_every_row_with_fps_and_the_papers_decoder_below_the_dense_fdn(tmp_path, capsys):
    out = tmp_path / "table1.json"
    result = _load().main(["--quick", "--device", "cpu", "--out", str(out)])
    rows = {r["network"]: r for r in result["rows"]}
    assert list(rows) == ["fcn", "deeplabv3", "unet", "sparseacn", "fdn", "paper"]  # Table 1's order
    assert all(r["fps"] > 0 and r["ratio_range"][0] <= r["ratio"] <= r["ratio_range"][1] for r in rows.values())
    assert rows["fdn"]["ratio"] == pytest.approx(1.0)
    # the paper's decoder (0.56M, exact count in test_official_mask.py) is smaller than the dense FDN's
    assert 0 < rows["paper"]["decoder_params"] < rows["fdn"]["decoder_params"]
    assert rows["deeplabv3"]["decoder_params"] == 667_157  # the mobile head (test_deeplab_mobile.py)
    assert {r["encoder_params"] for r in rows.values()} == {2_223_872}  # MobileNetV2 1.0 everywhere
    assert result["setting"]["size"] == 64 and result["setting"]["passes"] == 1 and len(result["passes"]) == 1
    assert result["machine"]["torch"] and result["machine"]["threads"] >= 1
    printed = capsys.readouterr().out
    assert "| Ours (paper's searched decoder) | 0.56M |" in printed and "machine: timing device cpu:" in printed
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    with pytest.raises(SystemExit, match="table1.json exists"):  # checked before anything is built or timed
        _load().main(["--quick", "--out", str(out)])
