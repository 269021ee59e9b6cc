"""Analysis: results loading, Table 1, Fig. 4 / Fig. 5 / gap / architecture figures, write_report.

Fixture run directories are written into tmp dirs with known numbers; figures are checked on the returned
matplotlib Figure objects (labels, series, points, masked cells), not by pixels.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage
from matplotlib.patches import FancyArrowPatch

from nni_sparsemask.analysis import connectivity_figures as cf
from nni_sparsemask.analysis import figures, report, results, table
from nni_sparsemask.analysis.families import family_of
from nni_sparsemask.fdn.connectivity import Connectivity, Edge, candidate_names

from helpers import small_info

INFO = small_info()  # 4 stages: reductions 2, 4, 8, 16
L = len(INFO)


def _metrics(method, params, seed, miou, enc=2.22e6, dec=0.56e6, fps=98.0, edges=None, gap=None, **extra):
    m = {"method": method, "params": params, "seed": seed, "miou": miou, "pixel_accuracy": 0.9,
         "iou": {"background": 0.9, "1": None}, "fg_iou": 0.5, "params_encoder": enc, "params_decoder": dec,
         "fps": fps, "fps_device": "cpu", "fps_input_size": [64, 64], "fps_batch_size": 1, "edges": edges,
         "stages": None, "binarization_gap": gap, "search_seconds": None, "train_seconds": 1.5}
    m.update(extra)
    return m


def write_run(root: Path, name: str, method: str, params: dict, seed: int, miou: float, conn=None, **kw) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"command": "retrain", "method": method, "params": params,
                                                 "seed": seed, "data": {}, "model": {}, "train": {}}))
    (run / "metrics.json").write_text(json.dumps(_metrics(method, params, seed, miou, **kw)))
    if conn is not None:
        conn.to_json(run / "connectivity.json")
    return run


def searched_conn(binary: bool, epochs: int = 3) -> Connectivity:
    """All edges of a 4-stage FDN with w near 0/1 (binary) or spread (L1-like), plus a w history."""
    rng = np.random.default_rng(0 if binary else 1)
    weights = {}
    for l in range(1, L + 1):
        n = len(candidate_names(l, L))
        ws = (rng.random(n) > 0.6).astype(float) if binary else rng.uniform(0.05, 0.7, n)
        ws[-1] = 1.0  # every stage reads G
        weights[f"D{l}"] = [float(w) for w in ws]
    history = [{k: [w * (e + 1) / epochs for w in v] for k, v in weights.items()} for e in range(epochs)]
    return Connectivity.from_weights("convnet", INFO, weights, history=history)


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "runs"
    write_run(r, "fcn", "fcn", {}, 0, 0.6380, dec=0.03e6, fps=156.0, edges=1)
    write_run(r, "sm/s0", "sparsemask", {"lambda_sparse": 0.01}, 0, 0.7318, dec=0.56e6, fps=98.0, edges=8,
              gap=200.0, conn=searched_conn(True))
    write_run(r, "sm/s1", "sparsemask", {"lambda_sparse": 0.01}, 1, 0.7218, dec=0.56e6, fps=96.0, edges=8,
              gap="inf")
    write_run(r, "mc3", "maskconnect", {"k": 3}, 0, 0.70, dec=0.7e6, fps=60.0, edges=12)
    write_run(r, "l1", "l1", {"lambda_sparse": 0.005}, 0, 0.68, dec=1.2e6, fps=40.0, edges=20, gap=2.6,
              conn=searched_conn(False))
    write_run(r, "rand", "random", {"density": 0.5}, 3, 0.66, dec=0.9e6, fps=70.0, edges=14)
    write_run(r, "bp", "sparsemask-binary", {"lambda_sparse": 0.01}, 0, 0.7323, dec=0.89e6, fps=76.0, edges=10)
    return r


# ------------------------------------------------------------------------------------------------ families
@pytest.mark.parametrize("method,params,name,group", [
    ("sparsemask", {"lambda_sparse": 0.01}, "SparseMask", "search"),
    ("sparsemask", {"loss": "binary"}, "L_task + L_bp", "ablation"),
    ("sparsemask-task", {}, "FDN (L_task)", "ablation"),
    ("l1", {"lambda_sparse": 0.005}, "L1 lambda=0.005", "search"),
    ("maskconnect", {"k": 3}, "MaskConnect k=3", "search"),
    ("rand_rule", {}, "Rand (Rule)", "search"),
    ("random", {}, "Rand", "search"),
    ("deeplabv3", {}, "DeepLab-V3", "hand-designed"),
    ("fdn", {}, "FDN (dense)", "hand-designed"),
    ("mystery", {}, "mystery", "other"),
])
def test_family_of(method, params, name, group):
    fam = family_of(method, params)
    assert (fam.name, fam.group) == (name, group)


# ------------------------------------------------------------------------------------------------ loading
def test_load_results_rows_and_values(root):
    df = results.load_results(root)
    assert len(df) == 7
    assert set(df["family"]) == {"FCN", "SparseMask", "MaskConnect k=3", "L1 lambda=0.005", "Rand",
                                 "L_task + L_bp"}
    sm = df[df["family"] == "SparseMask"].sort_values("seed")
    assert list(sm["seed"]) == [0, 1]
    assert list(sm["miou"]) == [0.7318, 0.7218]
    assert sm["binarization_gap"].iloc[0] == 200.0 and math.isinf(sm["binarization_gap"].iloc[1])
    assert sm["lambda_sparse"].tolist() == [0.01, 0.01]  # hyper-parameters become columns
    assert df.loc[df["family"] == "MaskConnect k=3", "k"].item() == 3
    assert df.loc[df["method"] == "fcn", "binarization_gap"].isna().all()
    assert sm["connectivity"].iloc[0].endswith("connectivity.json") and pd.isna(sm["connectivity"].iloc[1])
    for col in ("method", "family", "seed", "miou", "pixel_accuracy", "params_encoder", "params_decoder", "fps",
                "edges", "binarization_gap", "search_seconds", "run_dir"):
        assert col in df.columns
    assert df.attrs["skipped"] == []


def test_cost_columns_are_read_and_missing_ones_are_nan(tmp_path):
    write_run(tmp_path, "new", "fcn", {}, 0, 0.5, flops=3.2e8, ops=27, bytes_written=15_000_000)
    write_run(tmp_path, "old", "unet", {}, 0, 0.6)  # evaluated before the counts existed
    df = results.load_results(tmp_path).set_index("method")
    assert (df.loc["fcn", "flops"], df.loc["fcn", "ops"], df.loc["fcn", "bytes_written"]) == (3.2e8, 27, 15e6)
    assert df.loc[["unet"], ["flops", "ops", "bytes_written"]].isna().all(axis=None)


def test_save_csv_roundtrip(root, tmp_path):
    df = results.load_results(root)
    path = results.save_csv(df, tmp_path / "out" / "results.csv")
    back = pd.read_csv(path)
    assert len(back) == len(df) and set(back["family"]) == set(df["family"])
    assert np.isinf(back["binarization_gap"]).sum() == 1


def test_corrupt_run_is_skipped_with_warning(root):
    bad = root / "broken"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"method": "fcn", "miou": 0.')
    nomiou = root / "nomiou"
    nomiou.mkdir()
    (nomiou / "metrics.json").write_text(json.dumps({"method": "fcn", "miou": 63.8}))
    with pytest.warns(UserWarning) as caught:
        df = results.load_results(root)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken/metrics.json" in messages and "nomiou/metrics.json" in messages
    assert len(df) == 7
    skipped = results.skipped_runs(df)
    assert {Path(s.path).parent.name for s in skipped} == {"broken", "nomiou"}
    assert any("corrupt JSON" in s.reason for s in skipped)
    assert any("outside [0, 1]" in s.reason for s in skipped)


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        results.load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        results.load_results(tmp_path / "nope" / "runs")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "metrics.json").write_text("not json")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="skipped 1"):
        results.load_results(tmp_path)


class FakeTrial:
    def __init__(self, parameter, value, trial_id):
        self.parameter, self.value, self.trialJobId = parameter, value, trial_id


class FakeExperiment:
    id = "fake123"

    def __init__(self, trials):
        self.trials, self.stopped = trials, False

    def export_data(self):
        return self.trials

    def stop(self):
        self.stopped = True


def _fake_trials(root: Path):
    return [
        FakeTrial({"method": "maskconnect", "params": {"k": 2}, "seed": 0},
                  {"default": 0.61, "fps": 55.0, "params_decoder": 4e5, "edges": 8}, "t1"),
        FakeTrial({"method": "sparsemask", "seed": 0},
                  {"default": 0.7318, "run_dir": str(root / "sm" / "s0")}, "t2"),
        FakeTrial({"strategy": "l1", "lambda_sparse": 0.001}, json.dumps({"default": 0.55, "fps": 20.0}), "t3"),
        FakeTrial({"method": "fcn"}, {"fps": 3.0}, "t4"),  # no 'default': skipped
    ]


def test_nni_experiment_object(root):
    with pytest.warns(UserWarning, match="t4"):
        df = results.load_results(FakeExperiment(_fake_trials(root)))
    assert list(df["trial_id"]) == ["t1", "t2", "t3"]
    assert (df["source"] == "nni").all()
    mc = df[df["trial_id"] == "t1"].iloc[0]
    assert (mc["family"], mc["miou"], mc["fps"], mc["params_decoder"], mc["edges"]) == \
           ("MaskConnect k=2", 0.61, 55.0, 4e5, 8)
    sm = df[df["trial_id"] == "t2"].iloc[0]  # read from its run dir
    assert sm["family"] == "SparseMask" and sm["fps"] == 98.0 and sm["binarization_gap"] == 200.0
    assert df.loc[df["trial_id"] == "t3", "family"].item() == "L1 lambda=0.001"
    assert [s.path for s in results.skipped_runs(df)] == ["experiment fake123 trial t4"]


def test_a_trial_rerun_on_a_finished_run_is_counted_once(root):
    # NNI re-runs an entry after a resume; the trial reuses the finished run directory and reports it again
    trials = _fake_trials(root)[:2]
    again = FakeTrial({"method": "sparsemask", "seed": 0},
                      {"default": 0.7318, "run_dir": str(root / "sm" / "s0")}, "t9")
    with pytest.warns(UserWarning, match="same run as trial t2"):
        df = results.load_results(FakeExperiment(trials + [again]))
    assert list(df["trial_id"]) == ["t1", "t2"]
    assert [s.path for s in results.skipped_runs(df)] == ["experiment fake123 trial t9"]


def test_unknown_name_is_neither_dir_nor_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a directory nor an NNI experiment"):
        results.load_results("no_such_runs_dir_x1")


def test_nni_trial_result_double_encoded_value(tmp_path):
    from nni.experiment.data import TrialResult  # the real class export_data() returns (no manager started)

    final = {"default": 0.64, "fps": 30.0, "params_decoder": 1e5, "edges": 5, "run_dir": str(tmp_path / "gone")}
    trial = TrialResult({"method": "rand_rule", "seed": 4}, json.dumps(json.dumps(final)), "abc")
    df = results.load_results(FakeExperiment([trial]))
    row = df.iloc[0]
    assert (row["family"], row["seed"], row["miou"], row["edges"]) == ("Rand (Rule)", 4, 0.64, 5)
    assert row["run_dir"] == str(tmp_path / "gone") and pd.isna(row["connectivity"])  # run dir missing: from result


def test_an_experiment_id_is_read_without_nni_manager(tmp_path, monkeypatch):
    # an id is read from the experiment's database (tests/test_nni_reading.py): no Experiment, no manager
    import nni.experiment

    class NoManager:
        def __init__(self, *args, **kwargs):
            raise AssertionError("load_results started NNI's manager")

    monkeypatch.setattr(nni.experiment, "Experiment", NoManager)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no database of NNI experiment 'abc123XY'; looked at "
                                                f"{tmp_path / 'nni' / 'abc123XY' / 'db' / 'nni.sqlite'}"):
        results.load_results("abc123XY", experiments_dir=tmp_path / "nni")
    assert not (tmp_path / "nni").exists()  # nothing created


# ------------------------------------------------------------------------------------------------ table
def test_format_params_and_mean_std():
    assert table.format_params(2.22e6, 0.56e6) == "2.22+0.56M"
    assert table.format_params(2.22e6, 0.03e6) == "2.22+0.03M"
    assert table.format_params(52_100, 3_400) == "52.1+3.4K"
    assert table.format_mean_std(0.7318, math.nan, 2, 100, "%") == "73.18%"
    assert table.format_mean_std(0.7268, 0.00707, 2, 100, "%") == "72.68 ± 0.71%"
    assert table.format_mean_std(math.nan) == "-"


def test_table1_values_and_order(root):
    md = table.table1_markdown(results.load_results(root))
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    assert lines[0].startswith("| Method | mIoU | #Params (M) | FPS")
    labels = [l.split(" | ")[0].strip("| ") for l in lines[2:]]
    assert labels == ["FCN", "L_task + L_bp", "Rand", "MaskConnect k=3", "L1 lambda=0.005", "SparseMask"]
    sm = lines[-1]
    # two seeds: 73.18 and 72.18 -> mean 72.68, sample std 0.7071; FPS 98, 96 -> 97 ± 1
    assert "72.68 ± 0.71%" in sm and "2.22+0.56M" in sm and "97 ± 1" in sm and sm.endswith("| 2 |")
    fcn = lines[2]
    assert "63.80%" in fcn and "±" not in fcn and "2.22+0.03M" in fcn and "| 156 |" in fcn
    assert "FPS measured on cpu" in md


def test_table_disambiguates_several_settings(root):
    write_run(root, "sm-hi", "sparsemask", {"lambda_sparse": 0.05}, 0, 0.70)
    s = table.summarize(results.load_results(root))
    assert {"SparseMask (lambda_sparse=0.01)", "SparseMask (lambda_sparse=0.05)"} <= set(s["label"])


def test_seeds_and_samples_in_params_are_replicates_not_settings(tmp_path):
    """Search runs carry their seed (and a random sample's index) in params: they group into one Table 1 row."""
    for seed, miou in ((0, 0.30), (1, 0.40)):
        write_run(tmp_path, f"mc-{seed}", "maskconnect", {"k": 3, "seed": seed, "_name": "maskconnect"}, None, miou)
        write_run(tmp_path, f"rand-{seed}", "random", {"samples": 8, "sample": seed, "seed": 0}, seed, miou)
    df = results.load_results(tmp_path)
    assert sorted(df["seed"].tolist()) == [0, 0, 1, 1]  # the seed in params fills a missing seed
    s = table.summarize(df)
    assert sorted(s["label"]) == ["MaskConnect k=3", "Rand"] and s["n"].tolist() == [2, 2]
    md = table.table1_markdown(df)
    assert md.count("35.00 ± 7.07%") == 2


def test_replicates_of_one_seed_are_not_called_seed_variation(tmp_path):
    """Three runs of seed 0 (the same command run three times) vary only by nondeterminism: the table says so
    instead of presenting their spread as variation over seeds."""
    for i, miou in enumerate((0.70, 0.71, 0.72)):
        write_run(tmp_path, f"fcn-{i}", "fcn", {}, 0, miou)
    for seed, miou in ((0, 0.60), (1, 0.62), (1, 0.61)):
        write_run(tmp_path, f"unet-{seed}-{miou}", "unet", {}, seed, miou)
    for seed, miou in ((0, 0.50), (1, 0.52)):
        write_run(tmp_path, f"sp-{seed}", "sparseacn", {}, seed, miou)
    df = results.load_results(tmp_path)
    s = table.summarize(df).set_index("label")
    assert (s.loc["FCN", "n"], s.loc["FCN", "seeds"]) == (3, 1)
    assert (s.loc["U-Net", "n"], s.loc["U-Net", "seeds"]) == (3, 2)
    md = table.table1_markdown(df)
    rows = {l.split(" | ")[0].strip("| "): l for l in md.splitlines() if l.startswith("| ") and "---" not in l}
    assert rows["FCN"].endswith("| 3 (1 seed) |") and "71.00 ± 1.00%" in rows["FCN"]
    assert rows["U-Net"].endswith("| 3 (2 seeds) |")
    assert rows["SparseACN"].endswith("| 2 |")  # two seeds: seed variation, as the note says
    assert "repeat a seed" in md and "not variation over seeds" in md and "samples" not in md


def test_random_samples_of_one_seed_are_named_samples(tmp_path):
    for sample, miou in ((0, 0.5), (1, 0.6), (2, 0.7)):
        write_run(tmp_path, f"rand-{sample}", "random", {"samples": 3, "sample": sample, "seed": 0}, 0, miou)
    md = table.table1_markdown(results.load_results(tmp_path))
    assert "| 3 (1 seed, 3 samples) |" in md and "different random decoders" in md and "repeat a seed" not in md


def test_gap_table(root):
    md = table.gap_table_markdown(results.load_results(root))
    assert "| L1 lambda=0.005 | 1 | 2.6x | - |" in md
    assert "| SparseMask | 2 | inf | 200x - inf |" in md
    assert "FCN" not in md


# ------------------------------------------------------------------------------------------------ figures
def test_pareto_front():
    x, y = [10, 20, 30, 15, 30], [5, 4, 1, 3, 1]
    assert list(figures.pareto_front(x, y, x_higher_better=True)) == [0, 1, 2]
    assert list(figures.pareto_front(x, y, x_higher_better=False)) == [0]
    assert list(figures.pareto_front([1, 2, 3], [1, 2, 3], x_higher_better=False)) == [0, 1, 2]


def test_tradeoff_figure(root):
    df = results.load_results(root)
    fig = figures.plot_tradeoff(df)
    ax_fps, ax_par = fig.axes[:2]
    assert ax_fps.get_ylabel() == "mIoU (%)" and "FPS" in ax_fps.get_xlabel()
    assert ax_par.get_xlabel().startswith("Decoder parameters (M")
    for ax in (ax_fps, ax_par):
        series = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(series) == 6  # one per family; hand-designed and ablations are one series each
        assert {c.get_label() for c in series} >= {"hand-designed (named)", "FDN ablations (named)", "Rand"}
        assert sum(len(c.get_offsets()) for c in series) == 7  # one point per run
        sm = next(c for c in series if c.get_label() == "SparseMask")
        assert sorted(np.asarray(sm.get_offsets())[:, 1].round(2)) == [72.18, 73.18]
        assert [l.get_label() for l in ax.lines] == ["Pareto front"]
    # FPS front: FCN (156, 63.8) , SparseMask (98, 73.18), L_bp (76, 73.23): 3 points
    assert len(ax_fps.lines[0].get_xdata()) == 3
    assert {t.get_text() for t in ax_fps.texts} == {"FCN", "L_task + L_bp"}  # named hand-designed/ablations
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 7  # 6 families + front


def test_tradeoff_figure_gets_a_flops_panel_when_runs_have_flops(root, tmp_path):
    assert len(figures.plot_tradeoff(results.load_results(root)).axes) == 2  # no run counted its FLOPs
    write_run(tmp_path, "fcn", "fcn", {}, 0, 0.64, flops=2.0e9, fps=156.0)
    write_run(tmp_path, "fdn", "fdn", {}, 0, 0.73, flops=9.0e9, fps=37.0)
    write_run(tmp_path, "sm", "sparsemask", {"lambda_sparse": 0.01}, 0, 0.73, flops=4.0e9, fps=98.0)
    write_run(tmp_path, "old", "unet", {}, 0, 0.65)  # evaluated before the counts: left out of that panel only
    fig = figures.plot_tradeoff(results.load_results(tmp_path))
    ax = fig.axes[2]
    assert ax.get_xlabel().startswith("GFLOPs") and len(fig.axes) == 3
    front = ax.lines[0]
    assert list(front.get_xdata()) == [2.0, 4.0]  # FCN, then SparseMask (as accurate as FDN with fewer FLOPs)


def test_gap_figure(root):
    fig = figures.plot_binarization_gap(results.load_results(root))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()
    assert len(ax.patches) == 2  # L1, SparseMask
    # SparseMask: gaps 200 and inf -> median inf, drawn hatched, labelled with its range
    assert [t.get_text() for t in ax.texts] == ["2.6x", "inf\n(200x - inf)"]
    assert [p.get_hatch() for p in ax.patches] == [None, "//"]
    assert ax.patches[1].get_height() > 10 * ax.patches[0].get_height()
    df = results.load_results(root)
    with pytest.raises(ValueError, match="binarization gap"):
        figures.plot_binarization_gap(df[df["family"] == "FCN"])


def test_weight_grid_masks_cells_outside_T():
    conn = searched_conn(True)
    grid = cf.weight_grid(cf.final_weights(conn), L)
    rows, cols = cf.grid_names(L)
    assert rows == ["D4", "D3", "D2", "D1"] and cols == ["E1", "E2", "E3", "E4", "D2", "D3", "D4", "G"]
    for i, label in enumerate(rows):
        allowed = set(candidate_names(int(label[1:]), L))
        assert {c for j, c in enumerate(cols) if not grid.mask[i, j]} == allowed
    assert grid.mask.sum() == len(rows) * len(cols) - sum(len(candidate_names(l, L)) for l in range(1, L + 1))


def test_final_weights_without_history_uses_edges():
    conn = Connectivity("convnet", INFO, [Edge("D1", "E1", 1.0), Edge("D1", "G", 0.5)])
    w = cf.final_weights(conn)
    assert w["D1"] == [1.0, 0, 0, 0, 0, 0, 0, 0.5] and w["D4"] == [0.0, 0.0]


def test_heatmap_figure():
    fig = cf.plot_w_heatmaps({"SparseMask": searched_conn(True), "L1": searched_conn(False)})
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2 and len(fig.axes) == 3  # two heatmaps + one colourbar
    for ax, title in zip(heat, ("SparseMask", "L1")):
        assert ax.get_title().startswith(title)
        (img,) = ax.images
        assert isinstance(img, AxesImage) and img.get_clim() == (0.0, 1.0)
        arr = img.get_array()
        assert arr.shape == (L, 2 * L) and arr.mask.sum() == 4 * 8 - 20
        assert [t.get_text() for t in ax.get_yticklabels()] == ["D4", "D3", "D2", "D1"]
        assert ax.get_xlabel() and ax.get_ylabel() == "decoder stage"
    colorbars = [ax for ax in fig.axes if not ax.images]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel().startswith("w")


def test_history_figure():
    conn = searched_conn(True, epochs=5)
    fig = cf.plot_w_history(conn)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in panels] == ["D4", "D3", "D2", "D1"]
    d1 = panels[-1]
    assert len(d1.lines) == len(candidate_names(1, L))
    assert list(d1.lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert any(ax.get_xlabel() == "epoch" for ax in panels) and panels[0].get_ylabel() == "w"
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 2 * L
    with pytest.raises(ValueError, match="no w history"):
        cf.plot_w_history(Connectivity("convnet", INFO, [Edge("D1", "G", 1.0)]))


def test_architecture_figure():
    conn = searched_conn(True).prune(1e-3)
    fig = cf.plot_architecture(conn)
    ax = fig.axes[0]
    arrows = {p.get_gid() for p in ax.patches if isinstance(p, FancyArrowPatch)}
    assert arrows == {f"{e.source}->{e.target}" for e in conn.edges} | {"head"}
    names = {t.get_text() for t in ax.texts}
    assert {f"E{i}" for i in range(1, L + 1)} | {"G", "D1", "head", "encoder", "decoder"} <= names
    assert f"{conn.num_edges} edges" in ax.get_title()


# ------------------------------------------------------------------------------------------------ report
def test_write_report_and_overwrite_refusal(root, tmp_path):
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{")
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="broken"):
        path = report.write_report(root, out)
    assert path == out / "report.md"
    text = path.read_text()
    for png in ("fig4_tradeoff.png", "binarization_gap.png", "fig5_w_heatmaps.png", "architecture.png",
                "fig5_w_history_sparsemask.png", "fig5_w_history_l1-lambda-0-005.png"):
        assert (out / png).is_file() and (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in text
    assert "| SparseMask | 72.68 ± 0.71%" in text and "## Skipped runs" in text
    assert "broken/metrics.json" in text.split("## Skipped runs")[1]
    assert len(pd.read_csv(out / "results.csv")) == 7
    before = path.read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        report.write_report(root, out)
    assert path.read_text() == before
    with pytest.warns(UserWarning):
        report.write_report(root, out, overwrite=True)


def test_write_report_without_connectivities(tmp_path):
    r = tmp_path / "runs"
    write_run(r, "a", "fcn", {}, 0, 0.5)
    path = report.write_report(r, tmp_path / "out")
    text = path.read_text()
    assert "fig4_tradeoff.png" in text and "fig5_w_heatmaps" not in text and "No run reports" in text
    assert text.rstrip().endswith("None.")
