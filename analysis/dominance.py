"""Who dominates whom in Fig. 4: the report's answer to "are SparseMask's points on the front?".

Each row of Table 1 (:func:`.table.summarize`: a strategy, or one setting of it, over its seeds) is a point: the mean
main score and the mean speed (the paired FPS ratio when every run has one, :mod:`.results`, else FPS). Row ``a``
dominates row ``b`` when ``a`` is at least as good in both and better in one. The front is the set of rows that no
row dominates. Means decide; the seeds' spread is printed beside them, so that a reader can see when a domination
rests on a difference smaller than the spread (:func:`dominance_markdown` says so for each one).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .table import paired_reference, summarize, task_of
from .tasks import task_info

__all__ = ["dominates", "dominance_markdown", "front_labels"]


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a = (score, speed)`` is at least as good as ``b`` in both and better in one (higher is better in both)."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def _points(df: pd.DataFrame) -> tuple[pd.DataFrame, str, bool]:
    """Summary rows with finite ``score`` / ``speed`` columns (and their stds), the speed's name, and whether the
    speed is the paired ratio (else FPS)."""
    s = summarize(df)
    reference = paired_reference(df, complete=True)
    speed, spread = ("ratio_mean", "ratio_std") if reference else ("fps_mean", "fps_std")
    s = s.assign(score=s["main_mean"] * 100, score_std=s["main_std"] * 100, speed=s[speed], speed_std=s[spread])
    s = s[np.isfinite(s["score"]) & np.isfinite(s["speed"])].reset_index(drop=True)
    name = f"FPS / {reference} (paired)" if reference else "FPS"
    return s, name, reference is not None


def front_labels(df: pd.DataFrame) -> list[str]:
    """The labels of the Table 1 rows on the score-speed front, fastest first."""
    return _front(_points(df)[0])


def _front(s: pd.DataFrame) -> list[str]:
    pts = list(zip(s["score"], s["speed"]))
    on = [i for i, p in enumerate(pts) if not any(dominates(q, p) for j, q in enumerate(pts) if j != i)]
    return [s.loc[i, "label"] for i in sorted(on, key=lambda i: -s.loc[i, "speed"])]


def _fmt(value: float, std: float, decimals: int, unit: str = "") -> str:
    text = f"{value:.{decimals}f}{unit}"
    return text + (f" ± {std:.{decimals}f}" if np.isfinite(std) else "")


def dominance_markdown(df: pd.DataFrame, kind: str = "sparsemask") -> str:
    """Markdown: the front (score and speed of each of its rows), then, for each row of ``kind`` (SparseMask's),
    whether it is on the front and which rows dominate it, with both rows' means ± seed spread, and a warning
    where a difference is smaller than the larger of the two spreads."""
    s, speed_name, paired = _points(df)
    if s.empty:
        return "No row has both a score and a speed."
    score = task_info(task_of(df)).label
    pts = {r["label"]: r for _, r in s.iterrows()}

    def describe(r) -> str:
        return (f"{score} {_fmt(r['score'], r['score_std'], 1)}, {speed_name} "
                f"{_fmt(r['speed'], r['speed_std'], 2 if paired else 0, 'x' if paired else '')}")

    front = _front(s)
    lines = [f"Points are Table 1's rows: the mean {score} and the mean {speed_name} over each row's runs (± the "
             "sample std over them). A row dominates another when it is at least as good in both and better in one.",
             "", f"**Front** ({len(front)} of {len(s)} rows, fastest first):", ""]
    lines += [f"- {label}: {describe(pts[label])}" for label in front]
    mine = [label for label, r in pts.items() if r["kind"] == kind]
    if not mine:
        return "\n".join(lines)
    lines += ["", "**SparseMask's rows:**" if kind == "sparsemask" else f"**Rows of kind {kind}:**", ""]
    for label in mine:
        r = pts[label]
        over = [o for o, q in pts.items() if o != label and dominates((q["score"], q["speed"]), (r["score"], r["speed"]))]
        if not over:
            beaten = [o for o, q in pts.items() if o != label and dominates((r["score"], r["speed"]),
                                                                            (q["score"], q["speed"]))]
            lines.append(f"- {label} ({describe(r)}): on the front; it dominates {len(beaten)} of the other "
                         f"{len(pts) - 1} rows")
            continue
        detail = []
        for o in over:
            q = pts[o]
            close = [what for what, d, a, b in (
                (score, q["score"] - r["score"], r["score_std"], q["score_std"]),
                ("speed", q["speed"] - r["speed"], r["speed_std"], q["speed_std"]))
                if d > 0 and d < max(_finite(a), _finite(b))]
            note = f" (by less than the seed spread in {' and '.join(close)})" if close else ""
            detail.append(f"{o} ({describe(q)}){note}")
        lines.append(f"- {label} ({describe(r)}): dominated by " + "; ".join(detail))
    return "\n".join(lines)


def _finite(value: float) -> float:
    return value if value is not None and np.isfinite(value) else -math.inf
