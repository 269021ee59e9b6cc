"""Results of finished runs -> one pandas DataFrame (one row per run).

``load_results(source)`` reads either

* a root directory, scanned recursively: every directory holding ``metrics.json`` is a finished run
  (``config.json``, ``connectivity.json`` and ``history.csv`` beside it are optional), or
* an NNI experiment, by id (read from its database, ``<experiments dir>/<id>/db/nni.sqlite``, read-only and
  without starting NNI's manager: :mod:`.nni_db`; ``experiments_dir`` = the experiment's
  ``experimentWorkingDirectory`` when it is not ``~/nni-experiments``) or as an object with ``export_data()`` (a
  running ``nni.experiment.Experiment``): each succeeded trial's final result ``{'default': main score, 'task':
  ..., 'fps': ..., 'run_dir': ...}`` gives a row, read from ``run_dir`` when that directory holds ``metrics.json``, else from the
  final result itself. A trial that reports the run directory of an earlier trial (NNI ran the entry again after
  a resume and the trial reused the finished run) is skipped: every run is counted once.

A run whose ``metrics.json`` is corrupt or incomplete is skipped with a ``UserWarning`` naming the file; the
skipped runs are kept in ``df.attrs["skipped"]`` (see :func:`skipped_runs`) for the report. A root without any
readable run is an error. ``task=`` keeps the runs of one task (:func:`load_results`).

Columns (:data:`CORE_COLUMNS`, with one column per hyper-parameter after ``dataset``): ``method``, ``family``,
``group``, ``kind`` (see :mod:`.families`), ``task`` (``segmentation``, ``saliency`` or ``edges``:
:mod:`.tasks`; ``metrics.json`` without one, from an earlier release: ``segmentation``), ``dataset`` (from
``config.json``; None when unknown), ``config`` (the hyper-parameters as sorted JSON, without
:data:`REPLICATE_KEYS` and NNI's ``_``-keys: the grouping key of Table 1), ``seed``, ``main`` (the run's main
score: ``miou``, ``max_fbeta`` or ``ods`` by its task; what figures and tables rank by), the scores ``miou``,
``pixel_accuracy``, ``fg_iou``, ``score``, ``max_fbeta``, ``mae``, ``ods``, ``ois``, ``ap`` (fractions in [0, 1];
NaN when the run's task has no such score; the main score is required), ``params_encoder``, ``params_decoder``, ``fps``, ``fps_device``, ``flops``,
``ops``, ``bytes_written`` (per forward at the FPS input size, :mod:`nni_sparsemask.measure.cost`; NaN for runs evaluated
before they were counted), ``edges``, ``stages``, ``binarization_gap`` (``inf`` when every dropped w is exactly 0, NaN when unknown),
``search_seconds``, ``train_seconds``, ``run_dir``, ``connectivity`` (path or None), ``source`` (``rundir`` or
``nni``), ``trial_id``, and ``fps_ratio``, ``fps_ratio_min``, ``fps_ratio_max`` (FPS / the reference network's,
median and range over passes in which every network was timed side by side: ``sparsemask retime`` writes them into
:data:`PAIRED_FPS_FILE`; NaN without one) with ``fps_reference`` (the reference's method).

Paired ratios (:func:`read_paired_fps`) are read from ``paired_fps=`` or, for a root, from its
:data:`PAIRED_FPS_FILE` when there is one. Their run directories are relative to that file's folder.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .families import family_of
from .nni_db import find_database, read_trials
from .tasks import DEFAULT_TASK, SCORE_COLUMNS, check_task_name, task_info

__all__ = ["load_results", "save_csv", "skipped_runs", "find_runs", "read_run", "read_paired_fps", "SkippedRun",
           "CORE_COLUMNS", "PAIRED_FPS_FILE"]

CORE_COLUMNS = [
    "method", "family", "group", "kind", "task", "dataset", "config", "seed", "main", *SCORE_COLUMNS,
    "params_encoder", "params_decoder", "fps", "fps_device", "flops", "ops", "bytes_written", "edges", "stages",
    "binarization_gap",
    "search_seconds", "train_seconds", "run_dir", "connectivity", "source", "trial_id",
    "fps_ratio", "fps_ratio_min", "fps_ratio_max", "fps_reference",
]
_RATIO_COLUMNS = ("fps_ratio", "fps_ratio_min", "fps_ratio_max")
_NUMERIC = [*SCORE_COLUMNS, "params_encoder", "params_decoder", "fps", "flops", "ops",
            "bytes_written", "edges", "stages", "binarization_gap", "search_seconds", "train_seconds", *_RATIO_COLUMNS]
#: the file ``sparsemask retime`` writes into a comparison's root (:func:`read_paired_fps`)
PAIRED_FPS_FILE = "fps_paired.json"
#: hyper-parameters that tell replicates apart, not settings (left out of ``config``, the grouping key)
REPLICATE_KEYS = ("seed", "sample")
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
METRICS = "metrics.json"


@dataclass(frozen=True)
class SkippedRun:
    """A run left out of the results: where it is and why."""

    path: str
    reason: str


# ------------------------------------------------------------------------------------------------ run dirs
def find_runs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds ``metrics.json``, sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results root not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: give the root that holds the run directories")
    runs = [p.parent for p in root.rglob(METRICS)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]
    return sorted(runs)


def _number(value: Any, field: str, where: str, allow_none: bool = True) -> float:
    """A JSON number (or ``"inf"``) as float; None -> NaN; anything else is a ``ValueError``."""
    if value is None:
        if allow_none:
            return math.nan
        raise ValueError(f"{where}: '{field}' is missing")
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: '{field}' must be a number, got {value!r}")
    return float(value)


def _row(method: Any, params: Mapping[str, Any], seed: Any, metrics: Mapping[str, Any], where: str,
         task: Any = None, dataset: Any = None) -> dict[str, Any]:
    """One DataFrame row from the pieces every source has; raises ``ValueError`` on unusable content.

    ``task``: the run's task (None: :data:`.tasks.DEFAULT_TASK`, a run of an earlier release); its main score
    must be there, and every score that is there must be a fraction."""
    info = task_info(check_task_name(DEFAULT_TASK if task is None else task, where))
    named = metrics.get("main")
    if named is not None and named != info.main:
        raise ValueError(f"{where}: main score {named!r} is not the main score of task {info.name} ({info.main})")
    if not isinstance(method, str) or not method:
        raise ValueError(f"{where}: no 'method' (expected a non-empty string, got {method!r})")
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: 'params' must be an object, got {type(params).__name__}")
    fam = family_of(method, params)
    # the grouping key leaves out what varies between replicates of one setting: the seed, a random sample's
    # index, and NNI's own keys ("_name" of a nested choice)
    setting = {k: v for k, v in params.items() if k not in REPLICATE_KEYS and not str(k).startswith("_")}
    row: dict[str, Any] = {"method": method, "family": fam.name, "group": fam.group, "kind": fam.kind,
                           "task": info.name, "dataset": dataset if isinstance(dataset, str) else None,
                           "config": json.dumps(setting, sort_keys=True, default=str)}
    if seed is None and isinstance(params.get("seed"), int):
        seed = params["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"{where}: 'seed' must be an integer, got {seed!r}")
    row["seed"] = seed
    for key in _NUMERIC:
        row[key] = _number(metrics.get(key), key, where, allow_none=key != info.main)
    for key in SCORE_COLUMNS:
        if (key == info.main or not math.isnan(row[key])) and not 0.0 <= row[key] <= 1.0:
            raise ValueError(f"{where}: {key} {row[key]} is outside [0, 1] (expected a fraction, not a percentage)")
    row["main"] = row[info.main]
    row["fps_device"] = metrics.get("fps_device")
    for key, value in params.items():
        column = f"param_{key}" if key in CORE_COLUMNS else str(key)
        row[column] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    return row


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One row from a run directory; ``ValueError`` when its ``metrics.json`` is corrupt or incomplete.

    ``method``, ``params`` and ``seed`` come from ``metrics.json``, falling back to ``config.json``.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished run")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    config: dict[str, Any] = {}
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{config_path}: corrupt JSON, ignored (metrics.json is used alone)", UserWarning,
                          stacklevel=2)
    params = dict(config.get("params") or {})
    params.update(metrics.get("params") or {})
    method = metrics.get("method", config.get("method"))
    seed = metrics.get("seed", config.get("seed"))
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    row = _row(method, params, seed, metrics, str(path), task=metrics.get("task", data.get("task")),
               dataset=metrics.get("dataset", data.get("dataset")))
    conn = run_dir / "connectivity.json"
    row.update(run_dir=str(run_dir), connectivity=str(conn) if conn.is_file() else None, source="rundir",
               trial_id=None)
    return row


def _rows_from_root(root: Path, skipped: list[SkippedRun]) -> list[dict[str, Any]]:
    rows = []
    for run in find_runs(root):
        try:
            rows.append(read_run(run))
        except ValueError as err:
            _skip(skipped, str(run / METRICS), str(err))
    return rows


def _skip(skipped: list[SkippedRun], path: str, reason: str) -> None:
    if reason.startswith(path + ": "):
        reason = reason[len(path) + 2:]
    warnings.warn(f"skipping run {path}: {reason}", UserWarning, stacklevel=3)
    skipped.append(SkippedRun(path, reason))


# ------------------------------------------------------------------------------------------------ NNI
def _final_result(value: Any) -> Any:
    # NNI's export hands the final metric back parsed once; the database holds it JSON-encoded twice.
    for _ in range(2):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                break
    return value


def _rows_from_trials(trials: Iterable[Any], skipped: list[SkippedRun], label: str) -> list[dict[str, Any]]:
    """One row per trial; a trial that reports the run directory of an earlier one (NNI re-ran the entry after a
    resume and the trial reused the finished run) is skipped, so that no run is counted twice."""
    rows = []
    first_trial_of: dict[str, str] = {}
    for trial in trials:
        trial_id = str(getattr(trial, "trialJobId", None) or getattr(trial, "trial_job_id", "?"))
        where = f"{label} trial {trial_id}"
        try:
            value = _final_result(getattr(trial, "value", None))
            parameter = getattr(trial, "parameter", None) or {}
            if isinstance(parameter, Mapping) and isinstance(parameter.get("parameters"), Mapping):
                parameter = parameter["parameters"]  # the raw NNI form {'parameter_id', 'parameters', ...}
            if not isinstance(parameter, Mapping):
                raise ValueError(f"{where}: trial parameters must be an object, got {parameter!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = {"default": value}
            if not isinstance(value, Mapping) or "default" not in value:
                raise ValueError(f"{where}: final result has no 'default' (the main score): {value!r}")
            run_dir = value.get("run_dir")
            if run_dir:
                key = str(Path(run_dir).resolve())
                if key in first_trial_of:
                    raise ValueError(f"{where}: the same run as trial {first_trial_of[key]} ({run_dir}); counted once")
                first_trial_of[key] = trial_id
            if run_dir and (Path(run_dir) / METRICS).is_file():
                row = read_run(run_dir)
            else:
                method = value.get("method") or parameter.get("method") or parameter.get("strategy") or "unknown"
                params = parameter.get("params")
                if not isinstance(params, Mapping):
                    params = {k: v for k, v in parameter.items() if k not in ("method", "strategy", "seed")}
                metrics = dict(value)
                task = metrics.get("task")
                main = task_info(check_task_name(DEFAULT_TASK if task is None else task, where)).main
                metrics[main] = metrics.get(main, metrics["default"])
                row = _row(method, params, value.get("seed", parameter.get("seed")), metrics, where, task=task,
                           dataset=metrics.get("dataset"))
                row.update(run_dir=str(run_dir) if run_dir else None, connectivity=None)
            row.update(source="nni", trial_id=trial_id)
            rows.append(row)
        except ValueError as err:
            _skip(skipped, where, str(err))
    return rows


# ------------------------------------------------------------------------------------------------ paired FPS
def read_paired_fps(path: str | Path) -> tuple[str, dict[str, dict[str, float]]]:
    """The reference method and ``{resolved run directory: {"fps_ratio", "fps_ratio_min", "fps_ratio_max"}}`` of a
    :data:`PAIRED_FPS_FILE`; a missing, corrupt or malformed file is an error naming it and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write it with `sparsemask retime ROOT`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err}); write it again with `sparsemask retime ROOT --overwrite`") \
            from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict) or not isinstance(data.get("reference"), str):
        raise ValueError(f"{path}: not a paired-FPS file (needs 'reference' and 'runs'); write it with "
                         "`sparsemask retime ROOT`")
    out = {}
    for run, entry in runs.items():
        try:
            values = {f"fps_{k}": float(entry[k]) for k in ("ratio", "ratio_min", "ratio_max")}
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: run {run!r} lacks a numeric ratio, ratio_min or ratio_max; write the file again "
                             "with `sparsemask retime ROOT --overwrite`") from None
        out[str((path.parent / run).resolve())] = values
    return data["reference"], out


def _attach_paired_fps(rows: list[dict[str, Any]], path: Path) -> None:
    reference, ratios = read_paired_fps(path)
    for row in rows:
        found = ratios.get(str(Path(row["run_dir"]).resolve())) if row.get("run_dir") else None
        if found is not None:
            row.update(found, fps_reference=reference)


# ------------------------------------------------------------------------------------------------ public
def load_results(source: Any, experiments_dir: str | Path | None = None, task: str | None = None,
                 paired_fps: str | Path | None = None) -> pd.DataFrame:
    """One row per finished run from a root of run directories, an NNI experiment id, or an object with
    ``export_data()`` (an ``nni.experiment.Experiment``). See the module docstring for the columns.

    ``task``: keep only the runs of that task (the others are counted in ``df.attrs["other_tasks"]``,
    ``{task: runs}``); a run directory given as ``source`` whose task is another one is refused
    (``ValueError``), and so is a source with no run of ``task``.

    ``experiments_dir``: where an experiment id's folder is (its ``experimentWorkingDirectory``); by default
    ``$NNI_EXPERIMENT_DIR``, the directory NNI's experiment list records for the id and ``~/nni-experiments``
    (:func:`.nni_db.find_database`). A corrupt or unreadable database is a ``ValueError``
    (:class:`.nni_db.NNIDatabaseError`).

    ``paired_fps``: a :data:`PAIRED_FPS_FILE` (``sparsemask retime``) whose ratios fill the ``fps_ratio`` columns;
    by default a root's own file, when it has one."""
    if task is not None:
        check_task_name(task)
    skipped: list[SkippedRun] = []
    what = f"a run is a directory holding {METRICS}"
    if hasattr(source, "export_data"):
        rows = _rows_from_trials(source.export_data(), skipped, f"experiment {getattr(source, 'id', '')}".strip())
        label, what = "the experiment", "a run is a succeeded trial with a final result"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.exists() or not (isinstance(source, str) and _EXPERIMENT_ID.fullmatch(source)):
            rows = _rows_from_root(path, skipped)
            label = str(path)
        else:
            try:
                database = find_database(source, experiments_dir)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{source!r} is neither a directory nor an NNI experiment id known here: "
                                        f"{err}") from None
            rows = _rows_from_trials(read_trials(database), skipped, f"experiment {source}")
            label, what = f"NNI experiment {source} ({database})", "a run is a succeeded trial with a final result"
    else:
        raise ValueError(f"load_results needs a directory, an NNI experiment id or an Experiment, got {source!r}")
    if not rows:
        detail = (f"; skipped {len(skipped)}: " + "; ".join(f"{s.path} ({s.reason})" for s in skipped)) if skipped else ""
        raise ValueError(f"no finished runs in {label} ({what}){detail}")
    if paired_fps is None and isinstance(source, (str, Path)) and (Path(source) / PAIRED_FPS_FILE).is_file():
        paired_fps = Path(source) / PAIRED_FPS_FILE
    if paired_fps is not None:
        _attach_paired_fps(rows, Path(paired_fps))
    other_tasks: dict[str, int] = {}
    if task is not None:
        rows, other_tasks = _of_task(rows, task, source, label)
    df = _frame(rows)
    df.attrs["skipped"] = [asdict(s) for s in skipped]
    df.attrs["other_tasks"] = other_tasks
    return df


def _of_task(rows: list[dict[str, Any]], task: str, source: Any,
             label: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of ``task`` and how many runs of each other task were left out; refuses a run directory given
    directly that is of another task, and a source without any run of ``task``."""
    if isinstance(source, (str, Path)) and (Path(source) / METRICS).is_file():
        own = next((r for r in rows if r["run_dir"] == str(Path(source))), None)
        if own is not None and own["task"] != task:
            raise ValueError(f"{source} is a run of task {own['task']}, not {task}: report it with --task "
                             f"{own['task']} (task={own['task']!r}) or without --task")
    other: dict[str, int] = {}
    for r in rows:
        if r["task"] != task:
            other[r["task"]] = other.get(r["task"], 0) + 1
    kept = [r for r in rows if r["task"] == task]
    if not kept:
        found = ", ".join(f"{t} ({n} run{'' if n == 1 else 's'})" for t, n in sorted(other.items()))
        raise ValueError(f"no runs of task {task} in {label}; found {found}")
    return kept, other


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    param_cols = sorted(c for c in df.columns if c not in CORE_COLUMNS)
    head = CORE_COLUMNS[:CORE_COLUMNS.index("config")]
    tail = CORE_COLUMNS[CORE_COLUMNS.index("config"):]
    df = df.reindex(columns=head + param_cols + tail)
    for col in _NUMERIC + ["main"]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["seed"] = df["seed"].astype("Int64")
    return df.reset_index(drop=True)


def skipped_runs(df: pd.DataFrame) -> list[SkippedRun]:
    """The runs :func:`load_results` left out of ``df``, with the reason."""
    return [SkippedRun(**s) for s in df.attrs.get("skipped", [])]


def save_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (no index; an infinite gap is written as ``inf``) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
