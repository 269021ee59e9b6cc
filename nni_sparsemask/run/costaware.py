"""The cost-aware search: from ``--cost`` and ``--target-fps`` / ``--budget`` to the strategy's cost term.

SparseMask's strategy (:mod:`nni_sparsemask.nas`) takes any ``cost_fn(w)`` and a budget; this module gives it the
FDN's expected cost (:func:`nni_sparsemask.fdn.costmodel.expected_cost`, independent gates, one upsample per
source-size group) over a cost table (:mod:`nni_sparsemask.measure.latency`) of the run's space:

* the table is profiled at ``cost_size`` on the device FPS is measured on (latency), or counted (bytes, FLOPs),
  and cached under the project's cache, keyed by kind, space, size, device and torch version; ``cost_table``
  gives a file instead (``sparsemask profile`` writes one), refused when it was made for another setting;
* ``target_fps`` (latency only) is a whole-network target: the decoder's budget is ``1 / F - base`` (encoder and
  head, the same for every decoder); ``speedup`` is a whole-network target relative to the dense FDN: the budget is
  ``dense / S - base`` (any cost; with latency it is a target FPS that follows the device's speed on the day the
  table was timed); ``budget`` is a fraction of the dense decoder's cost;
* a target no decoder of the space can reach is refused: above what FCN (one edge, ``D1 <- E_L``) is predicted to
  reach. A target the dense FDN already meets is allowed; the log says the cost term will not act.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

from nni_sparsemask.fdn.costmodel import dense_cost, expected_cost
from nni_sparsemask.run.config import SearchConfig

__all__ = ["CostTerm", "cost_term", "space_table", "budget_summary", "profile_model"]


@dataclass
class CostTerm:
    """What the strategy gets (``cost_fn``, ``budget``, ``weight``) and what the run records about it."""

    cost_fn: Callable[..., Any]
    budget: float
    weight: float
    table: Any
    summary: dict[str, Any]

    def strategy_options(self) -> dict[str, Any]:
        return {"cost_fn": self.cost_fn, "cost_budget": self.budget, "cost_weight": self.weight}


def space_table(space: Any, kind: str, size: int, device: str, table_file: Optional[str] = None,
                threads: Optional[int] = None) -> Any:
    """The cost table of ``space`` (an ``FDNSpace``): ``table_file`` checked against the space, size and device,
    else profiled (or read from the cache). ``threads``: the threads the network will run with (default: this
    process's PyTorch threads now)."""
    from nni_sparsemask.data.digitscenes import cache_root
    from nni_sparsemask.measure.latency import load_cost_table, profile_space, space_key

    if table_file is None:
        return profile_space(space, kind, size, device=device, cache_dir=cache_root(), num_threads=threads)
    return load_cost_table(table_file, space_key(space, kind, size, device=device, num_threads=threads))


def _fcn_cost(table: Any, backbone: str, feature_info: Any, backbone_kwargs: dict[str, Any]) -> float:
    from nni_sparsemask.run.registry import decoder_connectivity

    return table.predict(decoder_connectivity("fcn", backbone, feature_info, backbone_kwargs), include_base=True)


def budget_summary(table: Any, backbone: str, feature_info: Any, backbone_kwargs: dict[str, Any]) -> dict[str, float]:
    """Predicted whole-network cost of the dense FDN and of FCN, and the base (encoder + head), in the table's unit."""
    dense = dense_cost(table.costs, include_base=True)
    return {"dense": dense, "fcn": _fcn_cost(table, backbone, feature_info, backbone_kwargs),
            "base": table.costs.base}


def cost_term(schedule: SearchConfig, space: Any, device: str, log: Callable[[str], None] = print,
              threads: Optional[int] = None) -> Optional[CostTerm]:
    """The cost term of ``schedule`` for ``space`` (None without ``schedule.cost``); a target no decoder of the
    space reaches is a ``ValueError`` that says what the fastest one (FCN) is predicted to reach. ``threads``: the
    threads the searched network will run with (:func:`space_table`)."""
    if schedule.cost is None:
        return None
    table = space_table(space, schedule.cost, schedule.cost_size, device, schedule.cost_table, threads)
    predicted = budget_summary(table, space.backbone_name, space.encoder.feature_info, dict(space.backbone_kwargs))
    unit = table.costs.unit
    decoder_dense = predicted["dense"] - predicted["base"]
    if schedule.target_fps is not None:
        fps = {k: 1.0 / predicted[k] for k in ("dense", "fcn")}
        if schedule.target_fps > fps["fcn"]:
            raise ValueError(f"--target-fps {schedule.target_fps:g} is above what the fastest decoder of this space "
                             f"reaches: FCN is predicted at {fps['fcn']:.1f} FPS ({schedule.cost_size}px on "
                             f"{table.key.device}; the dense FDN at {fps['dense']:.1f}); give a target below "
                             f"{fps['fcn']:.1f}")
        budget = 1.0 / schedule.target_fps - predicted["base"]
        log(f"[search] cost: latency, target {schedule.target_fps:g} FPS at {schedule.cost_size}px on "
            f"{table.key.device}: decoder budget {budget * 1e3:.3f} ms ({budget / decoder_dense:.0%} of the dense "
            f"decoder's); predicted FPS: dense FDN {fps['dense']:.1f}, FCN {fps['fcn']:.1f}")
        if schedule.target_fps <= fps["dense"]:
            log("[search] the dense FDN already meets this target: the cost term will not act (the sparse loss "
                "alone decides)")
    elif schedule.speedup is not None:
        fcn_speedup = predicted["dense"] / predicted["fcn"]
        where = f" on {table.key.device}" if table.key.device else ""
        if schedule.speedup >= fcn_speedup:
            raise ValueError(f"--speedup {schedule.speedup:g} is not below what the fastest decoder of this space "
                             f"reaches: FCN is predicted at {fcn_speedup:.2f}x the dense FDN ({schedule.cost} at "
                             f"{schedule.cost_size}px{where}); give a speed-up below "
                             f"{fcn_speedup:.2f}")
        budget = predicted["dense"] / schedule.speedup - predicted["base"]
        log(f"[search] cost: {schedule.cost}, target {schedule.speedup:g}x the dense FDN: decoder budget "
            f"{budget:.4g} {unit} ({budget / decoder_dense:.0%} of the dense decoder's; FCN is predicted at "
            f"{fcn_speedup:.2f}x)")
    else:
        budget = schedule.budget * decoder_dense
        log(f"[search] cost: {schedule.cost}, decoder budget {schedule.budget:g} x the dense decoder's = "
            f"{budget:.4g} {unit}")
    summary = {"cost": schedule.cost, "unit": unit, "target_fps": schedule.target_fps, "speedup": schedule.speedup,
               "budget_fraction": budget / decoder_dense, "decoder_budget": budget, "cost_weight": schedule.cost_weight,
               "predicted": predicted, "table_key": table.key.digest(), "cost_size": schedule.cost_size}
    fn = functools.partial(expected_cost, table=table.costs)
    return CostTerm(fn, budget, schedule.cost_weight, table, summary)


def profile_model(model: Any, num_classes: int, kind: str, size: int, device: str, out: Optional[str] = None, *,
                  overwrite: bool = False, refresh: bool = False) -> tuple[Any, Any, dict[str, float]]:
    """``sparsemask profile``: the cost table of the FDN space of ``model`` (a ``ModelConfig``) with ``num_classes``
    at ``size``: ``(table, path, budget_summary)``. Written to ``out`` (refused when it exists, unless
    ``overwrite``), else to the cache ``search --cost`` reads (``refresh`` profiles again)."""
    from pathlib import Path

    from nni_sparsemask.data.digitscenes import cache_root
    from nni_sparsemask.fdn.space import FDNSpace
    from nni_sparsemask.measure.latency import cost_table_path, profile_space

    if kind not in ("latency", "bytes", "flops", "ops"):
        raise ValueError(f"unknown cost kind {kind!r}; use latency, bytes, flops or ops")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    space = FDNSpace(model.backbone, num_classes=num_classes, decoder_channels=model.decoder_channels,
                     backbone_kwargs=model.backbone_kwargs)
    if out is None:
        table = profile_space(space, kind, size, device=device, cache_dir=cache_root(), refresh=refresh)
        path = cost_table_path(cache_root(), table.key)
    else:
        table = profile_space(space, kind, size, device=device)
        path = table.save(out, overwrite=overwrite)
    return table, path, budget_summary(table, model.backbone, space.encoder.feature_info, dict(model.backbone_kwargs))
