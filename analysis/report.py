"""``write_report``: results -> ``report.md`` with Table 1, the gap table, Fig. 4, Fig. 5 and the architecture.

A report covers the runs of one task (:mod:`.tasks`): accuracy is the task's main score (mIoU, max F-beta, ODS),
Table 1 shows the task's scores. Runs of several tasks are refused; ``task=`` (``--task``) picks one.

Files written into ``out_dir``::

    report.md                      the report (figures linked relatively, so the folder can be moved)
    results.csv                    one row per run (see :mod:`.results`)
    fig4_tradeoff.png              main score vs FPS (or the paired FPS ratio) and vs decoder parameters, Pareto fronts
    binarization_gap.png           gap per strategy (only when some run reports one)
    fig5_w_heatmaps.png            final w of the best run of each searched family that has a connectivity
    fig5_w_history_<family>.png    w over epochs, for SparseMask and L1 runs whose connectivity has a history
    architecture.png               the best SparseMask decoder (else the best searched one)
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from .dominance import dominance_markdown
from .figures import plot_binarization_gap, plot_tradeoff, save_figure
from .results import load_results, save_csv, skipped_runs
from .table import gap_table_markdown, group_labels, table1_markdown
from .tasks import task_info

__all__ = ["write_report", "REPORT_NAME"]

REPORT_NAME = "report.md"
MAX_HEATMAPS = 4
_HEATMAP_KINDS = ("sparsemask", "l1", "ablation", "maskconnect", "other")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _representatives(df: pd.DataFrame, notes: list[str]) -> list[tuple[str, str, Any]]:
    """``(label, kind, Connectivity)`` of the run with the best main score (mIoU, max F-beta, ODS) with a readable
    connectivity, per searched label."""
    from nni_sparsemask.fdn.connectivity import Connectivity  # imports torch: only when there is one to read

    work = df[df["connectivity"].notna() & df["kind"].isin(_HEATMAP_KINDS)].copy()
    if work.empty:
        return []
    work["label"] = group_labels(df).loc[work.index]
    reps = []
    for kind in _HEATMAP_KINDS:
        for label, sub in work[work["kind"] == kind].groupby("label", sort=True):
            for _, row in sub.sort_values("main", ascending=False).iterrows():
                try:
                    reps.append((label, kind, Connectivity.from_json(Path(row["connectivity"]))))
                    break
                except (ValueError, FileNotFoundError) as err:
                    notes.append(f"connectivity of {row['run_dir']} not drawn: {err}")
                    warnings.warn(f"{row['connectivity']}: not drawn ({err})", UserWarning, stacklevel=3)
    return reps


def _pruned_for_drawing(conn: Any) -> Any:
    threshold = conn.meta.get("threshold", 1e-3) or 1e-3
    if any(e.weight < threshold for e in conn.edges):
        try:
            return conn.prune(threshold)
        except ValueError:
            return conn
    return conn


def _connectivity_sections(reps: list[tuple[str, str, Any]], out_dir: Path, score: str = "mIoU") -> list[str]:
    """Fig. 5 (w heatmaps, w over epochs) and the searched architecture of ``reps`` (:func:`_representatives`):
    the figures are written into ``out_dir``, the markdown lines returned. ``score``: the name of the main score."""
    from .connectivity_figures import plot_architecture, plot_w_heatmaps, plot_w_history

    shown = reps[:MAX_HEATMAPS]
    save_figure(plot_w_heatmaps({label: conn for label, _, conn in shown}), out_dir / "fig5_w_heatmaps.png")
    md = ["## Fig. 5: connection weights\n",
          f"Final w of the best run (by {score}) of each searched strategy: rows are decoder stages, columns "
          "the candidate inputs; grey cells are inputs a stage cannot read.\n",
          "![Fig. 5](fig5_w_heatmaps.png)\n"]
    for label, kind, conn in reps:
        if kind in ("sparsemask", "l1") and conn.history:
            name = f"fig5_w_history_{_slug(label)}.png"
            save_figure(plot_w_history(conn, title=f"{label}: w over epochs"), out_dir / name)
            md.append(f"![{label}: w over epochs]({name})\n")
    label, _, conn = next((r for r in reps if r[1] == "sparsemask"), reps[0])
    save_figure(plot_architecture(_pruned_for_drawing(conn), title=label), out_dir / "architecture.png")
    return md + ["## Searched architecture\n", f"The decoder of the best {label} run.\n",
                 "![Architecture](architecture.png)\n"]


def _one_task(df: pd.DataFrame, source: Any) -> str:
    """The task of ``df``'s runs; runs of several tasks are refused with one line naming each task and one of its
    runs."""
    tasks = sorted(df["task"].unique())
    if len(tasks) > 1:
        found = []
        for task in tasks:
            row = df[df["task"] == task].iloc[0]
            where = row["run_dir"] if isinstance(row["run_dir"], str) else f"trial {row['trial_id']}"
            found.append(f"{task} (e.g. {where})")
        raise ValueError(f"{source} holds runs of {len(tasks)} tasks, whose scores are not comparable: "
                         f"{'; '.join(found)}; report each task's runs separately (one folder per task) or pass "
                         "task= (--task) to pick one")
    return tasks[0]


def write_report(source: Any, out_dir: str | Path, overwrite: bool = False, task: str | None = None,
                 paired_fps: str | Path | None = None) -> Path:
    """Write the report of ``source`` (a root of run dirs, an NNI experiment id or Experiment) into ``out_dir``.

    Returns the path of ``report.md``. Refuses (``FileExistsError``) to replace an existing ``report.md``
    unless ``overwrite``. Runs with a corrupt ``metrics.json`` are skipped with a warning and listed in the
    report; a source without any readable run raises ``ValueError``. ``task``: report only the runs of that task
    (``segmentation``, ``saliency``, ``edges``; :func:`.results.load_results`); without it, runs of several
    tasks are refused (``ValueError``).
    """
    out_dir = Path(out_dir)
    report_path = out_dir / REPORT_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory; choose another output folder")
    if report_path.exists() and not overwrite:
        raise FileExistsError(f"{report_path} exists; pass overwrite=True (--overwrite) to replace it")
    df = load_results(source, task=task, paired_fps=paired_fps)
    info = task_info(_one_task(df, source))
    score = info.label
    out_dir.mkdir(parents=True, exist_ok=True)
    save_csv(df, out_dir / "results.csv")
    notes: list[str] = [f"left out {n} run{'' if n == 1 else 's'} of task {t} (reported: {info.name})"
                        for t, n in sorted(df.attrs.get("other_tasks", {}).items())]
    task_line = "" if info.name == "segmentation" else f" Task: {info.name} (main score: {score})."
    md = [f"# SparseMask results\n\nSource: `{source}` - {len(df)} runs, "
          f"{df['family'].nunique()} strategies.{task_line} All numbers per run are in [results.csv](results.csv).\n",
          "## Table 1: accuracy, size and speed\n", table1_markdown(df), ""]

    save_figure(plot_tradeoff(df), out_dir / "fig4_tradeoff.png")
    md += ["## Fig. 4: accuracy vs speed and decoder size\n",
           f"Dashed step line: Pareto front (higher {score} and higher FPS, resp. fewer decoder parameters or "
           "FLOPs, is better). The FLOPs panel (per forward at the FPS input size) appears when the runs counted them.\n",
           "![Fig. 4](fig4_tradeoff.png)\n", "### Who dominates whom\n", dominance_markdown(df), ""]

    md += ["## Binarization gap\n", gap_table_markdown(df), ""]
    if df["binarization_gap"].notna().any():
        save_figure(plot_binarization_gap(df), out_dir / "binarization_gap.png")
        md.append("![Binarization gap](binarization_gap.png)\n")

    reps = _representatives(df, notes)
    if reps:
        md += _connectivity_sections(reps, out_dir, score)

    skipped = skipped_runs(df)
    md.append("## Skipped runs\n")
    md += [f"- `{s.path}`: {s.reason}" for s in skipped] or ["None."]
    if notes:
        md += ["", "## Notes\n"] + [f"- {n}" for n in notes]
    tmp = report_path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, report_path)
    return report_path
