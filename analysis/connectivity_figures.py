"""Figures of one or more connectivities: Fig. 5 heatmaps of the final w, w over epochs, the architecture.

The heatmap grid is the same for every FDN over L encoder stages: rows are decoder stages ``D_L .. D_1``
(deepest on top, the order they are computed in), columns all candidate names ``E1..EL, D2..DL, G``; a cell
outside ``T_l`` (stage ``D_l`` cannot read that input) is masked and drawn grey.

The final w of a connectivity is its last ``history`` entry when it has one (the unpruned w over all of
``T_l``), else the weights on its edges, with 0 for candidates that have no edge (pruned or never connected).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from nni_sparsemask.fdn.connectivity import Connectivity, candidate_names

__all__ = ["final_weights", "weight_grid", "grid_names", "plot_w_heatmaps", "plot_w_history", "plot_architecture"]

_MASK_COLOR = "#d9d9d9"


def grid_names(num_stages: int) -> tuple[list[str], list[str]]:
    """Row names ``D_L..D_1`` and column names ``E1..EL, D2..DL, G`` of the heatmap grid."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    rows = [f"D{l}" for l in range(num_stages, 0, -1)]
    cols = [f"E{i}" for i in range(1, num_stages + 1)] + [f"D{i}" for i in range(2, num_stages + 1)] + ["G"]
    return rows, cols


def final_weights(conn: Connectivity) -> dict[str, list[float]]:
    """``{D_l: [w over T_l]}``: the last history entry when there is one, else edge weights (0 when absent)."""
    if conn.history:
        last = conn.history[-1]
        out = {f"D{l}": [0.0] * len(candidate_names(l, conn.num_stages)) for l in range(1, conn.num_stages + 1)}
        out.update({label: [float(w) for w in ws] for label, ws in last.items()})
        return out
    return {f"D{l}": [conn.weight(f"D{l}", s) or 0.0 for s in candidate_names(l, conn.num_stages)]
            for l in range(1, conn.num_stages + 1)}


def weight_grid(weights: Mapping[str, Sequence[float]], num_stages: int) -> np.ma.MaskedArray:
    """The rows x columns grid of :func:`grid_names` filled with ``weights``; cells outside T_l masked."""
    rows, cols = grid_names(num_stages)
    col_index = {c: j for j, c in enumerate(cols)}
    data = np.zeros((len(rows), len(cols)))
    mask = np.ones_like(data, dtype=bool)
    for i, label in enumerate(rows):
        names = candidate_names(int(label[1:]), num_stages)
        ws = weights.get(label)
        if ws is None:
            ws = [0.0] * len(names)
        if len(ws) != len(names):
            raise ValueError(f"{label}: {len(ws)} weights, but {label} has {len(names)} candidates ({', '.join(names)})")
        for name, w in zip(names, ws):
            data[i, col_index[name]] = w
            mask[i, col_index[name]] = False
    return np.ma.MaskedArray(data, mask)


def _as_items(conns: Mapping[str, Connectivity] | Sequence[Connectivity],
              titles: Sequence[str] | None) -> list[tuple[str, Connectivity]]:
    if isinstance(conns, Mapping):
        items = list(conns.items())
    else:
        conns = list(conns)
        titles = list(titles) if titles is not None else [f"connectivity {i + 1}" for i in range(len(conns))]
        if len(titles) != len(conns):
            raise ValueError(f"{len(titles)} titles for {len(conns)} connectivities")
        items = list(zip(titles, conns))
    if not items:
        raise ValueError("no connectivity to plot")
    for title, c in items:
        if not isinstance(c, Connectivity):
            raise ValueError(f"{title!r}: expected a Connectivity, got {type(c).__name__}")
    return items


def plot_w_heatmaps(conns: Mapping[str, Connectivity] | Sequence[Connectivity], titles: Sequence[str] | None = None,
                    annotate: bool = True, title: str = "Final connection weights w (Fig. 5)") -> Figure:
    """Fig. 5: one heatmap of the final w per connectivity (e.g. SparseMask beside L1), side by side.

    One shared 0-1 colour scale and one colourbar; grey cells are inputs the stage cannot read. With
    ``annotate`` each cell shows its value (2 decimals; ``0`` for exact zeros). Axes are in the figure in
    the order given; each heatmap is the axes' single image, holding the masked array.
    """
    items = _as_items(conns, titles)
    ncols = min(2, len(items))
    nrows = math.ceil(len(items) / ncols)
    width = max(c.num_stages for _, c in items)
    fig = Figure(figsize=(ncols * (0.42 * 2 * width + 1.6) + 1.2, nrows * (0.42 * width + 1.5) + 0.4),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    cmap = colormaps["viridis"].with_extremes(bad=_MASK_COLOR)
    norm = Normalize(0.0, 1.0)
    image = None
    for ax, (name, conn) in zip(axes, items):
        grid = weight_grid(final_weights(conn), conn.num_stages)
        rows, cols = grid_names(conn.num_stages)
        image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="equal", interpolation="nearest")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel("input (candidate feature)")
        ax.set_ylabel("decoder stage")
        ax.set_title(name + (" (epoch %d)" % len(conn.history) if conn.history else ""), fontsize=10)
        ax.set_xticks(np.arange(-0.5, len(cols)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        if annotate:
            for (i, j), w in np.ndenumerate(grid.data):
                if not grid.mask[i, j]:
                    ax.text(j, i, "0" if w == 0 else f"{w:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if w < 0.6 else "black")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[:len(items)]), label="w (0 = dropped, 1 = kept)", shrink=0.85)
    fig.suptitle(title + " - grey: not a candidate of that stage")
    return fig


def _history_of(conn_or_history, num_stages: int | None) -> tuple[list[dict[str, list[float]]], int]:
    if isinstance(conn_or_history, Connectivity):
        history, num_stages = conn_or_history.history, conn_or_history.num_stages
    else:
        history = conn_or_history
        if num_stages is None and history:
            num_stages = max(int(label[1:]) for entry in history for label in entry)
    if not history:
        raise ValueError("no w history to plot: the connectivity has no 'history' (it is written by the search)")
    return list(history), int(num_stages)


def plot_w_history(conn_or_history: Connectivity | Sequence[Mapping[str, Sequence[float]]],
                   num_stages: int | None = None, title: str = "w over epochs") -> Figure:
    """One panel per decoder stage (``D_L`` first), one line per candidate input: w after every epoch.

    Colours follow the candidate name and are the same in every panel (solid: encoder ``E``, dashed:
    decoder ``D``, thick black: ``G``); one legend for all panels, on the right.
    """
    from matplotlib.ticker import MaxNLocator

    history, num_stages = _history_of(conn_or_history, num_stages)
    labels = [f"D{l}" for l in range(num_stages, 0, -1) if any(f"D{l}" in e for e in history)]
    _, cols = grid_names(num_stages)
    palette = colormaps["tab20"]
    colors = {name: palette(i % 20) for i, name in enumerate(c for c in cols if c != "G")}
    colors["G"] = "black"
    ncols = min(3, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig = Figure(figsize=(3.6 * ncols + 1.6, 2.5 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    handles = {}
    for ax, label in zip(axes, labels):
        names = candidate_names(int(label[1:]), num_stages)
        series = [(e, entry[label]) for e, entry in enumerate(history, start=1) if label in entry]
        epochs = [e for e, _ in series]
        for k, name in enumerate(names):
            style = "--" if name.startswith("D") else "-"
            (line,) = ax.plot(epochs, [ws[k] for _, ws in series], style, color=colors[name],
                              linewidth=2.0 if name == "G" else 1.2, marker="." if len(epochs) < 15 else None,
                              label=name)
            handles.setdefault(name, line)
        ax.set_title(f"{label} (|T|={len(names)})", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    for ax in axes[:len(labels)]:
        if ax.get_subplotspec().is_last_row() or ax is axes[len(labels) - 1]:
            ax.set_xlabel("epoch")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("w")
    ordered = [n for n in cols if n in handles]
    fig.legend([handles[n] for n in ordered], ordered, loc="outside right center", fontsize=8, title="input")
    fig.suptitle(title)
    return fig


def plot_architecture(conn: Connectivity, title: str = "Searched decoder") -> Figure:
    """The decoder as a graph: encoder row on top, decoder row below, G bottom right, the head left of D1.

    Columns are stage indices; grey bands group stages of one resolution (labelled ``1/r``). Each edge is an
    arrow (a ``FancyArrowPatch`` with gid ``"SRC->DST"``) coloured by source kind (encoder blue, decoder orange,
    G green), its width growing with w. Decoder stages without inputs are drawn hollow and grey.
    """
    L = conn.num_stages
    pos = {f"E{i}": (i, 1.0) for i in range(1, L + 1)}
    pos.update({f"D{i}": (i, 0.0) for i in range(1, L + 1)})
    pos["G"] = (L + 1.2, -0.55)  # below the decoder row: its edges arc under it, D->D edges arc over it
    fig = Figure(figsize=(max(7.0, 0.95 * L + 3), 4.4), layout="constrained")
    ax = fig.subplots()
    # resolution bands
    start = 1
    for i in range(1, L + 2):
        if i == L + 1 or conn.feature_info[i - 1].reduction != conn.feature_info[start - 1].reduction:
            ax.add_patch(Rectangle((start - 0.42, -0.35), i - start + 0.84, 1.7, facecolor="#f0f0f0",
                                   edgecolor="#bbbbbb", linewidth=0.6, zorder=0))
            ax.text((start + i - 1) / 2, 1.42, f"1/{conn.feature_info[start - 1].reduction}", ha="center",
                    va="bottom", fontsize=8, color="#555555")
            start = i
    edge_colors = {"E": "#1f77b4", "D": "#ff7f0e", "G": "#2ca02c"}
    for e in conn.edges:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
        if e.source.startswith("D"):
            rad = 0.35 if x0 - x1 > 1 else 0.2  # curve below the decoder row
        elif e.source == "G":
            rad = -0.12 if x0 - x1 > 2 else 0.0
        else:
            rad = 0.0 if x0 == x1 else 0.08
        w = min(max(e.weight, 0.0), 1.0)
        arrow = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10,
                                connectionstyle=f"arc3,rad={rad}", shrinkA=11, shrinkB=11,
                                color=edge_colors[e.source[0]], linewidth=0.6 + 1.8 * w, alpha=0.45 + 0.5 * w,
                                zorder=2)
        arrow.set_gid(f"{e.source}->{e.target}")
        ax.add_patch(arrow)
    live = set(conn.stages())
    for name, (x, y) in pos.items():
        dead = name.startswith("D") and name not in live
        ax.scatter([x], [y], s=520, c="white" if dead else ("#c6dbef" if name[0] == "E" else
                   ("#fdd0a2" if name[0] == "D" else "#c7e9c0")),
                   edgecolors="#999999" if dead else "black", linewidths=1.0, zorder=3,
                   linestyle="--" if dead else "-")
        ax.text(x, y, name, ha="center", va="center", fontsize=8, zorder=4, color="#999999" if dead else "black")
    ox, oy = pos[conn.output]
    ax.add_patch(FancyArrowPatch((ox, oy), (0.15, 0.0), arrowstyle="-|>", mutation_scale=10, shrinkA=11, shrinkB=2,
                                 connectionstyle=f"arc3,rad={0.3 if ox > 1 else 0.0}", color="black",
                                 linewidth=1.2, zorder=2, gid="head"))
    ax.text(0.1, 0.0, "head", ha="right", va="center", fontsize=8)
    ax.text(-0.35, 1.0, "encoder", ha="right", va="center", fontsize=9)
    ax.text(-0.35, 0.0, "decoder", ha="right", va="center", fontsize=9)
    ax.set_xlim(-1.3, L + 1.8)
    ax.set_ylim(-1.0, 1.6)
    ax.set_axis_off()
    ax.set_title(f"{title}: {conn.num_edges} edges, {len(live)} decoder stages\n"
                 "arrows from encoder (blue), decoder (orange), G (green); width ~ w\n"
                 "grey bands: resolution 1/r; dashed: stage without inputs", fontsize=9)
    return fig
