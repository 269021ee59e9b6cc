"""``sparsemask compare``: config checks before launching, NNI's manager kept on 127.0.0.1 (a real local
experiment), stopped by its own pid, and an experiment stopped midway then resumed without redoing finished
entries."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import TRIAL_TINY

from nni_sparsemask import compare, manager

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
NODE = Path(__import__("nni_node").__path__[0]) / "node"

TINY = TRIAL_TINY


pytestmark = pytest.mark.usefixtures("isolated_cache")


def free_port() -> int:
    """A port that is free on every interface, and so is the next one."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port < 65000 and all(_bindable(p) for p in (port, port + 1)):
            return port
    raise RuntimeError("no free port pair found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


def write_config(tmp_path: Path, decoders=("fcn",), trial_command=None, **fields) -> Path:
    space = {"params": {"_type": "choice", "_value": [{"_name": d} for d in decoders]},
             "seed": {"_type": "choice", "_value": [0]}}
    (tmp_path / "space.json").write_text(json.dumps(space))
    command = trial_command or (f"python -m nni_sparsemask.comparison.trial --results {tmp_path / 'runs'} "
                                f"--settings '{json.dumps(TINY)}'")
    config = {"experimentName": "sparsemask-test", "searchSpaceFile": "space.json", "trialCommand": command,
              "trialCodeDirectory": ".", "trialConcurrency": 1, "experimentWorkingDirectory": str(tmp_path / "nni"),
              "tuner": {"name": "GridSearch"}, "trainingService": {"platform": "local"}, **fields}
    path = tmp_path / "experiment.yml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def forget(experiment_id: str) -> None:
    """Remove a test experiment from NNI's experiment list (~/nni-experiments/.experiment)."""
    from nni.tools.nnictl.config_utils import Experiments
    Experiments().remove_experiment(experiment_id)


# ------------------------------------------------------------------------------------------------ the preload
def test_loopback_preload_moves_wildcard_listens_to_loopback():
    script = """
    const net = require('net'), http = require('http');
    const cases = [
      ['port only', s => s.listen(0)],
      ['port + callback', s => s.listen(0, () => {})],
      ['port, undefined host, backlog', s => s.listen(0, undefined, 5)],
      ['wildcard host', s => s.listen(0, '0.0.0.0')],
      ['ipv6 wildcard', s => s.listen(0, '::')],
      ['options', s => s.listen({port: 0})],
      ['no arguments', s => s.listen()],
      ['explicit host kept', s => s.listen(0, '127.0.0.2')],
    ];
    const out = {};
    let pending = cases.length;
    for (const [name, start] of cases) {
      const server = http.createServer();
      server.on('listening', () => { out[name] = server.address().address; server.close();
                                     if (--pending === 0) console.log(JSON.stringify(out)); });
      start(server);
    }
    """
    env = dict(os.environ, NODE_OPTIONS=manager.loopback_environment()["NODE_OPTIONS"])
    done = subprocess.run([str(NODE), "-e", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    addresses = json.loads(done.stdout)
    assert addresses.pop("explicit host kept") == "127.0.0.2"
    assert set(addresses.values()) == {"127.0.0.1"}, addresses


def test_loopback_environment_keeps_existing_node_options(monkeypatch):
    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=2048")
    options = manager.loopback_environment()["NODE_OPTIONS"]
    assert options.startswith("--max-old-space-size=2048 --require ") and str(manager.LOOPBACK_JS) in options


# ------------------------------------------------------------------------------------------------ reporting to NNI
# The library calls NNI's public nni.report_intermediate_result / nni.report_final_result and nothing else of NNI's
# trial API; these tests replace the two to record the calls.
TRIAL_ENV = {"NNI_PLATFORM": "local", "NNI_EXP_ID": "exp123ab", "NNI_TRIAL_JOB_ID": "Ab1cD"}


def _trial_environment(monkeypatch, inside: bool) -> None:
    for name, value in TRIAL_ENV.items():
        if inside:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def nni_reports(monkeypatch):
    """The reports sent to NNI, as ``[("intermediate" | "final", value), ...]``."""
    import nni

    calls = []
    monkeypatch.setattr(nni, "report_intermediate_result", lambda value: calls.append(("intermediate", value)))
    monkeypatch.setattr(nni, "report_final_result", lambda value: calls.append(("final", value)))
    return calls


def test_a_trial_is_told_by_nni_trial_environment(monkeypatch):
    import nni

    from nni_sparsemask.run.lightning import in_nni_trial

    _trial_environment(monkeypatch, inside=False)
    # what an in-process NasExperiment leaves behind (its model as NNI's current parameter) is not a trial
    monkeypatch.setattr(nni, "get_current_parameter", lambda *args, **kwargs: {"model": 1})
    assert not in_nni_trial()
    _trial_environment(monkeypatch, inside=True)
    assert in_nni_trial()
    monkeypatch.setenv("NNI_PLATFORM", "unittest")  # NNI's stand-alone mode
    assert not in_nni_trial()
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.delenv("NNI_TRIAL_JOB_ID")
    assert not in_nni_trial()


def _fit(tmp_path, report_to_nni, validate=False):
    """Two epochs of a 1x1 conv on random tensors (plus a sanity check, which never reports)."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from nni_sparsemask.run.lightning import SegmentationModule

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 8, 8, generator=generator),
                         torch.randint(0, 3, (4, 8, 8), generator=generator))
    module = SegmentationModule(num_classes=3)
    module.set_model(torch.nn.Conv2d(3, 3, 1))
    module.report_to_nni = report_to_nni
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                         default_root_dir=str(tmp_path))
    loader = DataLoader(data, batch_size=2)
    trainer.fit(module, loader, loader)
    if validate:
        trainer.validate(module, loader, verbose=False)


@pytest.mark.parametrize("report_to_nni,inside,expected", [
    # as NNI's evaluators: each validation epoch (2 of the fit, 1 of the validate), the end of fit and of validate
    (None, True, ["intermediate", "intermediate", "final", "intermediate", "final"]),
    (None, False, []),  # not a trial
    (True, True, ["intermediate"] * 3),  # no final result: the caller reports its own
    (True, False, ["intermediate"] * 3),
    (False, True, []),
])
def test_the_training_module_reports_what_it_is_told(tmp_path, monkeypatch, nni_reports, report_to_nni, inside,
                                                     expected):
    _trial_environment(monkeypatch, inside)
    _fit(tmp_path, report_to_nni, validate=True)
    assert [kind for kind, _ in nni_reports] == expected
    for _, value in nni_reports:
        assert set(value) == {"default", "pixel_accuracy", "fg_iou", "score", "val_loss"}
    if expected[2:3] == ["final"]:
        assert nni_reports[2][1] == nni_reports[1][1]  # the final result is the last epoch's


def test_the_trial_reports_its_retraining_and_one_final_result(tmp_path, monkeypatch, nni_reports, capsys):
    import nni

    from nni_sparsemask.comparison import trial

    parameters = {"params": {"_name": "fcn"}, "seed": 0}
    argv = ["--results", str(tmp_path / "runs"), "--settings", json.dumps({**TINY, "retrain_epochs": 2})]
    _trial_environment(monkeypatch, inside=True)
    monkeypatch.setattr(nni, "get_next_parameter", lambda: parameters)
    assert trial.main(argv) == 0
    assert [kind for kind, _ in nni_reports] == ["intermediate", "intermediate", "final"]
    assert all("phase" not in value for _, value in nni_reports)
    final = nni_reports[-1][1]
    metrics = json.loads((tmp_path / "runs" / "fcn_seed=0" / "retrain" / "metrics.json").read_text())
    assert final["default"] == metrics["miou"] and final["fps"] == metrics["fps"] and final["reused"] is False
    assert Path(final["run_dir"]) == (tmp_path / "runs" / "fcn_seed=0" / "retrain").resolve()

    # the same entry by hand (--params): nothing is reported, in NNI's environment or not
    nni_reports.clear()
    assert trial.main(argv + ["--params", json.dumps(parameters)]) == 0
    _trial_environment(monkeypatch, inside=False)
    assert trial.main(argv + ["--params", json.dumps(parameters)]) == 0
    assert nni_reports == []
    # no --params outside NNI: a clear error, NNI's trial API is not asked for parameters
    monkeypatch.setattr(nni, "get_next_parameter", lambda: pytest.fail("asked NNI for parameters"))
    capsys.readouterr()
    assert trial.main(argv) == 2
    assert "not started by NNI as a trial" in capsys.readouterr().err


def test_a_one_shot_search_runs_apart_only_inside_a_trial(tmp_path, monkeypatch):
    import nni_sparsemask.run.steps as steps
    from nni_sparsemask.comparison import trial

    calls = []
    monkeypatch.setattr(steps, "run_search", lambda **kwargs: calls.append(("here", kwargs["strategy"])))
    monkeypatch.setattr(trial, "_search_in_own_process",
                        lambda target, kwargs, log: calls.append(("apart", kwargs["strategy"], target)))
    monkeypatch.setattr(trial, "_retrain", lambda *args, **kwargs: {})
    settings = trial.preset_settings("quick", TINY)
    for params, report in [({"_name": "sparsemask"}, True), ({"_name": "sparsemask"}, False),
                           ({"_name": "rand_rule"}, True)]:
        entry = trial.parse_entry({"params": params, "seed": 0})
        trial._run_entry(entry, settings, tmp_path / entry.key, report=report, progress=False, log=lambda m: None)
    assert calls == [("apart", "sparsemask", steps.run_search), ("here", "sparsemask"), ("here", "rand_rule")]


# module-level: they run in the process _search_in_own_process starts (pickled by name)
def _like_an_in_process_experiment(log, parameter_id):
    """What NNI's sequential engine does to NNI's module state (its channel hands out its model as the current
    parameter), and a report under it; logs what it sees."""
    import os

    import nni
    from nni.runtime.trial_command_channel import TrialCommandChannel, set_default_trial_command_channel

    class EngineChannel(TrialCommandChannel):
        def receive_parameter(self):
            return {"parameter_id": parameter_id, "parameter_source": "engine", "parameters": {"model": 1},
                    "parameter_index": 0}

        def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002
            log(f"engine got {type} {value} for parameter {parameter_id}")

    log("environment: " + ", ".join(f"{name}={os.environ.get(name)}" for name in TRIAL_ENV))
    set_default_trial_command_channel(EngineChannel())
    nni.get_next_parameter()
    nni.report_intermediate_result(0.5)
    log(f"current parameter: {nni.get_current_parameter()}")


def _fails(log, message):
    log("started")
    raise ValueError(message)


def _dies(log):
    import os
    os._exit(5)


def test_search_apart_leaves_the_trial_state_alone(monkeypatch):
    import nni
    import nni.runtime.trial_command_channel as channels
    import nni.trial
    from nni.runtime.trial_command_channel import TrialCommandChannel

    from nni_sparsemask.comparison import trial

    class TrialChannel(TrialCommandChannel):  # stands for the trial's channel to NNI's manager
        sent = []

        def receive_parameter(self):
            return {"parameter_id": 7, "parameter_source": "algorithm", "parameters": {"entry": 1},
                    "parameter_index": 0}

        def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002
            self.sent.append((type, parameter_id, sequence, value))

    monkeypatch.setattr(channels, "_channel", None)  # NNI's state as it was after the test
    monkeypatch.setattr(nni.trial, "_params", None)
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
    _trial_environment(monkeypatch, inside=True)
    channels.set_default_trial_command_channel(TrialChannel())
    assert nni.get_next_parameter() == {"entry": 1}

    lines = []
    trial._search_in_own_process(_like_an_in_process_experiment, {"parameter_id": 0}, lines.append)
    assert lines == ["environment: NNI_PLATFORM=None, NNI_EXP_ID=None, NNI_TRIAL_JOB_ID=None",
                     "engine got PERIODICAL 0.5 for parameter 0", "current parameter: {'model': 1}"]
    # here: the trial's parameter, its environment, and its reports carry its parameter id from sequence 0
    assert nni.get_current_parameter() == {"entry": 1}
    assert all(os.environ[name] == value for name, value in TRIAL_ENV.items())
    nni.report_intermediate_result(0.6)
    nni.report_final_result(0.6)
    assert TrialChannel.sent == [("PERIODICAL", 7, 0, 0.6), ("FINAL", 7, 0, 0.6)]


def test_search_apart_raises_what_the_search_raised():
    from nni_sparsemask.comparison import trial

    lines = []
    with pytest.raises(ValueError, match="^bad strategy argument$") as info:
        trial._search_in_own_process(_fails, {"message": "bad strategy argument"}, lines.append)
    assert lines == ["started"]
    assert "in _fails" in str(info.value.__cause__)  # the traceback of the search's process
    with pytest.raises(RuntimeError, match=r"ended without a result \(exit code 5\)"):
        trial._search_in_own_process(_dies, {}, lines.append)


# ------------------------------------------------------------------------------------------------ checks
def test_config_errors_are_clear_and_early(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment config not found"):
        compare.load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("trialCommand: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        compare.load_config(bad)
    path = write_config(tmp_path, trialConcurrencyy=2)
    with pytest.raises(ValueError, match=r"not a valid NNI experiment config: .*field\(s\) trialconcurrencyy"):
        compare.load_config(path)
    path = write_config(tmp_path, trialConcurrency=0)
    with pytest.raises(ValueError, match=r"invalid NNI experiment config: .*trial_concurrency > 0"):
        compare.load_config(path)
    path = write_config(tmp_path, decoders=("fcn", "nope"))
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known: strategies"):
        compare.plan_comparison(compare.load_config(path), str(path))
    path = write_config(tmp_path, trial_command="python -m nni_sparsemask.comparison.trial --preset huge")
    with pytest.raises(ValueError, match="trial settings: unknown preset 'huge'"):
        compare.plan_comparison(compare.load_config(path), str(path))
    path = write_config(tmp_path, trial_command="python -m nni_sparsemask.comparison.trial --bogus 1")
    with pytest.raises(ValueError, match="unrecognized arguments: --bogus"):
        compare.plan_comparison(compare.load_config(path), str(path))
    with pytest.raises(ValueError, match="give the experiment CONFIG"):
        compare.run_compare(None)


def test_nothing_is_launched_for_a_refused_start(tmp_path):
    plan = compare.plan_comparison(compare.load_config(EXPERIMENTS / "kubeflow.yml"), "kubeflow.yml")
    with pytest.raises(ValueError, match="--expose"):
        manager.start_experiment(plan, free_port())
    local = compare.plan_comparison(compare.load_config(write_config(tmp_path)))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match=f"port {busy.getsockname()[1]} is in use"):
            manager.start_experiment(local, busy.getsockname()[1])
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("an earlier report")
    with pytest.raises(FileExistsError, match="report.md exists"):
        compare.run_compare(write_config(tmp_path), results=report, port=free_port())
    assert (report / "report.md").read_text() == "an earlier report"
    assert not (tmp_path / "nni").exists()  # no experiment was created
    # --retime needs the run directories on this machine: refused for a cluster config before anything starts
    with pytest.raises(ValueError, match="--retime needs the run directories on this machine.*kubeflow experiment"):
        compare.run_compare(EXPERIMENTS / "kubeflow.yml", retime=True, port=free_port())


def test_cli_registration():
    import argparse

    parser = argparse.ArgumentParser(prog="sparsemask")
    compare.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", "experiments/comparison-quick.yml", "--port", "9000", "--results", "r"])
    assert (args.config, args.port, args.results, args.resume, args.expose) == \
           ("experiments/comparison-quick.yml", 9000, "r", None, False)
    assert args.func is compare._command
    args = parser.parse_args(["compare", "--resume", "abc123"])
    assert args.config is None and args.resume == "abc123"


# ------------------------------------------------------------------------------------------------ a real manager
def _other_addresses() -> list[tuple[int, str]]:
    import psutil

    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6) and not manager.is_loopback(a.address) \
                    and not a.address.lower().startswith("fe80"):
                out.append((a.family, a.address))
    return out


def _refused(family: int, address: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((address, port))
        except OSError:
            return True
        return False


def test_local_manager_answers_on_loopback_only_and_stops_by_pid(tmp_path):
    import psutil

    path = write_config(tmp_path, trial_command="sleep 30")  # the manager is under test here, not the trials
    plan = compare.plan_comparison(compare.load_config(path), str(path))
    port = free_port()
    experiment = manager.start_experiment(plan, port, log=lambda m: None)
    try:
        pid = manager.manager_pid(experiment)
        assert pid is not None and psutil.Process(pid).name().startswith("node")
        listening = manager.listening_addresses(pid)
        assert ("127.0.0.1", port) in listening
        assert all(manager.is_loopback(ip) for ip, _ in listening), listening
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/check-status", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["status"] in ("RUNNING", "INITIALIZED")
        others = _other_addresses()
        for family, address in others:
            assert _refused(family, address, port), f"port {port} answers on {address}"
    finally:
        manager.stop_experiment(experiment, log=lambda m: None)
        forget(experiment.id)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert _refused(socket.AF_INET, "127.0.0.1", port)


# ------------------------------------------------------------------------------------------------ stop + resume
def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"compare exited ({proc.returncode}) before {what}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_stop_midway_then_resume_finishes_the_grid_without_redoing_entries(tmp_path):
    decoders = ("fcn", "unet", "sparseacn", "fdn")
    path = write_config(tmp_path, decoders=decoders)
    runs, report, port = tmp_path / "runs", tmp_path / "report", free_port()
    # the fdn entry will fail: its directory holds a run with other settings (refused, never overwritten)
    poisoned = runs / "fdn_seed=0"
    poisoned.mkdir(parents=True)
    (poisoned / "config.json").write_text(json.dumps({"command": "comparison-entry", "settings": {"other": 1}}))
    log_file = tmp_path / "compare.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nni_sparsemask.comparison.compare", str(path), "--port", str(port),
                                 "--results", str(report), "--poll", "1"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
    try:
        first = runs / "fcn_seed=0" / "retrain" / "metrics.json"
        _wait_for(first.is_file, 300, "the first entry to finish", proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log_file.read_text()
    experiment_id = output.split("[compare] experiment ")[1].split()[0]
    assert f"sparsemask compare --resume {experiment_id}" in output
    assert _refused(socket.AF_INET, "127.0.0.1", port)  # the manager is gone
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/retrain/metrics.json")}
    assert first in finished and len(finished) < len(decoders) - 1

    lines = []
    try:
        status = compare.run_compare(resume=experiment_id, port=port, results=report, poll=1, log=lines.append)
    finally:
        forget(experiment_id)
    text = "\n".join(lines)
    assert status == 1, text  # a trial failed; the others went on
    done = sorted(p.parent.parent.name for p in runs.glob("*/retrain/metrics.json"))
    assert done == ["fcn_seed=0", "sparseacn_seed=0", "unet_seed=0"], text
    for p, stamp in finished.items():  # finished entries were not run again
        assert p.stat().st_mtime_ns == stamp
    failed = [line for line in lines if line.startswith("[compare] failed trial")]
    assert failed and all('"fdn"' in line for line in failed), text
    assert all("was run with other settings" in line and "(log: " in line for line in failed), text
    assert json.loads((poisoned / "config.json").read_text())["settings"] == {"other": 1}  # not overwritten
    results = (report / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 3  # one row per finished entry, even for an entry NNI handed out twice
    assert (report / "report.md").is_file()
    assert _refused(socket.AF_INET, "127.0.0.1", port)


# ------------------------------------------------------------------------------------------------ --stop
def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


def _identity(pid: int) -> dict:
    import psutil
    return {"pid": pid, "started": psutil.Process(pid).create_time()}


def test_stop_ends_recorded_processes_and_only_those(tmp_path):
    """The record names a compare, a manager and a trial (sleeping stand-ins), and this very process with another
    start time (its pid reused since): the three are ended, this process is left alone."""
    compare_p, manager_p, trial_p = _sleeper(), _sleeper(), _sleeper()
    try:
        stale = dict(_identity(os.getpid()), started=_identity(os.getpid())["started"] - 1000)
        folder = tmp_path / "nni" / "abcd1234"
        folder.mkdir(parents=True)
        (folder / manager.PROCESS_RECORD).write_text(json.dumps({
            "experiment": "abcd1234", "port": free_port(), "compare": _identity(compare_p.pid),
            "manager": _identity(manager_p.pid), "trials": [_identity(trial_p.pid), stale]}))
        lines = []
        assert compare.stop_compare("abcd1234", tmp_path / "nni", log=lines.append) == 0
        for p in (compare_p, manager_p, trial_p):
            assert p.wait(timeout=30) is not None
        text = "\n".join(lines)
        assert f"compare process {compare_p.pid}" in text and f"manager (pid {manager_p.pid})" in text, text
        assert "sparsemask compare --resume abcd1234" in text
        lines.clear()  # a second stop finds nothing running
        compare.stop_compare("abcd1234", tmp_path / "nni", log=lines.append)
        assert "nothing of experiment abcd1234 was still running" in lines[0]
    finally:
        for p in (compare_p, manager_p, trial_p):
            if p.poll() is None:
                p.kill()
                p.wait()
    with pytest.raises(ValueError, match="not started by `sparsemask compare` here"):
        compare.stop_compare("nosuchid", tmp_path / "nni")


def test_stop_takes_only_an_id(capsys):
    from nni_sparsemask.cli import main
    assert main(["compare", "some.yml", "--stop", "abc"]) == 2
    assert "--stop ID takes no CONFIG" in capsys.readouterr().err


def test_stop_ends_the_manager_and_trials_of_a_killed_compare(tmp_path):
    """A real compare (trials: `sleep 300`) is killed with SIGKILL, leaving NNI's manager and its trial running;
    `sparsemask compare --stop ID` ends both, by the pids the compare recorded, and NNI lists it as STOPPED."""
    import psutil

    from nni_sparsemask.cli import main

    path = write_config(tmp_path, trial_command="sleep 300")
    port = free_port()
    log_file = tmp_path / "compare.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nni_sparsemask.comparison.compare", str(path), "--port",
                                 str(port), "--poll", "1"], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=tmp_path)
    experiment_id = None
    try:
        _wait_for(lambda: "[compare] experiment " in log_file.read_text(), 120, "the start", proc)
        experiment_id = log_file.read_text().split("[compare] experiment ")[1].split()[0]
        record_file = tmp_path / "nni" / experiment_id / manager.PROCESS_RECORD

        def trial_recorded() -> bool:
            record = json.loads(record_file.read_text()) if record_file.is_file() else {}
            return any(psutil.Process(t["pid"]).cmdline()[:1] == ["sleep"] for t in record.get("trials", [])
                       if psutil.pid_exists(t["pid"]))
        _wait_for(trial_recorded, 120, "a recorded trial", proc)
        proc.kill()  # the compare dies without stopping anything
        proc.wait(timeout=30)
        record = json.loads(record_file.read_text())
        node = psutil.Process(record["manager"]["pid"])
        sleeps = [psutil.Process(t["pid"]) for t in record["trials"]
                  if psutil.pid_exists(t["pid"]) and psutil.Process(t["pid"]).cmdline()[:1] == ["sleep"]]
        assert node.is_running() and sleeps and not _refused(socket.AF_INET, "127.0.0.1", port)

        assert main(["compare", "--stop", experiment_id]) == 0
        gone = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE  # noqa: E731
        assert gone(node) and all(gone(p) for p in sleeps)
        assert _refused(socket.AF_INET, "127.0.0.1", port)
        assert manager.manifest_entry(experiment_id)["status"] == "STOPPED"
    finally:
        if proc.poll() is None:
            proc.kill()
        if experiment_id is not None:
            with __import__("contextlib").suppress(Exception):
                manager.stop_recorded(experiment_id, tmp_path / "nni", log=lambda m: None)
            forget(experiment_id)
