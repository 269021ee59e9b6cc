"""``analysis`` reads a finished NNI experiment from its SQLite database (``analysis.nni_db``), read-only, without
NNI's manager: a database in NNI 3.0's schema written here, with rows shaped as the manager writes them (checked
against the database of a real local experiment: the parameter record on the trial's RUNNING row, ``parameterId``
as text, the reported value JSON-encoded by the trial and again by the manager)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import nni
import pytest

from nni_sparsemask.analysis import nni_db, results

# NNI 3.0's manager, ts/nni_manager/core/sqlDatabase.ts (createTables)
NNI_SCHEMA = """
create table TrialJobEvent (
    timestamp integer,
    trialJobId text,
    event text,
    data text,
    logPath text,
    sequenceId integer,
    message text,
    environmentId text);
create index TrialJobEvent_trialJobId on TrialJobEvent(trialJobId);
create index TrialJobEvent_event on TrialJobEvent(event);

create table MetricData (timestamp integer, trialJobId text, parameterId text, type text, sequence integer, data text);
create index MetricData_trialJobId on MetricData(trialJobId);
create index MetricData_type on MetricData(type);

create table ExperimentProfile (
    params text,
    id text,
    execDuration integer,
    startTime integer,
    endTime integer,
    logDir text,
    nextSequenceId integer,
    revision integer);
create index ExperimentProfile_id on ExperimentProfile(id);
"""


class NNIDatabase:
    """An experiment database written as NNI's manager writes it."""

    def __init__(self, experiments_dir: Path, experiment_id: str):
        self.path = experiments_dir / experiment_id / "db" / "nni.sqlite"
        self.path.parent.mkdir(parents=True)
        self.connection = sqlite3.connect(self.path)
        self.connection.executescript(NNI_SCHEMA)
        self.clock, self.sequence = 1_700_000_000_000, 0

    def _now(self) -> int:
        self.clock += 1000
        return self.clock

    def event(self, trial: str, event: str, parameter: dict | None = None) -> None:
        """``storeTrialJobEvent``: ``data`` is the tuner's packed parameter record (``_pack_parameter``)."""
        self.connection.execute("insert into TrialJobEvent values (?,?,?,?,?,?,?,?)",
                                (self._now(), trial, event, json.dumps(parameter) if parameter else None,
                                 f"/exp/trials/{trial}", self.sequence, None, "local-env"))

    def metric(self, trial: str, parameter_id: int, kind: str, value, sequence: int = 0) -> None:
        """``storeMetricData``: the trial sends ``nni.dump(value)``; the manager stores ``JSON.stringify`` of it,
        with the parameter id in a text column."""
        sent = nni.dump(value)  # what nni.report_*_result sends (trial_command_channel: 'value': nni.dump(value))
        self.connection.execute("insert into MetricData values (?,?,?,?,?,?)",
                                (self._now(), trial, parameter_id, kind, sequence, json.dumps(sent)))

    def trial(self, trial: str, parameter_id: int, parameters: dict, final=None, status: str = "SUCCEEDED",
              epochs=(0.3, 0.5)) -> None:
        """A trial from start to end: RUNNING (with its parameter record), its reports, its end."""
        record = {"parameter_id": parameter_id, "parameter_source": "algorithm", "parameters": parameters,
                  "parameter_index": 0}
        self.event(trial, "RUNNING", record)
        for i, value in enumerate(epochs):
            self.metric(trial, parameter_id, "PERIODICAL", {"default": value, "val_loss": 1.0}, sequence=i)
        if final is not None:
            self.metric(trial, parameter_id, "FINAL", final)
        self.event(trial, status)
        self.sequence += 1

    def close(self) -> Path:
        self.connection.commit()
        self.connection.close()
        return self.path


def _final(miou, method, seed, run_dir=None, **extra):
    return {"default": miou, "miou": miou, "pixel_accuracy": 0.9, "fps": 50.0, "params_encoder": 4716.0,
            "params_decoder": 171.0, "flops": 3e5, "edges": 1, "stages": 1, "method": method, "seed": seed,
            "run_dir": run_dir, "reused": False, **extra}


def _run_dir(root: Path, name: str, method: str, miou: float, seed: int = 0) -> Path:
    run = root / name / "retrain"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": method, "params": {}, "seed": seed}))
    (run / "metrics.json").write_text(json.dumps({"method": method, "params": {}, "seed": seed, "miou": miou,
                                                  "fps": 99.0, "params_decoder": 171.0, "edges": 1}))
    return run


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """Experiment ``exp123ab`` under ``tmp_path/nni``: 2 finished trials, one failed, one NNI handed out again
    after a resume (same entry, the trial reused the finished run), one cancelled; HOME has no experiments."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(nni_db.EXPERIMENT_DIR_ENV, raising=False)
    runs = tmp_path / "runs"
    fcn = _run_dir(runs, "fcn_seed=0", "fcn", 0.61)
    db = NNIDatabase(tmp_path / "nni", "exp123ab")
    db.trial("Ab1cD", 0, {"params": {"_name": "fcn"}, "seed": 0}, _final(0.61, "fcn", 0, str(fcn)))
    db.trial("Ef2gH", 1, {"params": {"_name": "sparsemask", "lambda_sparse": 0.01}, "seed": 1},
             _final(0.73, "sparsemask", 1, str(runs / "gone"), edges=8))  # run dir gone: the final result counts
    db.trial("Ij3kL", 2, {"params": {"_name": "unet"}, "seed": 0}, None, status="FAILED", epochs=(0.1,))
    db.trial("Mn4oP", 3, {"params": {"_name": "fcn"}, "seed": 0}, _final(0.61, "fcn", 0, str(fcn), reused=True))
    db.trial("Qr5sT", 4, {"params": {"_name": "fdn"}, "seed": 0}, None, status="USER_CANCELED")
    return tmp_path / "nni", db.close()


# ------------------------------------------------------------------------------------------------ reading
def test_read_trials_is_what_the_manager_exports(experiment):
    _, database = experiment
    trials = nni_db.read_trials(database)
    # export_data(): the SUCCEEDED trials with a final result, in order, the value decoded
    assert [t.trialJobId for t in trials] == ["Ab1cD", "Ef2gH", "Mn4oP"]
    assert [t.parameter_id for t in trials] == [0, 1, 3]
    first = trials[0]
    assert first.parameter == {"params": {"_name": "fcn"}, "seed": 0}
    assert isinstance(first.value, dict) and first.value["default"] == 0.61 and first.value["method"] == "fcn"


def test_load_results_reads_the_database(experiment, tmp_path):
    experiments_dir, database = experiment
    before = (database.read_bytes(), database.stat().st_mtime_ns)
    with pytest.warns(UserWarning, match="same run as trial Ab1cD"):
        df = results.load_results("exp123ab", experiments_dir=experiments_dir)
    # the re-run entry (Mn4oP reports the run directory of Ab1cD) is counted once; failed/cancelled are not runs
    assert list(df["trial_id"]) == ["Ab1cD", "Ef2gH"]
    assert (df["source"] == "nni").all()
    fcn = df.iloc[0]  # read from its run directory (metrics.json: fps 99)
    assert (fcn["family"], fcn["miou"], fcn["fps"], fcn["seed"]) == ("FCN", 0.61, 99.0, 0)
    assert fcn["run_dir"] == str(tmp_path / "runs" / "fcn_seed=0" / "retrain")
    sm = df.iloc[1]  # its run directory is gone: from the final result
    assert (sm["family"], sm["miou"], sm["fps"], sm["edges"], sm["seed"]) == ("SparseMask", 0.73, 50.0, 8, 1)
    assert sm["lambda_sparse"] == 0.01 and json.loads(sm["config"]) == {"lambda_sparse": 0.01}
    assert [s.path for s in results.skipped_runs(df)] == ["experiment exp123ab trial Mn4oP"]
    # read-only: the file is untouched and no journal was left beside it
    assert (database.read_bytes(), database.stat().st_mtime_ns) == before
    assert sorted(p.name for p in database.parent.iterdir()) == ["nni.sqlite"]


def test_the_experiments_directory_is_found(experiment, tmp_path, monkeypatch):
    experiments_dir, database = experiment
    # $NNI_EXPERIMENT_DIR
    monkeypatch.setenv(nni_db.EXPERIMENT_DIR_ENV, str(experiments_dir))
    assert nni_db.find_database("exp123ab") == database
    monkeypatch.delenv(nni_db.EXPERIMENT_DIR_ENV)
    # NNI's experiment list (~/nni-experiments/.experiment) records each experiment's directory as logDir
    listing = tmp_path / "home" / "nni-experiments" / ".experiment"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps({"exp123ab": {"id": "exp123ab", "status": "STOPPED",
                                                "logDir": str(experiments_dir)}}))
    assert nni_db.find_database("exp123ab") == database
    with pytest.warns(UserWarning, match="counted once"):
        assert len(results.load_results("exp123ab")) == 2


def test_unknown_experiment_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(nni_db.EXPERIMENT_DIR_ENV, str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        results.load_results("abc123XY")
    message = str(info.value)
    assert "neither a directory nor an NNI experiment" in message
    assert str(tmp_path / "elsewhere" / "abc123XY" / "db" / "nni.sqlite") in message
    assert str(tmp_path / "home" / "nni-experiments" / "abc123XY" / "db" / "nni.sqlite") in message
    assert "NNI_EXPERIMENT_DIR" in message and "experimentWorkingDirectory" in message
    # an explicit directory is the only place looked at
    with pytest.raises(FileNotFoundError, match="looked at [^;]*given/abc123XY/db/nni.sqlite\\. "):
        results.load_results("abc123XY", experiments_dir=tmp_path / "given")
    # an experiment folder without a database (an in-process NAS experiment) is told apart
    (tmp_path / "given" / "nas12345" / "checkpoint").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="folder exists, without a database"):
        results.load_results("nas12345", experiments_dir=tmp_path / "given")


@pytest.mark.parametrize("content", [b"this is not a database at all" * 40, None])
def test_corrupt_or_foreign_database_is_a_clear_error(tmp_path, content):
    path = tmp_path / "nni" / "bad12345" / "db" / "nni.sqlite"
    path.parent.mkdir(parents=True)
    if content is None:  # a valid SQLite file, but not NNI's
        with sqlite3.connect(path) as connection:
            connection.execute("create table other (x integer)")
        connection.close()
    else:
        path.write_bytes(content)
    with pytest.raises(nni_db.NNIDatabaseError, match=f"cannot read the NNI database {path}"):
        results.load_results("bad12345", experiments_dir=tmp_path / "nni")
    assert issubclass(nni_db.NNIDatabaseError, ValueError)


def test_unreadable_database_is_a_clear_error(experiment):
    import os
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    experiments_dir, database = experiment
    database.chmod(0)
    try:
        with pytest.raises(nni_db.NNIDatabaseError, match="permission denied"):
            results.load_results("exp123ab", experiments_dir=experiments_dir)
    finally:
        database.chmod(0o644)


def test_manager_rules_first_final_result_and_several_parameter_sets(tmp_path):
    db = NNIDatabase(tmp_path, "multi123")
    # a trial reporting two final results: the manager keeps the first
    db.trial("twice", 0, {"params": {"_name": "fcn"}, "seed": 0}, _final(0.5, "fcn", 0))
    db.metric("twice", 0, "FINAL", _final(0.9, "fcn", 0))
    # a trial given a second parameter set (ADD_HYPERPARAMETER): the final result goes with its parameter id
    db.trial("multi", 1, {"params": {"_name": "unet"}, "seed": 0}, None, status="RUNNING")
    db.event("multi", "ADD_HYPERPARAMETER", {"parameter_id": 2, "parameter_source": "algorithm",
                                             "parameters": {"params": {"_name": "unet"}, "seed": 1},
                                             "parameter_index": 1})
    db.metric("multi", 2, "FINAL", _final(0.4, "unet", 1))
    db.event("multi", "SUCCEEDED")
    # an unparsable record is left out, as the manager does; a trial without records is not exported
    db.event("junk", "RUNNING")
    db.connection.execute("update TrialJobEvent set data = '{not json' where trialJobId = 'junk'")
    db.metric("junk", 5, "FINAL", 0.3)
    db.event("junk", "SUCCEEDED")
    trials = nni_db.read_trials(db.close())
    assert [(t.trialJobId, t.parameter_id, t.value["default"]) for t in trials] == [("twice", 0, 0.5),
                                                                                    ("multi", 2, 0.4)]
    assert trials[1].parameter == {"params": {"_name": "unet"}, "seed": 1}


def test_a_final_result_that_is_not_json_is_skipped_with_a_warning(tmp_path):
    db = NNIDatabase(tmp_path, "odd12345")
    db.trial("good", 0, {"params": {"_name": "fcn"}, "seed": 0}, _final(0.5, "fcn", 0))
    db.trial("bad", 1, {"params": {"_name": "unet"}, "seed": 0}, None)
    db.connection.execute("insert into MetricData values (1, 'bad', '1', 'FINAL', 0, 'garbage')")
    db.close()
    with pytest.warns(UserWarning, match="trial bad: final result has no 'default'"):
        df = results.load_results("odd12345", experiments_dir=tmp_path)
    assert list(df["trial_id"]) == ["good"]


def test_analysis_starts_no_manager_and_needs_neither_nni_nor_the_comparison(experiment):
    experiments_dir, _ = experiment
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from nni_sparsemask.analysis import load_results\n"
            f"df = load_results('exp123ab', experiments_dir={str(experiments_dir)!r})\n"
            "loaded = [m for m in sys.modules if m == 'nni' or m.startswith(('nni.', 'nni_sparsemask.comparison'))]\n"
            "print(len(df), loaded)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "2 []"
    # and no module of analysis imports the comparison layer (which starts NNI's manager)
    for path in (Path(results.__file__).parent).glob("*.py"):
        assert "comparison" not in "".join(line for line in path.read_text().splitlines(True)
                                           if line.lstrip().startswith(("import ", "from "))), path
