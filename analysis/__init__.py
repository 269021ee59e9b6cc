"""Analysis: run directories -> DataFrame -> Table 1, Fig. 4, Fig. 5, report (imported as nni_sparsemask.analysis).

Modules, one idea each: :mod:`.families` (family names and order), :mod:`.results` (loading runs),
:mod:`.nni_db` (a finished NNI experiment's trials, read from NNI's SQLite database: no manager, no NNI import),
:mod:`.tasks` (each task's main score and how it is named: a copy of the run layer's table),
:mod:`.table` (Table 1 and the gap table in markdown), :mod:`.figures` (Fig. 4, gap bars),
:mod:`.dominance` (Fig. 4's front and who dominates whom, in words),
:mod:`.connectivity_figures` (Fig. 5 heatmaps, w over epochs, architecture drawing), :mod:`.report`
(``write_report``). Names are imported lazily: importing this package does no work.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_results": "results", "save_csv": "results", "skipped_runs": "results", "SkippedRun": "results",
    "family_of": "families", "Family": "families",
    "summarize": "table", "table1_markdown": "table", "gap_table_markdown": "table", "format_params": "table",
    "plot_tradeoff": "figures", "plot_binarization_gap": "figures", "pareto_front": "figures",
    "save_figure": "figures",
    "plot_w_heatmaps": "connectivity_figures", "plot_w_history": "connectivity_figures",
    "plot_architecture": "connectivity_figures", "final_weights": "connectivity_figures",
    "write_report": "report", "dominance_markdown": "dominance", "front_labels": "dominance",
    "read_paired_fps": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
