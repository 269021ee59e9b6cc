"""How far the connection weights w have binarised, at a threshold sigma (section 3.3 and the "200x" gap).

Pure Python on ``{label: [w_0, ..., w_{n-1}]}``: no torch, no NNI, so that code which only reads saved
weights (the prune step re-thresholding a finished search) can use it without the strategy.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["binarization_report", "describe_binarization", "undecided_warning", "UNDECIDED_HIGH"]

UNDECIDED_HIGH = 0.999  # w in (threshold, UNDECIDED_HIGH) has not binarised yet


def binarization_report(weights: dict[str, list[float]], threshold: float) -> dict[str, Any]:
    """How binary w is: per label and overall.

    For each label: ``kept`` (w >= threshold), ``n_exact_zero`` (w == 0, produced by the [0, 1] clamp),
    ``n_dropped_nonzero`` (0 < w < threshold), ``min_kept``, ``max_dropped_nonzero``,
    ``gap = min_kept / max_dropped_nonzero`` (the paper's "200x"; ``inf`` when every dropped w is exactly 0,
    ``None`` when nothing is kept or dropped), and ``undecided_fraction``, the fraction of w in
    ``(threshold, 0.999)``, i.e. not binarised yet. ``overall`` pools all labels.
    """
    def _one(values: list[float]) -> dict[str, Any]:
        kept = [v for v in values if v >= threshold]
        dropped_nz = [v for v in values if 0.0 < v < threshold]
        zeros = sum(1 for v in values if v == 0.0)
        undecided = sum(1 for v in values if threshold < v < UNDECIDED_HIGH)
        min_kept = min(kept) if kept else None
        max_dropped = max(dropped_nz) if dropped_nz else None
        if min_kept is None or (max_dropped is None and zeros == 0):
            gap = None
        elif max_dropped is None:
            gap = math.inf
        else:
            gap = min_kept / max_dropped
        return {
            "n": len(values), "n_kept": len(kept), "n_exact_zero": zeros, "n_dropped_nonzero": len(dropped_nz),
            "min_kept": min_kept, "max_dropped_nonzero": max_dropped, "gap": gap,
            "undecided_fraction": undecided / len(values) if values else 0.0,
        }

    report: dict[str, Any] = {label: _one(list(v)) for label, v in weights.items()}
    report["overall"] = _one([x for v in weights.values() for x in v])
    return report


def describe_binarization(overall: dict[str, Any] | None) -> str:
    """One line for a person: the gap and the undecided fraction of :func:`binarization_report`'s ``overall``
    (``"-"`` without one). The gap alone can read well while w is undecided: kept w at 0.23 over a dropped 0.0002
    is a gap of 1000x, with nothing near 1."""
    if not overall:
        return "-"
    gap, low, high = overall.get("gap"), overall.get("min_kept"), overall.get("max_dropped_nonzero")
    if gap is None:
        text = "gap - (nothing kept or nothing dropped)"
    elif math.isinf(gap):
        text = f"gap inf (every dropped w is 0; the lowest kept {low:.3g})"
    else:
        text = f"gap {gap:.0f}x" if gap >= 10 else f"gap {gap:.2f}x"
        text += f" (lowest kept w {low:.3g}, highest dropped {high:.3g})"
    return f"{text}; {overall.get('undecided_fraction', 0.0):.0%} of w undecided, in (sigma, {UNDECIDED_HIGH})"


def undecided_warning(report: dict[str, Any], threshold: float, max_fraction: float) -> str | None:
    """The warning for a search that ended with more than ``max_fraction`` of w undecided, or ``None``.

    ``report`` is :func:`binarization_report` at ``threshold``; the message names the labels over the limit.
    """
    overall = report["overall"]
    if overall["undecided_fraction"] <= max_fraction:
        return None
    slow = [l for l, r in report.items() if l != "overall" and r["undecided_fraction"] > max_fraction]
    return (f"SparseMask: {overall['undecided_fraction']:.0%} of w is still in ({threshold}, "
            f"{UNDECIDED_HIGH}) after the search (labels {', '.join(slow)}): w has not binarised, so the kept set "
            "depends on the threshold. Search longer, raise lambda_sparse or arc_learning_rate.")
