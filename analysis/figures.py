"""Fig. 4 (accuracy vs speed / size, with Pareto fronts) and the binarisation-gap bar plot.

Accuracy is the runs' main score (``main``: mIoU, max F-beta or ODS by their task, :mod:`.tasks`), named by the
task on the axes ("ODS (%)").

Plots are built on ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot, no display, no global
state) and returned, so callers and tests can inspect them; :func:`save_figure` writes a PNG.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import Bbox

from .table import format_gap, group_labels, paired_reference, params_unit, summarize, task_of
from .tasks import task_info

__all__ = ["plot_tradeoff", "plot_binarization_gap", "pareto_front", "save_figure", "family_style"]

# (colour, marker, size) per family kind; MaskConnect and L1 shade by hyper-parameter rank instead.
_STYLE = {
    "sparsemask": ("#d62728", "*", 220),
    "rand": ("#7f7f7f", "o", 28),
    "rand_rule": ("#bcbd22", "s", 28),
    "maskconnect": (None, "^", 60),
    "l1": (None, "D", 50),
    "hand": ("#000000", "P", 80),
    "ablation": ("#ff7f0e", "X", 80),
    "other": ("#e377c2", "v", 50),
}
_RAMPS = {"maskconnect": "Blues", "l1": "Purples"}
HAND_SERIES = "hand-designed (named)"
ABLATION_SERIES = "FDN ablations (named)"
# label offsets tried in turn (points from the marker): right-up, right-down, left-up, left-down, further out
_OFFSETS = [(6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"), (10, 16, "left"),
            (-10, 16, "right"), (10, -24, "left"), (-10, -24, "right"), (0, 26, "center"), (0, -34, "center"),
            (22, 30, "left"), (-22, 30, "right"), (22, -40, "left"), (-22, -40, "right"),
            (-40, 0, "right"), (-40, -20, "right"), (-40, 20, "right"), (0, -50, "center"), (0, 44, "center"),
            (-60, -40, "right"), (-60, 34, "right"), (40, -54, "left"), (-40, -54, "right")]
_LEADER = {"arrowstyle": "-", "color": "#888888", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(ax, points: list[tuple[str, float, float]]) -> None:
    """Annotate ``(text, x, y)`` points. Each label takes the first offset of :data:`_OFFSETS` whose text box
    overlaps no earlier label and no marker and stays inside the axes, else the offset with the least
    weighted overlap (greedy); labels set further away get a thin leader line to their point."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    markers = [Bbox.from_bounds(px - 5, py - 5, 10, 10) for c in ax.collections
               for px, py in c.get_offset_transform().transform(c.get_offsets()) if np.isfinite(px + py)]
    for text, x, y in sorted(points, key=lambda p: -p[2]):
        best = None
        for dx, dy, ha in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=8,
                              color="#222222", zorder=4, arrowprops=_LEADER if abs(dx) + abs(dy) > 20 else None)
            box = ann.get_window_extent(renderer).padded(3)
            outside = box.width * box.height - _overlap(box, frame)
            score = (2 * outside + 4 * sum(_overlap(box, b) for b in placed)
                     + sum(_overlap(box, m) for m in markers))
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, ann, box)
            else:
                ann.remove()
            if score == 0:
                break
        placed.append(best[2])


def save_figure(fig: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write ``fig`` as PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def family_style(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{label: {'color', 'marker', 's'}}`` for the rows of :func:`.table.summarize`."""
    styles: dict[str, dict[str, Any]] = {}
    ramps = dict(_RAMPS)
    if (summary["kind"] == "sparsemask").sum() > 1:  # several SparseMask settings (cost budgets): shades of red
        ramps["sparsemask"] = "Reds"
    for kind, ramp in ramps.items():
        labels = list(summary.loc[summary["kind"] == kind, "label"])
        cmap = colormaps[ramp]
        for i, label in enumerate(labels):
            shade = 0.45 + 0.5 * (i / max(1, len(labels) - 1)) if len(labels) > 1 else 0.75
            styles[label] = {"color": cmap(shade), "marker": _STYLE[kind][1], "s": _STYLE[kind][2]}
    for _, row in summary.iterrows():
        if row["label"] not in styles:
            color, marker, size = _STYLE.get(row["kind"], _STYLE["other"])
            styles[row["label"]] = {"color": color, "marker": marker, "s": size}
    return styles


def pareto_front(x: Iterable[float], y: Iterable[float], x_higher_better: bool) -> np.ndarray:
    """Indices of the non-dominated points (higher ``y`` better; higher or lower ``x`` better), sorted by x.

    Non-finite points are ignored. A point is dominated when another is at least as good in both and
    strictly better in one; of exact duplicates one is kept.
    """
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    sx = x if x_higher_better else -x
    keep = []
    for i in np.flatnonzero(np.isfinite(x) & np.isfinite(y)):
        others = np.isfinite(x) & np.isfinite(y)
        others[i] = False
        better_eq = (sx >= sx[i]) & (y >= y[i]) & others
        strictly = better_eq & ((sx > sx[i]) | (y > y[i]))
        duplicate_before = better_eq & ~strictly & (np.arange(len(x)) < i)
        if not strictly.any() and not duplicate_before.any():
            keep.append(i)
    keep = np.asarray(keep, dtype=int)
    return keep[np.argsort(x[keep], kind="stable")]


def _draw_front(ax, x: np.ndarray, y: np.ndarray, x_higher_better: bool) -> None:
    idx = pareto_front(x, y, x_higher_better)
    if len(idx) == 0:
        return
    # Staircase bounding the dominated region: for higher-x-better the value holds leftwards ('pre'),
    # for lower-x-better it holds rightwards ('post').
    ax.step(x[idx], y[idx], where="pre" if x_higher_better else "post", color="#444444", linestyle="--",
            linewidth=1.2, zorder=1, label="Pareto front")


def _tradeoff_points(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs with what Fig. 4 plots (``label``, ``dec`` in ``unit``, ``main_pct``: the main score in %,
    ``gflops``, ``speed``: the paired FPS ratio when every run has one, else FPS; ``series``) and the unit of the
    decoder parameters (``K`` or ``M``)."""
    work = df.copy()
    work["label"] = group_labels(work)
    unit = params_unit(list(work["params_decoder"]))
    div = 1e6 if unit == "M" else 1e3
    work["dec"] = work["params_decoder"] / div
    work["main_pct"] = (work["main"] if "main" in work else work["miou"]) * 100
    work["gflops"] = work["flops"] / 1e9 if "flops" in work else np.nan
    # the speed axis: the paired ratio when every run has one (timed side by side), else each run's own FPS
    work["speed"] = work["fps_ratio"] if paired_reference(work, complete=True) else work["fps"]
    # one series per family; hand-designed decoders and FDN ablations share one series each, named by text
    work["series"] = work["label"]
    work.loc[work["kind"] == "hand", "series"] = HAND_SERIES
    work.loc[work["kind"] == "ablation", "series"] = ABLATION_SERIES
    return work, unit


def _label_tradeoff_axes(axes: list, device: str | None, unit: str, log_params: bool, score: str = "mIoU",
                         reference: str | None = None) -> None:
    """Axis labels and titles of Fig. 4's panels (FPS, decoder parameters, GFLOPs when there); ``score``: the
    name of the y axis' score (the task's main score); ``reference``: the speed axis is FPS / that method's FPS,
    timed side by side (paired), instead of FPS."""
    ax_fps, ax_par = axes[:2]
    where = f", {device}" if device is not None else ""
    ax_fps.set_xlabel(f"FPS / {reference} (paired, side by side{where})" if reference else
                      f"Inference speed (FPS, frames/s{where})")
    ax_par.set_xlabel(f"Decoder parameters ({unit}" + (", log scale" if log_params else "") + ")")
    ax_fps.set_ylabel(f"{score} (%)")
    ax_fps.set_title(f"{score} vs FPS (up and right is better)")
    ax_par.set_title(f"{score} vs decoder size (up and left is better)")
    if len(axes) > 2:
        axes[2].set_xlabel("GFLOPs per forward (at the FPS input size)")
        axes[2].set_title(f"{score} vs FLOPs (up and left is better)")


def plot_tradeoff(df: pd.DataFrame, title: str = "Accuracy vs speed and decoder size (Fig. 4)") -> Figure:
    """Fig. 4: the main score (mIoU; max F-beta, ODS for saliency, edge runs: one task per figure) vs FPS (left;
    FPS / the reference network's, paired, when every run has a ``fps_ratio`` from ``sparsemask retime``)
    and vs decoder parameters (middle), one point per run; a third panel, the score vs GFLOPs per forward (at
    the FPS input size, the count no machine changes), when at least two runs have it (``flops`` in
    ``metrics.json``).

    One colour/marker per strategy family (MaskConnect k and L1 lambda in shades of one colour each); the
    hand-designed decoders are one series, the FDN ablations another, each decoder named by a text label at
    its mean (placed so labels do not overlap). The dashed step line is the Pareto front (higher score and
    higher FPS, resp. fewer parameters, is better). One legend for both panels sits below them. Each series
    is one scatter collection per panel.
    """
    if df.empty:
        raise ValueError("no runs to plot")
    score = task_info(task_of(df)).label
    summary = summarize(df)
    styles = family_style(summary)
    work, unit = _tradeoff_points(df)
    panels = [("speed", True), ("dec", False)] + ([("gflops", False)] if work["gflops"].notna().sum() >= 2 else [])

    fig = Figure(figsize=(6 * len(panels), 5.6), layout="constrained")
    FigureCanvasAgg(fig)  # a real canvas: text boxes are measured to place the labels
    axes = list(fig.subplots(1, len(panels), sharey=True))
    ax_fps = axes[0]
    dec_pos = work["dec"][work["dec"] > 0]
    log_params = len(dec_pos) > 1 and dec_pos.max() / dec_pos.min() > 30
    if log_params:
        axes[1].set_xscale("log")
        axes[1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[1].xaxis.set_minor_formatter(NullFormatter())
    order = list(dict.fromkeys(work.set_index("label").loc[summary["label"], "series"]))
    for ax, (xcol, higher) in zip(axes, panels):
        for series in order:
            sub = work[work["series"] == series]
            st = styles[sub["label"].iloc[0]]
            ax.scatter(sub[xcol], sub["main_pct"], c=[st["color"]], marker=st["marker"], s=st["s"],
                       edgecolors="white" if st["marker"] != "*" else "black", linewidths=0.5, alpha=0.9,
                       label=series, zorder=3 if st["marker"] == "*" else 2)
        known = work[np.isfinite(work[xcol].to_numpy(float))]
        _draw_front(ax, known[xcol].to_numpy(float), known["main_pct"].to_numpy(float), higher)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.06, y=0.08)
    devices = sorted({str(d) for d in df["fps_device"].dropna().unique()})
    _label_tradeoff_axes(axes, devices[0] if len(devices) == 1 else None, unit, log_params, score,
                         paired_reference(df, complete=True))
    handles, labels = ax_fps.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title)
    named = work[work["kind"].isin(["hand", "ablation"])].groupby("label", sort=False)
    fig.draw_without_rendering()  # settle the layout so that label boxes can be measured
    for ax, (xcol, _) in zip(axes, panels):
        points = [(label, sub[xcol].mean(), sub["main_pct"].mean()) for label, sub in named
                  if np.isfinite(sub[xcol].mean()) and np.isfinite(sub["main_pct"].mean())]
        _place_labels(ax, points)
    return fig


def plot_binarization_gap(df: pd.DataFrame, title: str = "Binarization gap per strategy") -> Figure:
    """Bar per strategy: median gap (min kept w / max dropped non-zero w) over runs, min-max whiskers, log y.

    An infinite gap (every dropped w exactly 0) is drawn as a hatched bar reaching above the largest finite
    one and labelled ``inf``. Each bar is labelled with its median (and the range over runs when there are
    several, above the whisker). The dotted line at 1 is "no separation at all".
    """
    summary = summarize(df)
    summary = summary[summary["gap_n"] > 0].reset_index(drop=True)
    if summary.empty:
        raise ValueError("no run reports a binarization gap (metrics.json 'binarization_gap')")
    styles = family_style(summarize(df))
    finite = [v for v in summary[["gap_median", "gap_min", "gap_max"]].to_numpy().ravel() if np.isfinite(v)]
    top = 10 ** math.ceil(math.log10(max(finite))) * 10 if finite else 1e3
    fig = Figure(figsize=(max(5.0, 1.1 * len(summary) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(summary))
    for i, row in summary.iterrows():
        med = row["gap_median"]
        height = top if math.isinf(med) else med
        ax.bar(xs[i], height, color=styles[row["label"]]["color"], edgecolor="black", linewidth=0.6,
               hatch="//" if math.isinf(med) else None)
        label_y, text = height, format_gap(med)
        if row["gap_n"] > 1 and np.isfinite(row["gap_min"]):
            hi = min(row["gap_max"], top)
            ax.plot([xs[i], xs[i]], [row["gap_min"], hi], color="black", linewidth=1.2)
            label_y, text = max(height, hi), f"{text}\n({format_gap(row['gap_min'])} - {format_gap(row['gap_max'])})"
        ax.annotate(text, (xs[i], label_y), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.axhline(1.0, color="#555555", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(0.5 if all(v >= 1 for v in finite) else min(finite) / 2, top * 20)
    ax.set_xticks(xs, [f"{l}\n(n={n})" for l, n in zip(summary["label"], summary["gap_n"])], fontsize=8)
    ax.set_ylabel("min kept w / max dropped w (log scale)")
    ax.set_xlabel("Strategy (n = runs)")
    ax.set_title(title)
    return fig
