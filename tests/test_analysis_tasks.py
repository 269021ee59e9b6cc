"""Analysis of saliency and edge runs: the task and its scores in the results, the main score in Table 1 / Fig. 4 /
Fig. 5, one task per report (mixed tasks refused, ``task=`` / ``--task`` picks one).

Fake run directories as in tests/test_analysis.py (``write_run``), with ``task``, ``main`` and the task's scores in
``metrics.json`` as ``evaluate_network`` writes them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from nni_sparsemask.analysis import figures, report, results, table
from nni_sparsemask.analysis import tasks as analysis_tasks

from test_analysis import FakeExperiment, FakeTrial, searched_conn, write_run


def edges_run(root: Path, name: str, method: str, params: dict, seed: int, ods: float, ois: float = 0.5,
              ap: float = 0.4, miou: float = 0.45, **kw) -> Path:
    return write_run(root, name, method, params, seed, miou, task="edges", main="ods", ods=ods, ois=ois, ap=ap, **kw)


def saliency_run(root: Path, name: str, method: str, params: dict, seed: int, fbeta: float, mae: float,
                 **kw) -> Path:
    return write_run(root, name, method, params, seed, 0.6, task="saliency", main="max_fbeta", max_fbeta=fbeta,
                     mae=mae, **kw)


def _drop(run: Path, *keys: str) -> None:
    path = run / "metrics.json"
    m = json.loads(path.read_text())
    for k in keys:
        m.pop(k)
    path.write_text(json.dumps(m))


@pytest.fixture
def edges_root(tmp_path) -> Path:
    r = tmp_path / "edges"
    edges_run(r, "fcn", "fcn", {}, 0, 0.60, 0.62, 0.55, dec=0.03e6, fps=156.0, edges=1)
    edges_run(r, "sm/s0", "sparsemask", {"lambda_sparse": 0.01}, 0, 0.72, 0.74, 0.70, dec=0.56e6, fps=98.0, edges=8,
              gap=200.0, conn=searched_conn(True))
    edges_run(r, "sm/s1", "sparsemask", {"lambda_sparse": 0.01}, 1, 0.70, 0.72, 0.68, dec=0.56e6, fps=96.0, edges=8)
    edges_run(r, "l1", "l1", {"lambda_sparse": 0.005}, 0, 0.66, dec=1.2e6, fps=40.0, edges=20, gap=2.6,
              conn=searched_conn(False))
    return r


# ------------------------------------------------------------------------------------------------ the table copy
def test_the_analysis_copy_of_the_tasks_equals_the_run_layer():
    from nni_sparsemask.run.tasks import TASKS

    assert list(analysis_tasks.TASKS) == list(TASKS)
    for name, run_info in TASKS.items():
        mine = analysis_tasks.TASKS[name]
        assert (mine.name, mine.main, mine.label, mine.scores, mine.lower_is_better) == \
               (run_info.name, run_info.main, run_info.label, run_info.scores, run_info.lower_is_better)
    assert set(analysis_tasks.SCORE_COLUMNS) == {s for t in TASKS.values() for s in t.scores}
    assert set(analysis_tasks.SCORE_LABELS) == set(analysis_tasks.SCORE_COLUMNS)
    for name, cols in analysis_tasks.TABLE_SCORES.items():
        assert cols[0] == TASKS[name].main and set(cols) <= set(TASKS[name].scores)
    assert set(analysis_tasks.ADE20K_TABLE_SCORES) <= set(TASKS["segmentation"].scores)


# ------------------------------------------------------------------------------------------------ loading
def test_an_old_run_without_task_is_segmentation(tmp_path):
    write_run(tmp_path, "old", "fcn", {}, 0, 0.64)  # metrics.json of an earlier release: no task, no main
    row = results.load_results(tmp_path).iloc[0]
    assert row["task"] == "segmentation" and row["main"] == row["miou"] == 0.64
    assert all(math.isnan(row[c]) for c in ("score", "max_fbeta", "mae", "ods", "ois", "ap"))
    assert row["dataset"] is None


def test_task_and_scores_are_columns_and_main_is_the_task_s_main_score(tmp_path):
    saliency_run(tmp_path, "sal", "fcn", {}, 0, 0.81, 0.052)
    edges_run(tmp_path, "edge", "unet", {}, 0, 0.71, 0.73, 0.69)
    write_run(tmp_path, "seg", "fdn", {}, 0, 0.55, task="segmentation", main="miou", score=0.7)
    df = results.load_results(tmp_path).set_index("method")
    assert df.loc["fcn", ["task", "main", "max_fbeta", "mae"]].tolist() == ["saliency", 0.81, 0.81, 0.052]
    assert df.loc["unet", ["task", "main", "ods", "ois", "ap"]].tolist() == ["edges", 0.71, 0.71, 0.73, 0.69]
    assert df.loc["fdn", ["task", "main", "score"]].tolist() == ["segmentation", 0.55, 0.7]
    assert math.isnan(df.loc["fcn", "ods"]) and math.isnan(df.loc["unet", "mae"])
    cols = list(df.reset_index().columns)
    assert cols.index("task") < cols.index("config") < cols.index("main") < cols.index("miou")


def test_miou_is_not_required_for_saliency_and_edges_but_the_main_score_is(tmp_path):
    _drop(saliency_run(tmp_path, "sal", "fcn", {}, 0, 0.81, 0.05), "miou", "pixel_accuracy", "fg_iou")
    _drop(edges_run(tmp_path, "edge", "unet", {}, 0, 0.71), "miou")
    _drop(edges_run(tmp_path, "no-ods", "fdn", {}, 0, 0.71), "ods")
    edges_run(tmp_path, "pct", "fdn", {}, 1, 0.71, ois=73.0)  # a percentage where a fraction belongs
    saliency_run(tmp_path, "mae-pct", "fdn", {}, 2, 0.8, 5.2)
    write_run(tmp_path, "other", "fdn", {}, 3, 0.5, task="depth")
    write_run(tmp_path, "mismatch", "fdn", {}, 4, 0.5, task="edges", main="miou", ods=0.6)
    with pytest.warns(UserWarning):
        df = results.load_results(tmp_path)
    assert sorted(df["method"]) == ["fcn", "unet"] and df["miou"].isna().all()
    reasons = {Path(s.path).parent.name: s.reason for s in results.skipped_runs(df)}
    assert reasons["no-ods"] == "'ods' is missing"
    assert reasons["pct"].startswith("ois 73.0 is outside [0, 1]")
    assert reasons["mae-pct"].startswith("mae 5.2 is outside [0, 1]")
    assert "unknown task 'depth'" in reasons["other"]
    assert "main score 'miou' is not the main score of task edges (ods)" in reasons["mismatch"]


def test_the_task_and_data_set_fall_back_to_config_json(tmp_path):
    run = edges_run(tmp_path, "e", "fcn", {}, 0, 0.7)
    _drop(run, "task")
    config = json.loads((run / "config.json").read_text())
    config["data"] = {"dataset": "bsds500", "task": "edges"}
    (run / "config.json").write_text(json.dumps(config))
    row = results.load_results(tmp_path).iloc[0]
    assert (row["task"], row["dataset"], row["main"]) == ("edges", "bsds500", 0.7)


def test_an_nni_final_result_s_default_is_the_task_s_main_score(tmp_path):
    trials = [FakeTrial({"method": "fcn", "seed": 0}, {"default": 0.71, "task": "edges", "fps": 9.0}, "t1"),
              FakeTrial({"method": "unet", "seed": 0}, {"default": 0.62, "fps": 9.0}, "t2"),
              FakeTrial({"method": "fdn", "seed": 0}, {"default": 0.8, "task": "saliency", "mae": 0.05}, "t3")]
    df = results.load_results(FakeExperiment(trials)).set_index("trial_id")
    assert df.loc["t1", ["task", "main", "ods"]].tolist() == ["edges", 0.71, 0.71] and math.isnan(df.loc["t1", "miou"])
    assert df.loc["t2", ["task", "main", "miou"]].tolist() == ["segmentation", 0.62, 0.62]
    assert df.loc["t3", ["task", "main", "max_fbeta", "mae"]].tolist() == ["saliency", 0.8, 0.8, 0.05]


def test_load_results_keeps_one_task_when_asked(tmp_path):
    edges_run(tmp_path, "e0", "fcn", {}, 0, 0.7)
    edges_run(tmp_path, "e1", "unet", {}, 0, 0.6)
    write_run(tmp_path, "s0", "fdn", {}, 0, 0.5)
    df = results.load_results(tmp_path, task="edges")
    assert sorted(df["method"]) == ["fcn", "unet"] and df.attrs["other_tasks"] == {"segmentation": 1}
    assert results.load_results(tmp_path).attrs["other_tasks"] == {}
    with pytest.raises(ValueError, match=r"no runs of task saliency in .*; found edges \(2 runs\), segmentation "
                                         r"\(1 run\)"):
        results.load_results(tmp_path, task="saliency")
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        results.load_results(tmp_path, task="depth")


def test_a_run_dir_given_directly_with_another_task_is_refused(tmp_path):
    run = edges_run(tmp_path, "e0", "fcn", {}, 0, 0.7)
    assert results.load_results(run, task="edges")["task"].tolist() == ["edges"]
    with pytest.raises(ValueError) as err:
        results.load_results(run, task="segmentation")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{run} is a run of task edges, not segmentation")
    with pytest.raises(ValueError, match="is a run of task edges, not saliency"):
        report.write_report(run, tmp_path / "out", task="saliency")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ table, figure
def test_edges_table_shows_ods_ois_ap(edges_root):
    md = table.table1_markdown(results.load_results(edges_root))
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    assert lines[0] == "| Method | ODS | OIS | AP | #Params (M) | FPS | Edges | Runs |"
    assert lines[1] == "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    sm = lines[-1]  # ODS 72, 70 -> 71 ± 1.41; OIS 74, 72; AP 70, 68
    assert sm.startswith("| SparseMask | 71.00 ± 1.41% | 73.00 ± 1.41% | 69.00 ± 1.41% | 2.22+0.56M | 97 ± 1 |")
    assert "mIoU" not in md and "Scores and FPS: mean ± sample std" in md


def test_saliency_table_shows_max_fbeta_and_mae(tmp_path):
    saliency_run(tmp_path, "a", "fcn", {}, 0, 0.81, 0.052)
    saliency_run(tmp_path, "b", "fcn", {}, 1, 0.83, 0.048)
    md = table.table1_markdown(results.load_results(tmp_path))
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    assert lines[0] == "| Method | max F-beta | MAE | #Params (M) | FPS | Edges | Runs |"
    assert lines[2].startswith("| FCN | 82.00 ± 1.41% | 0.050 ± 0.003 |")
    assert "(MAE: lower is better)" in md


def test_ade20k_segmentation_table_shows_pixacc_miou_score(tmp_path):
    for seed, miou in ((0, 0.30), (1, 0.32)):
        run = write_run(tmp_path, f"f{seed}", "fcn", {}, seed, miou, task="segmentation", main="miou",
                        pixel_accuracy=0.70, score=(miou + 0.70) / 2)
        config = json.loads((run / "config.json").read_text())
        config["data"] = {"dataset": "ade20k", "task": "segmentation"}
        (run / "config.json").write_text(json.dumps(config))
    md = table.table1_markdown(results.load_results(tmp_path))
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    assert lines[0] == "| Method | PixAcc | mIoU | Score | #Params (M) | FPS | Edges | Runs |"
    assert lines[2].startswith("| FCN | 70.00 ± 0.00% | 31.00 ± 1.41% | 50.50 ± 0.71% |")


def test_segmentation_table_of_new_runs_is_unchanged(tmp_path):
    """A segmentation run of this release (task, main, Score) off ADE20K: the table of earlier releases."""
    write_run(tmp_path, "f", "fcn", {}, 0, 0.638, task="segmentation", main="miou", score=0.77)
    md = table.table1_markdown(results.load_results(tmp_path))
    assert md.splitlines()[0] == "| Method | mIoU | #Params (M) | FPS | Edges | Runs |"
    assert "| FCN | 63.80% |" in md and "\n\nmIoU and FPS: mean ± sample std" in md


def test_edges_tradeoff_figure_plots_ods(edges_root):
    fig = figures.plot_tradeoff(results.load_results(edges_root))
    ax_fps, ax_par = fig.axes[:2]
    assert ax_fps.get_ylabel() == "ODS (%)"
    assert ax_fps.get_title().startswith("ODS vs FPS") and ax_par.get_title().startswith("ODS vs decoder size")
    sm = next(c for c in ax_fps.collections if c.get_label() == "SparseMask")
    assert sorted(sm.get_offsets()[:, 1].round(2)) == [70.0, 72.0]


def test_a_figure_or_table_of_several_tasks_is_refused(tmp_path):
    edges_run(tmp_path, "e", "fcn", {}, 0, 0.7)
    write_run(tmp_path, "s", "fcn", {}, 1, 0.5)
    df = results.load_results(tmp_path)
    with pytest.raises(ValueError, match="several tasks"):
        figures.plot_tradeoff(df)
    with pytest.raises(ValueError, match="several tasks"):
        table.table1_markdown(df)


# ------------------------------------------------------------------------------------------------ report
def test_edges_report(edges_root, tmp_path, monkeypatch):
    drawn = []

    def plot(df, *args, **kwargs):
        drawn.append(figures.plot_tradeoff(df, *args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(report, "plot_tradeoff", plot)
    out = tmp_path / "report"
    text = report.write_report(edges_root, out).read_text()
    assert drawn[0].axes[0].get_ylabel() == "ODS (%)"
    assert "| Method | ODS | OIS | AP | #Params (M) | FPS | Edges | Runs |" in text
    assert "Task: edges (main score: ODS)." in text and "higher ODS and higher FPS" in text
    assert "Final w of the best run (by ODS)" in text and "mIoU" not in text
    csv = pd.read_csv(out / "results.csv")
    assert set(csv["task"]) == {"edges"} and list(csv["main"]) == list(csv["ods"])


def test_the_representative_run_is_the_best_by_the_main_score(tmp_path):
    binary, spread = searched_conn(True), searched_conn(False)
    # the better ODS has the worse mIoU: the ODS picks it
    edges_run(tmp_path, "a", "sparsemask", {"lambda_sparse": 0.01}, 0, 0.60, miou=0.9, conn=binary)
    edges_run(tmp_path, "b", "sparsemask", {"lambda_sparse": 0.01}, 1, 0.70, miou=0.1, conn=spread)
    (label, kind, conn), = report._representatives(results.load_results(tmp_path), [])
    assert (label, kind) == ("SparseMask", "sparsemask")
    assert [e.weight for e in conn.edges] == [e.weight for e in spread.edges]


def test_a_report_of_several_tasks_is_refused_in_one_line(tmp_path):
    root = tmp_path / "runs"
    e = edges_run(root, "e", "fcn", {}, 0, 0.7)
    s = write_run(root, "s", "fcn", {}, 1, 0.5)
    saliency_run(root, "x", "fcn", {}, 2, 0.8, 0.05)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        report.write_report(root, out)
    msg = str(err.value)
    assert "\n" not in msg and not out.exists()
    assert f"edges (e.g. {e})" in msg and f"segmentation (e.g. {s})" in msg and "saliency (e.g. " in msg
    assert "report each task's runs separately" in msg and "--task" in msg
    path = report.write_report(root, out, task="segmentation")
    text = path.read_text()
    assert "| FCN | 50.00% |" in text and "Task:" not in text
    assert "- left out 1 run of task edges (reported: segmentation)" in text
    assert "- left out 1 run of task saliency (reported: segmentation)" in text


def test_report_command_task_flag(tmp_path, capsys):
    from nni_sparsemask.cli import main

    root = tmp_path / "runs"
    e = edges_run(root, "e", "fcn", {}, 0, 0.7)
    write_run(root, "s", "fcn", {}, 1, 0.5)
    assert main(["report", str(root), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 tasks" in err and "--task" in err
    assert main(["report", str(e), "--out", str(tmp_path / "wrong"), "--task", "segmentation"]) == 2
    assert capsys.readouterr().err.strip() == (f"sparsemask report: error: {e} is a run of task edges, not "
                                               "segmentation: report it with --task edges (task='edges') or without "
                                               "--task")
    assert main(["report", str(root), "--out", str(tmp_path / "edges"), "--task", "edges"]) == 0
    assert "| FCN | 70.00% | 50.00% | 40.00% |" in (tmp_path / "edges" / "report.md").read_text()
