import json

import pytest

from nni_sparsemask.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_tiny_settings(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--scenes", "32", "--image-size", "32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in metrics["rows"]] == ["FDN (dense)", "SparseMask"]
    assert (out / "connectivity.json").is_file() and (out / "w_heatmap.png").is_file()


def test_demo_refuses_an_existing_run_dir_and_bad_epochs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["demo", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"
    assert main(["demo", "--out", str(tmp_path / "other"), "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
