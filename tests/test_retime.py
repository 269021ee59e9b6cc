"""sparsemask retime (a comparison's networks timed side by side, paired against the dense FDN), the paired
ratios in the report (Table 1's column, Fig. 4's speed axis), and who dominates whom (analysis/dominance.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nni_sparsemask.analysis import dominance, figures, report, results, table
from nni_sparsemask.cli import main
from nni_sparsemask.comparison.retime import architecture_key, retime_runs
from nni_sparsemask.run.config import DataConfig, ModelConfig, TrainConfig
from nni_sparsemask.run.steps import load_run_network, run_retrain

MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=8)
DATA = DataConfig(image_size=32, train_scenes=16, val_scenes=4, batch_size=8)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Three finished retrain runs as a comparison lays them out: the dense FDN at seeds 0 and 1 (one
    architecture) and FCN."""
    base = tmp_path_factory.mktemp("retime") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
        for name, decoder, seed in (("fdn_seed=0", "fdn", 0), ("fdn_seed=1", "fdn", 1), ("fcn_seed=0", "fcn", 0)):
            run_retrain(base / name / "retrain", DATA, MODEL, TrainConfig(epochs=1, learning_rate=0.01, seed=seed),
                        decoder=decoder, fps_size=32, fps_batch=1, fps_seconds=0.02, progress=False,
                        accelerator="cpu", log=lambda s: None)
    return base


@pytest.fixture(scope="module")
def paired(root) -> dict:
    return retime_runs(root, rounds=3, seconds=0.02, device="cpu", log=lambda s: None)  # size: the runs' own 32


def test_architecture_key_tells_decoders_apart_not_seeds(root):
    keys = {name: architecture_key(load_run_network(root / name / "retrain")[0])
            for name in ("fdn_seed=0", "fdn_seed=1", "fcn_seed=0")}
    assert keys["fdn_seed=0"] == keys["fdn_seed=1"]
    assert keys["fcn_seed=0"] != keys["fdn_seed=0"]


def test_retime_writes_paired_ratios_relative_to_its_file(root, paired):
    written = json.loads((root / "fps_paired.json").read_text())
    assert written == json.loads(json.dumps(paired))
    assert set(written["runs"]) == {"fdn_seed=0/retrain", "fdn_seed=1/retrain", "fcn_seed=0/retrain"}
    fdn, fcn = written["runs"]["fdn_seed=0/retrain"], written["runs"]["fcn_seed=0/retrain"]
    # the reference's ratio to itself is exactly 1 in every pass; the two seeds share one timing
    assert fdn["ratio"] == fdn["ratio_min"] == fdn["ratio_max"] == 1.0
    assert written["runs"]["fdn_seed=1/retrain"]["fps"] == fdn["fps"]
    assert fcn["architecture"] != fdn["architecture"]
    assert 0 < fcn["ratio_min"] <= fcn["ratio"] <= fcn["ratio_max"]
    assert written["reference"] == "fdn" and written["rounds"] == 3 and written["device"]
    assert written["size"] == 32  # the side the runs timed themselves at


def test_report_uses_the_paired_ratios(root, paired, tmp_path):
    df = results.load_results(root)
    assert df["fps_ratio"].notna().all() and set(df["fps_reference"]) == {"fdn"}
    md = table.table1_markdown(df)
    assert "FPS / fdn (paired)" in md
    fcn_ratio = paired["runs"]["fcn_seed=0/retrain"]["ratio"]
    assert f"{fcn_ratio:.2f}x" in md and "1.00x (1.00-1.00)" in md
    fig = figures.plot_tradeoff(df)
    assert fig.axes[0].get_xlabel().startswith("FPS / fdn (paired")
    xs = sorted(float(x) for c in fig.axes[0].collections if hasattr(c, "get_offsets")
                for x, _ in np.asarray(c.get_offsets()))
    assert xs == pytest.approx(sorted(df["fps_ratio"]))
    path = report.write_report(root, tmp_path / "report")
    text = path.read_text()
    assert "### Who dominates whom" in text and "FPS / fdn (paired)" in text


def test_without_paired_ratios_the_report_keeps_each_runs_own_fps(root, paired, tmp_path):
    moved = tmp_path / "runs"
    import shutil
    shutil.copytree(root, moved)
    (moved / "fps_paired.json").unlink()
    df = results.load_results(moved)
    assert df["fps_ratio"].isna().all()
    assert "paired" not in table.table1_markdown(df)
    assert figures.plot_tradeoff(df).axes[0].get_xlabel().startswith("Inference speed (FPS")
    # an explicit file (here the original one, whose run paths are relative to its own folder) is not found for
    # runs that moved: their ratios stay missing instead of being taken from other runs
    df = results.load_results(moved, paired_fps=root / "fps_paired.json")
    assert df["fps_ratio"].isna().all()


def test_retime_refusals_write_nothing(root, paired, tmp_path, capsys):
    before = (root / "fps_paired.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        retime_runs(root, size=32, rounds=1, seconds=0.01, device="cpu", log=lambda s: None)
    with pytest.raises(ValueError, match="methods found: fcn, fdn"):
        retime_runs(root, out=tmp_path / "x.json", reference="unet", size=32, rounds=1, seconds=0.01,
                    device="cpu", log=lambda s: None)
    assert not (tmp_path / "x.json").exists()
    assert (root / "fps_paired.json").read_text() == before
    assert main(["retime", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_corrupt_or_foreign_paired_file_is_named(root, tmp_path):
    bad = tmp_path / "fps_paired.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt JSON.*sparsemask retime"):
        results.load_results(root, paired_fps=bad)
    bad.write_text(json.dumps({"runs": {}}))
    with pytest.raises(ValueError, match="not a paired-FPS file"):
        results.load_results(root, paired_fps=bad)
    bad.write_text(json.dumps({"reference": "fdn", "runs": {"a": {"ratio": "fast"}}}))
    with pytest.raises(ValueError, match="run 'a' lacks a numeric ratio"):
        results.load_results(root, paired_fps=bad)
    with pytest.raises(FileNotFoundError, match="sparsemask retime"):
        results.load_results(root, paired_fps=tmp_path / "none.json")


# ------------------------------------------------------------------------------------------------ dominance
def _frame(points: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """Runs of the results frame's shape: ``{method: [(miou, paired ratio) per seed]}``."""
    rows = []
    for method, runs in points.items():
        for seed, (miou, ratio) in enumerate(runs):
            rows.append({"method": method, "params": {}, "seed": seed, "miou": miou, "fps": 100.0 * ratio,
                         "fps_device": "cpu", "params_encoder": 1e5, "params_decoder": 1e4, "edges": 3})
    frame = results._frame([results._row(r["method"], r["params"], r["seed"], r, "x") for r in rows])
    frame["fps_ratio"] = frame["fps"] / 100.0
    frame["fps_ratio_min"] = frame["fps_ratio"] - 0.05
    frame["fps_ratio_max"] = frame["fps_ratio"] + 0.05
    frame["fps_reference"] = "fdn"
    return frame


def test_dominates_needs_one_strict_improvement():
    assert dominance.dominates((40.0, 1.5), (39.0, 1.5))
    assert dominance.dominates((40.0, 1.6), (39.0, 1.5))
    assert not dominance.dominates((40.0, 1.5), (40.0, 1.5))
    assert not dominance.dominates((41.0, 1.4), (40.0, 1.5))


def test_front_and_sparsemask_rows_are_named_with_their_spread():
    df = _frame({
        "fdn": [(0.40, 1.0), (0.40, 1.0)],
        "fcn": [(0.10, 2.0), (0.10, 2.0)],
        "sparsemask": [(0.39, 1.5), (0.41, 1.5)],       # mean 40.0 at 1.5x: dominates the dense FDN
        "random": [(0.30, 1.2), (0.32, 1.2)],            # dominated by SparseMask
        "maskconnect": [(0.35, 1.7), (0.35, 1.7)],       # on the front
    })
    assert dominance.front_labels(df) == ["FCN", "MaskConnect", "SparseMask"]
    md = dominance.dominance_markdown(df)
    assert "**Front** (3 of 5 rows, fastest first)" in md
    assert "- SparseMask (mIoU 40.0 ± 1.4, FPS / fdn (paired) 1.50x ± 0.00): on the front; it dominates 2 of the " \
           "other 4 rows" in md

    df = _frame({"fdn": [(0.40, 1.0), (0.40, 1.0)], "sparsemask": [(0.37, 1.0), (0.41, 0.98)],
                 "l1": [(0.395, 1.2), (0.395, 1.2)]})
    md = dominance.dominance_markdown(df)
    # SparseMask's mean (39.0 at 0.99x) is below both; L1's lead in mIoU (0.5) is within SparseMask's spread (2.8)
    assert "- SparseMask (mIoU 39.0 ± 2.8" in md and ": dominated by FDN (dense) (mIoU 40.0" in md
    assert "(by less than the seed spread in mIoU and speed); L1 (mIoU 39.5 ± 0.0, FPS / fdn (paired) 1.20x ± 0.00) (by less than the seed spread in mIoU)" in md


def test_sparsemask_settings_are_named_and_shaded_apart():
    rows = [results._row("sparsemask", params, seed, {"miou": 0.3, "fps": 50.0, "params_encoder": 1e5,
                                                      "params_decoder": 1e4, "edges": 3}, "x")
            for params in ({}, {"cost": "latency", "budget": 0.4}) for seed in (0, 1)]
    df = results._frame(rows)
    assert set(table.group_labels(df)) == {"SparseMask (default)", "SparseMask (budget=0.4, cost=latency)"}
    styles = figures.family_style(table.summarize(df))
    assert styles["SparseMask (default)"]["color"] != styles["SparseMask (budget=0.4, cost=latency)"]["color"]
    assert {s["marker"] for s in styles.values()} == {"*"}
