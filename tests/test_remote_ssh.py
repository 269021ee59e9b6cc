"""NNI's ``remote`` training service, run for real over SSH on this machine.

* The rule (default suite): ``sparsemask compare`` keeps NNI's manager on 127.0.0.1 without ``--expose`` for a
  ``remote`` config whose machines are all this machine, and gives such a config ``nniManagerIp: 127.0.0.1``.
* The slow test starts its own ``sshd`` on a free port of 127.0.0.1 (throw-away host and user keys, a config in
  the test's tmp dir, its sessions' ``HOME`` in the tmp dir too), writes a remote config like
  ``experiments/remote.yml`` with that machine, and runs ``sparsemask compare`` on it: the trials log in with the
  key (sshd's log), report intermediate and final results (NNI's database), the manager listens on 127.0.0.1
  only, and a trial stopped midway (``sparsemask compare --stop ID``) is finished by ``sparsemask compare
  --resume ID`` without redoing the finished entry.
"""
import getpass
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TRIAL_TINY

from nni_sparsemask.comparison import compare, manager

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
VENV_BIN = Path(sys.executable).parent  # the remote machine's pythonPath: this venv, with nni_sparsemask installed

pytestmark = pytest.mark.usefixtures("isolated_cache")


# ------------------------------------------------------------------------------------------------ configs
def write_remote_config(folder: Path, hosts=("127.0.0.1",), port: int = 22, key: Path | None = None,
                        settings: dict | None = None, **fields) -> Path:
    """A remote comparison config in ``folder``: fcn and sparsemask, each machine ``host:port`` with ``key``."""
    folder.mkdir(parents=True, exist_ok=True)
    if key is None:
        key = folder / "id_key"
        key.write_text("placeholder key: NNI checks that the file exists\n")
    space = {"params": {"_type": "choice", "_value": [
        {"_name": "fcn"}, {"_name": "sparsemask", "lambda_sparse": {"_type": "choice", "_value": [0.01]}}]},
        "seed": {"_type": "choice", "_value": [0]}}
    (folder / "space.json").write_text(json.dumps(space))
    command = (f"python -m nni_sparsemask.comparison.trial --results {folder / 'runs'} "
               f"--settings '{json.dumps(settings or TRIAL_TINY)}'")
    machines = [{"host": host, "port": port, "user": getpass.getuser(), "sshKeyFile": str(key),
                 "pythonPath": str(VENV_BIN)} for host in hosts]
    config = {"experimentName": "sparsemask-remote-test", "searchSpaceFile": "space.json", "trialCommand": command,
              "trialCodeDirectory": ".", "trialConcurrency": 1, "maxTrialDuration": "30m",
              "experimentWorkingDirectory": str(folder / "nni"), "tuner": {"name": "GridSearch"},
              "trainingService": {"platform": "remote", "reuseMode": False, "machineList": machines}, **fields}
    path = folder / "remote.yml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


# ------------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("hosts,ip,allowed", [
    (("127.0.0.1",), None, True),
    (("127.0.0.1", "localhost", "::1"), None, True),
    (("127.0.0.1",), "127.0.0.1", True),
    (("127.0.0.1", "10.0.0.12"), None, False),  # one machine elsewhere: it must reach the manager
    (("10.0.0.11",), None, False),
    (("10.0.0.11",), "127.0.0.1", True),  # SSH reverse tunnels from the workers
    (("127.0.0.1",), "10.0.0.1", False),  # the manager stays on loopback, the workers would look elsewhere
])
def test_remote_on_this_machine_needs_no_expose(tmp_path, hosts, ip, allowed):
    fields = {"nniManagerIp": ip} if ip else {}
    plan = compare.plan_comparison(compare.load_config(write_remote_config(tmp_path, hosts, **fields)))
    refusal = manager.exposure_needed(plan.config)
    assert (refusal is None) == allowed, refusal
    if not allowed:
        assert "--expose" in refusal and "\n" not in refusal
        with pytest.raises(ValueError, match="--expose"):
            manager.start_experiment(plan, 18080)  # refused before any manager starts
        assert not (tmp_path / "nni").exists()
    if ip is None:  # NNI would hand the workers "localhost" (maybe ::1, where the manager does not listen)
        assert (plan.config.nni_manager_ip == "127.0.0.1") == allowed


def test_exposure_rule_on_the_templates(tmp_path):
    for name in ("remote.yml", "kubeflow.yml", "frameworkcontroller.yml"):
        config = compare.load_config(EXPERIMENTS / name) if name != "remote.yml" else _remote_template(tmp_path)
        assert "--expose" in manager.exposure_needed(config)
    assert manager.exposure_needed(compare.load_config(EXPERIMENTS / "comparison-quick.yml")) is None
    assert manager.remote_hosts(_remote_template(tmp_path)) == ["10.0.0.11", "10.0.0.12"]


def _remote_template(tmp_path):
    from nni.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(str(EXPERIMENTS / "remote.yml"))
    key = tmp_path / "id_rsa"
    key.write_text("placeholder\n")
    for machine in config.training_service.machine_list:
        machine.ssh_key_file = str(key)
    return config


# ------------------------------------------------------------------------------------------------ sshd
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, **kwargs)


class Sshd:
    """An sshd of this test: 127.0.0.1:``port``, ``key`` logs in as this user, its log in ``log``."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, _free_port(), None
        self.key, self.log, self.home = folder / "user_key", folder / "sshd.log", folder / "remote-home"
        self.cache = folder / "remote-cache"

    def fingerprint(self) -> str:
        return _run("ssh-keygen", "-l", "-f", f"{self.key}.pub").stdout.split()[1]  # SHA256:...

    def accepted(self) -> list[str]:
        """sshd's log lines of logins with this test's key."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return [line for line in text.splitlines()
                if line.startswith(f"Accepted publickey for {getpass.getuser()} from 127.0.0.1 ")
                and self.fingerprint() in line]


def _sshd_binary() -> str | None:
    found = shutil.which("sshd")
    if found is None and Path("/usr/sbin/sshd").is_file():  # sbin is often not on a user's PATH
        found = "/usr/sbin/sshd"
    return found


def _leftovers(marker: str) -> list:
    """Processes whose command line names ``marker`` (this test's tmp dir): NNI's trial keeper and the trials,
    which NNI starts detached from sshd."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and any(marker in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def _end(procs: list) -> None:
    import psutil

    procs = list({p.pid: p for proc in procs for p in [proc, *_children(proc)]}.values())
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _children(proc) -> list:
    import psutil
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture
def sshd(tmp_path):
    """This test's sshd (skips when openssh-server is not installed); ended, with what it started, at teardown."""
    import psutil

    binary = _sshd_binary()
    if binary is None:
        pytest.skip("sshd not found (install openssh-server): the remote training service test needs an SSH server")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not found (install openssh-client)")
    server = Sshd(tmp_path / "sshd")
    server.folder.mkdir()
    server.home.mkdir()
    for key in (server.folder / "host_key", server.key):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sparsemask-test", "-f", key).check_returncode()
    authorized = server.folder / "authorized_keys"
    shutil.copy(f"{server.key}.pub", authorized)
    authorized.chmod(0o600)
    root = os.geteuid() == 0
    # the sessions' environment: HOME (where NNI's trial keeper keeps the remote side of the experiment) in the
    # tmp dir; pip offline (NNI's worker runs `pip install nni --upgrade` first: with no index it keeps the
    # installed NNI); one OpenMP thread; the trials' cache in the tmp dir
    session_env = {"HOME": server.home, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                   "OMP_NUM_THREADS": "1", "NNI_SPARSEMASK_CACHE_DIR": server.cache}
    config = server.folder / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {server.port}", f"HostKey {server.folder / 'host_key'}",
        f"AuthorizedKeysFile {authorized}", f"PidFile {server.folder / 'sshd.pid'}", "StrictModes no",
        "UsePAM no", f"PermitRootLogin {'prohibit-password' if root else 'no'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "Subsystem sftp internal-sftp", "LogLevel INFO",
        "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()), ""]))
    check = _run(binary, "-t", "-f", config)
    missing = re.search(r"Missing privilege separation directory: (\S+)", check.stderr)
    if missing and root:  # what the distribution's service unit creates before starting sshd
        Path(missing.group(1)).mkdir(mode=0o755, parents=True, exist_ok=True)
        check = _run(binary, "-t", "-f", config)
    if check.returncode != 0:
        pytest.skip(f"sshd refuses this test's config: {check.stderr.strip().splitlines()[-1:]}")
    with open(server.log, "wb") as log:
        server.proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while "Server listening" not in server.log.read_text(errors="replace"):
            if server.proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"sshd did not start: {server.log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield server
    finally:
        listener = psutil.Process(server.proc.pid)
        _end(_children(listener) + _leftovers(str(tmp_path)))
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=15)


# ------------------------------------------------------------------------------------------------ the real run
def _compare(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "nni_sparsemask.comparison.compare", *args, "--poll", "1"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"compare exited ({proc.returncode}) before {what}:\n"
                                 f"{log.read_text() if log else ''}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text() if log else ''}")


def _experiment_id(log: Path) -> str | None:
    found = re.search(r"\[compare\] experiment (\w+) (started|resumed)", log.read_text())
    return found.group(1) if found else None


def _manager_listens_on_loopback_only(folder: Path, experiment_id: str, port: int) -> None:
    record = json.loads((folder / "nni" / experiment_id / manager.PROCESS_RECORD).read_text())
    listening = manager.listening_addresses(record["manager"]["pid"])
    assert ("127.0.0.1", port) in listening, listening
    assert all(manager.is_loopback(ip) for ip, _ in listening), listening


def _trial_processes(runs: Path) -> list:
    return [p for p in _leftovers(str(runs)) if "nni_sparsemask.comparison.trial" in " ".join(p.cmdline())]


def _metrics(database: Path) -> dict[str, dict[str, int]]:
    """``{trial id: {"PERIODICAL": n, "FINAL": n}}`` from NNI's database (read-only)."""
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT trialJobId, type, COUNT(*) FROM MetricData GROUP BY trialJobId, type")
        out: dict[str, dict[str, int]] = {}
        for trial_id, kind, count in rows:
            out.setdefault(trial_id, {})[kind] = count
        return out
    finally:
        connection.close()


@pytest.mark.slow
def test_compare_over_ssh_stop_midway_and_resume(sshd, tmp_path):
    import psutil

    from nni_sparsemask.analysis.nni_db import find_database, read_trials

    t0 = time.time()
    folder = tmp_path / "experiment"
    settings = {**TRIAL_TINY, "search_epochs": 3, "retrain_epochs": 2}  # the sparsemask trial runs a while
    path = write_remote_config(folder, port=sshd.port, key=sshd.key, settings=settings)  # no nniManagerIp, no --expose
    runs, report, port = folder / "runs", folder / "report", _free_port()
    fcn_done = runs / "fcn_seed=0" / "retrain" / "metrics.json"
    sparse = runs / "sparsemask_lambda_sparse=0.01_threshold=0.001_seed=0"
    first_log, resume_log = folder / "compare.log", folder / "resume.log"
    proc = _compare(str(path), "--port", str(port), "--results", str(report), cwd=folder, log=first_log)
    experiment_id = None
    try:
        experiment_id = _wait_for(lambda: _experiment_id(first_log), 120, "the start", proc, first_log)
        assert "--expose" not in first_log.read_text() and "loopback only" in first_log.read_text()
        _manager_listens_on_loopback_only(folder, experiment_id, port)
        # the fcn entry finishes, then the sparsemask trial is stopped midway (its search running)
        _wait_for(fcn_done.is_file, 300, "the fcn entry to finish", proc, first_log)
        running = _wait_for(lambda: sparse.is_dir() and _trial_processes(runs), 300, "the sparsemask trial",
                            proc, first_log)
        assert not (sparse / "retrain" / "metrics.json").exists()
        stages = [("started, fcn done, sparsemask running", time.time() - t0)]
        stopped = subprocess.run([sys.executable, "-m", "nni_sparsemask.comparison.compare", "--stop", experiment_id],
                                 capture_output=True, text=True, timeout=180)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        stages.append(("--stop returned", time.time() - t0))
        assert proc.wait(timeout=120) == 130, first_log.read_text()
        gone = psutil.wait_procs(running, timeout=60)[1] == []
        assert gone, f"trial processes left running after --stop: {[p.pid for p in running]}"
        stages.append(("stopped trial gone", time.time() - t0))
        assert not (sparse / "retrain" / "metrics.json").exists(), "the trial finished before it was stopped"
        fcn_stamp = fcn_done.stat().st_mtime_ns

        resumed = _compare("--resume", experiment_id, "--port", str(port), "--results", str(report), cwd=folder,
                           log=resume_log)
        try:
            assert resumed.wait(timeout=600) == 0, resume_log.read_text()
        finally:
            if resumed.poll() is None:
                resumed.kill()
        stages.append(("resumed and done", time.time() - t0))
        text = resume_log.read_text()
        assert f"experiment {experiment_id} resumed" in text and "--expose" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
        if experiment_id is not None:
            with __import__("contextlib").suppress(Exception):
                manager.stop_recorded(experiment_id, folder / "nni", log=lambda m: None)
            compare_forget(experiment_id)

    # the stopped entry finished on resume; the finished one was not run again
    assert (sparse / "retrain" / "metrics.json").is_file() and (sparse / "search" / "connectivity.json").is_file()
    assert fcn_done.stat().st_mtime_ns == fcn_stamp
    assert len((report / "results.csv").read_text().splitlines()) == 1 + 2
    # the trials reported intermediate and final results to NNI's manager over the SSH workers' channel
    database = find_database(experiment_id, folder / "nni")
    finals = read_trials(database)
    # GridSearch may hand the stopped entry out again beside the resumed trial: run once, the other trial reuses it
    assert {t.parameter["params"]["_name"] for t in finals} == {"fcn", "sparsemask"}
    assert len({t.value["run_dir"] for t in finals}) == 2
    assert all(0 <= t.value["default"] <= 1 and Path(t.value["run_dir"]).is_dir() for t in finals)
    metrics = _metrics(database)
    trained = {t.parameter["params"]["_name"]: t.trialJobId for t in finals if not t.value["reused"]}
    assert set(trained) == {"fcn", "sparsemask"}, finals
    assert all(metrics[i].get("PERIODICAL", 0) >= 2 and metrics[i]["FINAL"] == 1 for i in trained.values()), metrics
    # ... and ran through this test's sshd: logins with its key, each trial's directory on the remote side
    assert len(sshd.accepted()) >= 2, sshd.log.read_text()  # the start and the resume
    remote = sshd.home / "nni-experiments" / experiment_id / "environments" / "remote-worker1"
    for trial_id in metrics:
        assert (remote / "trials" / trial_id / "trial.log").is_file(), trial_id
    assert sorted(p.name for p in remote.iterdir() if p.name.startswith("trial_keeper")) == \
        ["trial_keeper", "trial_keeper_1"]  # one trial keeper per start
    assert _trial_processes(runs) == []
    print("remote over SSH: " + ", ".join(f"{what} {at:.0f} s" for what, at in stages))


def compare_forget(experiment_id: str) -> None:
    """Remove a test experiment from NNI's experiment list (~/nni-experiments/.experiment)."""
    from nni.tools.nnictl.config_utils import Experiments
    Experiments().remove_experiment(experiment_id)
