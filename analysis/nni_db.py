"""An NNI experiment's trials read from its SQLite database, read-only: no NNI manager is started, NNI is not
imported.

NNI's manager keeps every experiment in ``<experiments dir>/<id>/db/nni.sqlite``; the experiments directory is
the experiment's ``experimentWorkingDirectory`` (default ``~/nni-experiments``). The two tables read here, as
NNI 3.0's manager creates and fills them (``ts/nni_manager/core/sqlDatabase.ts`` and ``nniDataStore.ts``)::

    TrialJobEvent(timestamp integer, trialJobId text, event text, data text, logPath text, sequenceId integer,
                  message text, environmentId text)
        a row per change of a trial's status (WAITING when submitted, RUNNING, SUCCEEDED, FAILED, USER_CANCELED,
        SYS_CANCELED, EARLY_STOPPED) and per manager action (ADD_CUSTOMIZED, ADD_HYPERPARAMETER, ADD_RESUMED,
        USER_TO_CANCEL, IMPORT_DATA); ``data`` holds, on the row of the submission, the parameter record the tuner
        gave the trial: '{"parameter_id": 0, "parameter_source": "algorithm", "parameters": {...},
        "parameter_index": 0}'.
    MetricData(timestamp integer, trialJobId text, parameterId text, type text, sequence integer, data text)
        a row per ``nni.report_intermediate_result`` (type PERIODICAL, ``sequence`` 0, 1, ...) and
        ``nni.report_final_result`` (type FINAL); the trial sends the value JSON-encoded (``nni.dump``) and the
        manager stores that string JSON-encoded again: a dict final result is ``json.loads(json.loads(data))``.

:func:`read_trials` gives what the manager's export gives (``Experiment.export_data()``, ``nnictl experiment
export``): one :class:`TrialRecord` per parameter set of a SUCCEEDED trial with a FINAL result, in the order the
trials were first recorded. :func:`find_database` finds an experiment's database by its id.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

__all__ = ["TrialRecord", "NNIDatabaseError", "find_database", "read_trials", "DATABASE", "EXPERIMENT_DIR_ENV",
           "DEFAULT_EXPERIMENTS_DIR"]

#: an experiment's database, relative to the experiment's folder (``<experiments dir>/<id>``)
DATABASE = Path("db") / "nni.sqlite"
#: where NNI puts experiments unless ``experimentWorkingDirectory`` says otherwise
DEFAULT_EXPERIMENTS_DIR = Path("~") / "nni-experiments"
#: an experiments directory to look in first (the ``experimentWorkingDirectory`` of the experiments read); this
#: project's variable, NNI does not read it
EXPERIMENT_DIR_ENV = "NNI_EXPERIMENT_DIR"
#: NNI's list of the experiments it started (``nnictl experiment list --all``), with each one's experiments
#: directory as ``logDir``
_EXPERIMENT_LIST = ".experiment"
_FINISHED = "SUCCEEDED"


class NNIDatabaseError(ValueError):
    """An experiment's database that cannot be read: corrupt, not an NNI database, or unreadable."""


@dataclass(frozen=True)
class TrialRecord:
    """One exported trial, named as ``nni.experiment.TrialResult``: ``parameter`` (the tuner's parameters),
    ``value`` (the final result, decoded: a dict or a number; the raw text when it is not JSON) and
    ``trialJobId``; plus ``parameter_id`` (the tuner's id of the parameter set)."""

    parameter: Any
    value: Any
    trialJobId: str
    parameter_id: Optional[int] = None


# ------------------------------------------------------------------------------------------------ where
def _experiments_dirs(experiment_id: str, experiments_dir: str | Path | None) -> list[Path]:
    """Where to look for ``experiment_id``, in order: ``experiments_dir`` alone when given; else
    ``$NNI_EXPERIMENT_DIR``, the experiments directory NNI's experiment list records for the id, the default."""
    if experiments_dir is not None:
        return [Path(experiments_dir).expanduser()]
    dirs = []
    if os.environ.get(EXPERIMENT_DIR_ENV):
        dirs.append(Path(os.environ[EXPERIMENT_DIR_ENV]).expanduser())
    default = DEFAULT_EXPERIMENTS_DIR.expanduser()
    try:
        listed = json.loads((default / _EXPERIMENT_LIST).read_text()).get(experiment_id, {}).get("logDir")
    except (OSError, ValueError, AttributeError):  # no list, or not the JSON object NNI writes
        listed = None
    if isinstance(listed, str) and listed:
        dirs.append(Path(listed).expanduser())
    dirs.append(default)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_database(experiment_id: str, experiments_dir: str | Path | None = None) -> Path:
    """The database of the NNI experiment ``experiment_id``: ``<experiments dir>/<id>/db/nni.sqlite``.

    ``experiments_dir``: the experiment's ``experimentWorkingDirectory`` (only there is looked); by default
    ``$NNI_EXPERIMENT_DIR``, the directory NNI's experiment list (``~/nni-experiments/.experiment``) records for
    the id, and ``~/nni-experiments``. ``FileNotFoundError`` names every place looked at."""
    if not experiment_id or Path(experiment_id).name != experiment_id or experiment_id in (".", ".."):
        raise ValueError(f"not an NNI experiment id: {experiment_id!r}")
    looked = []
    for d in _experiments_dirs(experiment_id, experiments_dir):
        path = d / experiment_id / DATABASE
        if path.is_file():
            return path
        folder = path.parent.parent
        looked.append(f"{path} (the experiment folder exists, without a database: not an experiment NNI's manager "
                      f"ran, e.g. an in-process NAS experiment)" if folder.is_dir() else str(path))
    raise FileNotFoundError(
        f"no database of NNI experiment {experiment_id!r}; looked at {'; '.join(looked)}. An experiment run with "
        f"another experimentWorkingDirectory is found by giving that directory (experiments_dir=..., or "
        f"{EXPERIMENT_DIR_ENV}=...)")


# ------------------------------------------------------------------------------------------------ reading
def _connect(database: Path) -> sqlite3.Connection:
    if not database.is_file():
        raise FileNotFoundError(f"NNI database not found: {database}")
    if not os.access(database, os.R_OK):
        raise NNIDatabaseError(f"cannot read the NNI database {database}: permission denied")
    # read-only: nothing is created or changed, even while NNI's manager is writing to it
    return sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)


def _status(old: str, event: str) -> str:
    """A trial's status after ``event`` (the manager's ``getJobStatusByLatestEvent``)."""
    return {"USER_TO_CANCEL": "USER_CANCELED", "ADD_CUSTOMIZED": "WAITING", "ADD_HYPERPARAMETER": old}.get(event, event)


def _decoded(data: Any) -> Any:
    """A FINAL row's ``data`` -> the reported value (decoded twice; undecodable text is returned as it is)."""
    value = data
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            break
    return value


def _number(value: Any) -> Optional[int]:
    """A parameter id as the manager compares them (``Number(parameterId)``); None when it is not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number == number and number.is_integer() else None


def _replay(events: Iterable[tuple[Any, Any, Any]]) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Trial id -> (status, parameter records), from TrialJobEvent rows in insertion order (the manager's
    ``getTrialJobsByReplayEvents``: a record counts once per ``parameter_index``; unparsable ones are left out)."""
    jobs: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    indexes: dict[str, set[Any]] = {}
    for trial_id, event, data in events:
        if not trial_id:
            continue
        status, records = jobs.get(trial_id, ("UNKNOWN", []))
        status = _status(status, str(event))
        if isinstance(data, str) and data.strip():
            try:
                record = json.loads(data)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                seen = indexes.setdefault(trial_id, set())
                key = json.dumps(record.get("parameter_index"))
                if key not in seen:
                    seen.add(key)
                    records.append(record)
        jobs[trial_id] = (status, records)
    return jobs


def read_trials(database: str | Path) -> list[TrialRecord]:
    """The exported trials of the experiment whose database is ``database`` (see the module docstring).

    ``NNIDatabaseError`` (a ``ValueError``) when the file is not a readable NNI database."""
    database = Path(database)
    connection = _connect(database)
    try:
        events = connection.execute("SELECT trialJobId, event, data FROM TrialJobEvent ORDER BY rowid").fetchall()
        finals = connection.execute("SELECT trialJobId, parameterId, data FROM MetricData WHERE type = 'FINAL' "
                                    "ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError as err:  # not a database, a corrupt one, another schema, locked for recovery
        raise NNIDatabaseError(f"cannot read the NNI database {database}: {err} (a corrupt file, or not the "
                               f"database of an NNI experiment)") from None
    finally:
        connection.close()
    final_of: dict[str, tuple[Any, Any]] = {}
    for trial_id, parameter_id, data in finals:
        final_of.setdefault(trial_id, (parameter_id, data))  # the manager keeps a trial's first FINAL result
    out = []
    for trial_id, (status, records) in _replay(events).items():
        if status != _FINISHED or not records or trial_id not in final_of:
            continue
        parameter_id, data = final_of[trial_id]
        if len(records) == 1:
            record = records[0]
            out.append(TrialRecord(record.get("parameters"), _decoded(data), str(trial_id),
                                   _number(record.get("parameter_id"))))
            continue
        # several parameter sets (multi-phase, resumed): each one with the FINAL result of its own id
        by_id = {_number(r.get("parameter_id")): r.get("parameters") for r in records}
        for pid, parameters in by_id.items():
            if pid is not None and pid == _number(parameter_id) and data:
                out.append(TrialRecord(parameters, _decoded(data), str(trial_id), pid))
    return out
