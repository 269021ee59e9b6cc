"""experiments/transfer_tasks.py end to end at tiny sizes: every task's table and the second backbone."""
import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "transfer_tasks.py"

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _main():
    return runpy.run_path(str(SCRIPT), run_name="transfer_tasks")["main"]


@pytest.mark.slow  # 12 retrainings and a search: 3-11 min on 2 cores
def test_transfer_tasks_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["transfer_tasks.py"])
    out = tmp_path / "t"
    argv = ["--out", str(out), "--smoke", "--search-epochs", "1", "--retrain-epochs", "1", "--train-scenes", "16",
            "--val-scenes", "4", "--fps-size", "32", "--no-progress", "--backbone-kwargs", '{"width_mult": 0.25}']
    assert _main()(argv) == 0
    summary = json.loads((out / "transfer.json").read_text())
    assert set(summary["tasks"]) == {"segmentation", "saliency", "edges"}
    for task, main in (("segmentation", "miou"), ("saliency", "max_fbeta"), ("edges", "ods")):
        for net in ("sparsemask", "fdn", "fcn"):
            assert 0 <= summary["tasks"][task][net][main] <= 1
            metrics = json.loads((out / task / net / "metrics.json").read_text())
            assert metrics["task"] == task and metrics["main"] == main
            # retrained with the task's loss and validated with its scores, epoch by epoch
            assert f"val_{main}" in (out / task / net / "history.csv").read_text().splitlines()[0].split(",")
    assert summary["backbone"]["name"] == "mobilenet_v2" and summary["backbone"]["edges"] >= 1
    text = (out / "transfer.md").read_text()
    assert "| network | ODS | OIS | AP |" in text and "max F-beta" in text and "Stages matched by reduction" in text
    # a second run into the same directory is refused without --resume, and resumes with it (nothing retrained)
    assert _main()(argv) == 2
    before = (out / "edges" / "fcn" / "metrics.json").stat().st_mtime_ns
    assert _main()(argv + ["--resume"]) == 0
    assert (out / "edges" / "fcn" / "metrics.json").stat().st_mtime_ns == before
