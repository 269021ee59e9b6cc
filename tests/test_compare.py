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
