"""Table 1 and the binarisation-gap table, as markdown, from the results DataFrame.

Runs are grouped by family (and, when one family was run with several hyper-parameter settings, by setting
as well); numbers over several runs of a group are ``mean ± std`` with the sample standard deviation
(ddof=1), a single run shows its value alone. A group whose runs share a seed says so in its Runs column
(``3 (1 seed)``; ``8 (1 seed, 8 samples)`` for the random decoders of one seed): the spread of replicates of one
seed is run-to-run nondeterminism, not variation over seeds. #Params is ``encoder+decoder`` as in Table 1
(``2.22+0.56M``), in M, or in K when some part would round to 0.00M. Rows follow :attr:`.families.Family.order`:
hand-designed decoders, FDN ablations, then the search methods with SparseMask last.

The score columns follow the runs' task (:mod:`.tasks`; one task per table): segmentation shows mIoU (PixAcc,
mIoU and Score, ADE20K's, for ADE20K runs), saliency max F-beta and MAE (lower is better, shown as a fraction),
edges ODS, OIS and AP.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .families import family_of, format_number
from .tasks import ADE20K_TABLE_SCORES, DEFAULT_TASK, SCORE_COLUMNS, SCORE_LABELS, TABLE_SCORES, single_task, task_info

__all__ = ["summarize", "group_labels", "table1_markdown", "gap_table_markdown", "format_params", "format_mean_std",
           "format_gap", "markdown_table", "params_unit", "task_of", "table_scores", "paired_reference", "format_ratio"]

MISSING = "-"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` has one of ``l``/``r`` per column (default: left)."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError("markdown_table: every row and the alignment need one entry per header")
    rule = ["---:" if a == "r" else ":---" for a in align]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def group_labels(df: pd.DataFrame) -> pd.Series:
    """Family name, plus the differing hyper-parameters when a family holds several settings."""
    labels = df["family"].astype(str).copy()
    for family, sub in df.groupby("family", sort=False):
        configs = sub["config"].unique()
        if len(configs) < 2:
            continue
        parsed = {c: json.loads(c) for c in configs}
        keys = sorted({k for p in parsed.values() for k in p})
        differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in parsed.values()}) > 1]
        for c, p in parsed.items():  # a setting left unset (None: e.g. no cost term) is not named
            detail = ", ".join(f"{k}={format_number(p.get(k))}" for k in differing if p.get(k) is not None)
            labels[sub.index[sub["config"] == c]] = f"{family} ({detail or 'default'})"
    return labels


def task_of(df: pd.DataFrame) -> str:
    """The one task of ``df``'s runs (``segmentation`` without a ``task`` column); runs of several tasks are a
    ``ValueError``."""
    return single_task(df["task"]) if "task" in df else DEFAULT_TASK


def table_scores(df: pd.DataFrame) -> tuple[str, ...]:
    """The score columns of Table 1 for ``df``'s task (segmentation on ADE20K: PixAcc, mIoU, Score)."""
    task = task_of(df)
    if task == "segmentation" and "dataset" in df and (df["dataset"] == "ade20k").any():
        return ADE20K_TABLE_SCORES
    return TABLE_SCORES[task]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per table entry: label, group, kind, n, mean/std of the main score (``main_mean``, ``main_std``),
    of each score column present (``<score>_mean``, ``<score>_std``: ``miou_mean``, ...), FPS, params and edges,
    gap stats; with ``fps_ratio`` columns (:mod:`.results`), the paired FPS ratio's mean/std over the runs
    (``ratio_mean``, ``ratio_std``) and its lowest / highest pass (``ratio_min``, ``ratio_max``)."""
    if df.empty:
        raise ValueError("no runs to summarize")
    work = df.copy()
    work["label"] = group_labels(work)
    out = []
    for label, sub in work.groupby("label", sort=False):
        first = sub.iloc[0]
        fam = family_of(first["method"], json.loads(first["config"]))
        gaps = sub["binarization_gap"].dropna()
        scores = {}
        for col in ("main", *SCORE_COLUMNS):
            if col in sub:
                scores.update({f"{col}_mean": sub[col].mean(), f"{col}_std": _std(sub[col])})
        out.append({
            "label": label, "family": first["family"], "group": first["group"], "kind": first["kind"],
            "order": fam.order + (label,), "n": len(sub), **_replicates(sub), **scores,
            "fps_mean": sub["fps"].mean(), "fps_std": _std(sub["fps"]),
            **({"ratio_mean": sub["fps_ratio"].mean(), "ratio_std": _std(sub["fps_ratio"]),
                "ratio_min": sub["fps_ratio_min"].min(), "ratio_max": sub["fps_ratio_max"].max()}
               if "fps_ratio" in sub else {}),
            "params_encoder": sub["params_encoder"].mean(), "params_decoder": sub["params_decoder"].mean(),
            "edges_mean": sub["edges"].mean(), "edges_std": _std(sub["edges"]),
            "gap_n": len(gaps), "gap_median": gaps.median() if len(gaps) else math.nan,
            "gap_min": gaps.min() if len(gaps) else math.nan, "gap_max": gaps.max() if len(gaps) else math.nan,
        })
    summary = pd.DataFrame(out).sort_values("order", kind="stable").reset_index(drop=True)
    return summary.drop(columns="order")


def _replicates(runs: pd.DataFrame) -> dict[str, int]:
    """How the runs of one row differ: ``seeds`` (distinct known seeds), ``samples`` (distinct random-decoder
    samples, 0 for other strategies) and ``distinct`` (distinct (seed, sample) pairs; fewer than the runs: some
    are replicates of one seed and sample)."""
    sample = runs["sample"] if "sample" in runs else pd.Series([None] * len(runs), index=runs.index)
    keys = {(None if pd.isna(a) else a, None if pd.isna(b) else b) for a, b in zip(runs["seed"], sample)}
    return {"seeds": int(runs["seed"].dropna().nunique()), "samples": int(sample.dropna().nunique()),
            "distinct": len(keys)}


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_std(mean: float, std: float = math.nan, decimals: int = 2, scale: float = 1.0,
                    suffix: str = "") -> str:
    """``'73.18%'`` or ``'73.18 ± 0.40%'`` (std shown only when finite); NaN mean -> ``'-'``."""
    if mean is None or not np.isfinite(mean):
        return MISSING
    text = f"{mean * scale:.{decimals}f}"
    if std is not None and np.isfinite(std):
        text += f" ± {std * scale:.{decimals}f}"
    return text + suffix


def params_unit(values: Sequence[float]) -> str:
    """``'M'`` unless a non-zero count would print as 0.00M, then ``'K'``."""
    finite = [v for v in values if v is not None and np.isfinite(v) and v > 0]
    return "M" if all(v >= 5e3 for v in finite) else "K"


def format_params(encoder: float, decoder: float, unit: str | None = None) -> str:
    """Table 1's ``encoder+decoder`` count: ``format_params(2.22e6, 0.56e6) == '2.22+0.56M'``."""
    if not (np.isfinite(encoder) and np.isfinite(decoder)):
        return MISSING
    unit = unit or params_unit([encoder, decoder])
    if unit not in ("M", "K"):
        raise ValueError(f"unit must be 'M' or 'K', got {unit!r}")
    div, dec = (1e6, 2) if unit == "M" else (1e3, 1)
    return f"{encoder / div:.{dec}f}+{decoder / div:.{dec}f}{unit}"


def _fps_decimals(mean: float) -> int:
    return 0 if np.isfinite(mean) and mean >= 10 else 1


def _format_score(row: pd.Series, col: str, lower_is_better: Sequence[str]) -> str:
    """A score of Table 1: a percentage, or a fraction with 3 decimals for a lower-is-better one (MAE)."""
    if col in lower_is_better:
        return format_mean_std(row[f"{col}_mean"], row[f"{col}_std"], 3)
    return format_mean_std(row[f"{col}_mean"], row[f"{col}_std"], 2, 100.0, "%")


def table1_markdown(df: pd.DataFrame) -> str:
    """Table 1: Method | <the task's scores> | #Params (encoder+decoder) | FPS | Edges | Runs, plus a line on how FPS
    was measured. The scores are :func:`table_scores` (segmentation: mIoU)."""
    info = task_info(task_of(df))
    cols = table_scores(df)
    s = summarize(df)
    unit = params_unit(list(s["params_encoder"]) + list(s["params_decoder"]))
    reference = paired_reference(df)
    rows = []
    for _, r in s.iterrows():
        rows.append([
            r["label"],
            *(_format_score(r, col, info.lower_is_better) for col in cols),
            format_params(r["params_encoder"], r["params_decoder"], unit),
            format_mean_std(r["fps_mean"], r["fps_std"], _fps_decimals(r["fps_mean"])),
            *([format_ratio(r)] if reference else []),
            format_mean_std(r["edges_mean"], r["edges_std"], 0 if not r["edges_std"] > 0 else 1),
            _runs(r),
        ])
    ratio_head = [f"FPS / {reference} (paired)"] if reference else []
    table = markdown_table(["Method", *(SCORE_LABELS[c] for c in cols), f"#Params ({unit})", "FPS", *ratio_head,
                            "Edges", "Runs"], rows, "l" + "r" * (len(cols) + 4 + len(ratio_head)))
    devices = sorted({str(d) for d in df["fps_device"].dropna().unique()})
    lower = [SCORE_LABELS[c] for c in cols if c in info.lower_is_better]
    note = (f"\n\n{SCORE_LABELS[cols[0]] if len(cols) == 1 else 'Scores'} and FPS: mean ± sample std over the runs "
            "of a row where it has several" + (f" ({', '.join(lower)}: lower is better)" if lower else ""))
    if ((s["seeds"] > 0) & (s["distinct"] < s["n"])).any():
        note += ("; Runs 'n (k seeds)': the runs repeat a seed, so their ± is the run-to-run spread of the same "
                 "seed (nondeterminism), not variation over seeds")
    if ((s["samples"] > 1) & (s["seeds"] < s["n"])).any():
        note += "; 'm samples': different random decoders drawn with the same seed"
    if ((s["seeds"] == 0) & (s["n"] > 1)).any():
        note += "; 'seeds unknown': the runs do not record their seed"
    note += ". #Params: encoder+decoder." + (f" FPS measured on {', '.join(devices)}." if devices else "")
    if reference:
        note += (f" FPS / {reference} (paired): every network timed side by side with {reference} in the same "
                 "process (`sparsemask retime`), the median of the per-pass ratio, mean over the row's runs, with the "
                 "lowest and highest pass in brackets; FPS is each trial's own timing, taken minutes apart.")
    return table + note


def paired_reference(df: pd.DataFrame, complete: bool = False) -> str | None:
    """The reference method of ``df``'s paired FPS ratios, None without any (or, with ``complete``, unless every
    run has one: Fig. 4 then plots each run's own FPS)."""
    if "fps_ratio" not in df or df["fps_ratio"].isna().all() or (complete and df["fps_ratio"].isna().any()):
        return None
    refs = df["fps_reference"].dropna().unique()
    return str(refs[0]) if len(refs) == 1 else None


def format_ratio(row: pd.Series) -> str:
    """``'1.52x (1.41-1.60)'``: the mean paired ratio of a summary row and its lowest / highest pass."""
    if not np.isfinite(row.get("ratio_mean", math.nan)):
        return MISSING
    return f"{row['ratio_mean']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"


def _runs(row: pd.Series) -> str:
    """``'3'``, or ``'3 (1 seed)'`` when the runs share a seed (``'8 (1 seed, 8 samples)'``, ``'3 (seeds
    unknown)'``)."""
    n, seeds, samples = int(row["n"]), int(row["seeds"]), int(row["samples"])
    if n < 2 or seeds >= n:
        return str(n)
    parts = [f"{seeds} seed{'' if seeds == 1 else 's'}" if seeds else "seeds unknown"]
    if samples > 1:
        parts.append(f"{samples} samples")
    return f"{n} ({', '.join(parts)})"


def format_gap(gap: float) -> str:
    """``'200x'``, ``'inf'`` (every dropped w exactly 0) or ``'-'`` (unknown)."""
    if gap is None or (isinstance(gap, float) and math.isnan(gap)):
        return MISSING
    if math.isinf(gap):
        return "inf"
    return f"{gap:.3g}x"


def gap_table_markdown(df: pd.DataFrame) -> str:
    """Per strategy: runs with a gap, median gap min_kept / max_dropped_nonzero, and its range over runs."""
    s = summarize(df)
    s = s[s["gap_n"] > 0]
    if s.empty:
        return "No run reports a binarization gap."
    rows = [[r["label"], str(r["gap_n"]), format_gap(r["gap_median"]),
             MISSING if r["gap_n"] < 2 else f"{format_gap(r['gap_min'])} - {format_gap(r['gap_max'])}"]
            for _, r in s.iterrows()]
    table = markdown_table(["Strategy", "Runs", "Gap (median)", "Range"], rows, "lrrr")
    return table + ("\n\nGap = smallest kept w / largest dropped non-zero w (the paper: 200x for SparseMask, "
                    "2.6x for L1 at 5e-3); inf = every dropped w is exactly 0.")
