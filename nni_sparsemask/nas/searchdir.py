"""The run directory of a :class:`~nni_sparsemask.nas.strategy.SparseMask` search (its ``run_dir``).

What is written, and why
------------------------
* ``sparsemask_strategy.json`` (:data:`CONFIG_FILE`): the config and a fingerprint of the search space (labels,
  mutable types, numbers of candidates), written when the first search on the directory starts. A later search
  on the same directory must match it, otherwise ``ValueError``: a resume never continues with other settings.
  A setting missing from the file (written before the setting existed) counts as its legacy value, what that
  search did (``SparseMaskConfig``'s ``LEGACY_VALUES``); :func:`recorded_config` reads the file back.
* ``checkpoints/search-last.ckpt`` (:data:`CHECKPOINT_FILE`): the Lightning checkpoint written (atomically) after
  every training epoch: network weights, w, optimizer/scheduler states, loop state and, under
  :data:`CHECKPOINT_KEY`, the w history and the config. A search started again on the directory, in any process,
  resumes from it; the number of epochs in its history is the first epoch of the resumed fit, whose RNG seed the
  strategy must set in ``setup``, i.e. before Lightning loads the checkpoint (:func:`resume_epoch` reads it first).
* ``search_result.json`` (:data:`RESULT_FILE`): written (atomically) when the search ends: final w, exported
  choices, history, binarisation report. It marks the search finished: a new search on the directory is refused
  (``FileExistsError``) instead of overwriting it.

Why not NNI's own checkpointing
-------------------------------
NNI's ``OneShotStrategy.state_dict()`` is ``{'ckpt_path': trainer.checkpoint_callback.last_model_path}`` (or
``best_model_path``) and ``load_state_dict`` puts that path into the evaluator's ``fit_kwargs['ckpt_path']``.
``NasExperiment`` saves it to ``<experiment working directory>/<experiment id>/checkpoint/state.ckpt`` when the
experiment starts and when it stops, and loads it only in ``NasExperiment.resume(experiment_id)``. So it needs a
``ModelCheckpoint`` callback in the evaluator's trainer (the evaluators here disable checkpointing), the
experiment id and working directory, and a stop (or exit) after the last checkpoint; it restores only the
Lightning checkpoint: it does not tell the strategy the epoch to reseed before the checkpoint is loaded, does not
compare the config or the space, and writes no result. This module gives a plain directory that any process
passed the same ``run_dir`` finds, under ``NasExperiment.run`` as well; it does not replace NNI's experiment
checkpoint (nothing here touches it) and keeps only the last epoch's checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nni_sparsemask.checkpoint_files import load_checkpoint

__all__ = ["CONFIG_FILE", "CHECKPOINT_FILE", "RESULT_FILE", "CHECKPOINT_KEY", "space_fingerprint", "prepare",
           "recorded_config", "save_checkpoint", "put_state", "load_history", "resume_epoch", "write_result"]

CONFIG_FILE = "sparsemask_strategy.json"
CHECKPOINT_FILE = os.path.join("checkpoints", "search-last.ckpt")
RESULT_FILE = "search_result.json"
#: the strategy's own entry in a Lightning checkpoint: ``{"history": [...], "config": {...}}``
CHECKPOINT_KEY = "sparsemask"


def space_fingerprint(model: Any) -> dict[str, Any]:
    """``{"space": class name, "labels": {label: {"type", "n", "n_chosen"}}}`` of an NNI ``ModelSpace``."""
    labels = {}
    for label, mutable in model.simplify().items():
        values = getattr(mutable, "values", None)
        labels[label] = {"type": type(mutable).__name__, "n": len(values) if values is not None else None,
                         "n_chosen": getattr(mutable, "n_chosen", None)}
    return {"space": type(model).__name__, "labels": labels}


def recorded_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The config saved in ``run_dir``'s :data:`CONFIG_FILE` as written (``None`` when there is none)."""
    path = Path(run_dir) / CONFIG_FILE
    return json.loads(path.read_text())["config"] if path.exists() else None


def prepare(run_dir: Path, config: dict[str, Any], model: Any, legacy: dict[str, Any] | None = None) -> Path | None:
    """Check ``run_dir`` before a search; return the checkpoint to resume from, or ``None`` to start afresh.

    Refuses a finished search (``FileExistsError``) and a directory written with another config or space
    (``ValueError``, naming the differences); writes :data:`CONFIG_FILE` on the first search. A setting absent
    from the saved config is compared with its ``legacy`` value (absent from ``legacy`` too: ``None``).
    """
    if (run_dir / RESULT_FILE).exists():
        raise FileExistsError(f"{run_dir} holds a finished SparseMask search ({RESULT_FILE}); its results are "
                              "kept and not overwritten. Use a new run_dir, or delete this one to search again.")
    record = {"config": config, "space": space_fingerprint(model)}
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(record, indent=2, sort_keys=True))
        return None
    old = json.loads(cfg_path.read_text())
    saved, legacy = old.get("config", {}), legacy or {}
    diffs = []
    for k, v in record["config"].items():
        there = saved.get(k, legacy.get(k))
        if there != v:
            note = "" if k in saved else " (not in the file, written before this setting existed)"
            diffs.append(f"{k}: {there!r} there{note}, {v!r} here")
    if old.get("space") != record["space"]:
        diffs.append("the search space (labels / number of candidates) differs")
    if diffs:
        raise ValueError(f"{run_dir} was written by another SparseMask configuration ({'; '.join(diffs)}). "
                         "Use a new run_dir, or the same settings to resume (SparseMaskConfig.from_dict("
                         "searchdir.recorded_config(run_dir)) rebuilds them).")
    ckpt = run_dir / CHECKPOINT_FILE
    return ckpt if ckpt.exists() else None


def save_checkpoint(trainer: Any, run_dir: str | os.PathLike) -> None:
    """``trainer.save_checkpoint`` to :data:`CHECKPOINT_FILE`, through a temporary file (a crash keeps the last).

    Under DDP every process calls it (Lightning's ``save_checkpoint`` gathers the state and waits for all of them),
    Lightning writes the file in rank 0 only, and only rank 0 renames it into place."""
    path = Path(run_dir) / CHECKPOINT_FILE
    main = bool(getattr(trainer, "is_global_zero", True))
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(str(tmp))
    if main:
        os.replace(tmp, path)


def put_state(checkpoint: dict[str, Any], history: list[dict[str, list[float]]], config: dict[str, Any],
              world_size: int = 1) -> None:
    """Store the w history, the config and the number of processes in a Lightning checkpoint dict
    (``on_save_checkpoint``)."""
    checkpoint[CHECKPOINT_KEY] = {"history": history, "config": config, "world_size": int(world_size)}


def load_history(checkpoint: dict[str, Any]) -> list[dict[str, list[float]]]:
    """The w history stored by :func:`put_state` (``on_load_checkpoint``); ``ValueError`` if there is none."""
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None:
        raise ValueError("this checkpoint was not written by the SparseMask strategy (no 'sparsemask' entry)")
    return [dict(h) for h in state["history"]]


def resume_epoch(ckpt: Path, world_size: int | None = None) -> int:
    """The first epoch a fit resumed from ``ckpt`` runs: the number of epochs in its history.

    A broken checkpoint (empty, cut short, bytes changed) raises one ``CheckpointError`` line naming it
    (:func:`~nni_sparsemask.checkpoint_files.load_checkpoint`), before Lightning reads it. With ``world_size``, a
    checkpoint written by another number of processes is refused (``ValueError``): a step of N processes takes N
    batches, so the learning-rate schedule saved in it counts steps of that size (a checkpoint without the
    number was written by one process)."""
    state = load_checkpoint(ckpt, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY)
    if state is None:
        raise ValueError(f"{ckpt} was not written by SparseMask; delete it or use a new run_dir")
    written = int(state.get("world_size", 1))
    if world_size is not None and written != int(world_size):
        raise ValueError(f"{ckpt} was written by a search on {written} process(es), this one runs {world_size}: "
                         f"resume it on {written} process(es) (devices)")
    return len(state["history"])


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Write :data:`RESULT_FILE` (plain JSON, through a temporary file)."""
    path = run_dir / RESULT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False))
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    """Plain JSON: infinite gaps become the string ``"inf"``, dict keys strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
