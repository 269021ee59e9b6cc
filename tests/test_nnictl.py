"""``nnictl`` from the project's venv: a 2-trial experiment runs through ``nnictl create`` and ends with
``nnictl stop``, its manager on 127.0.0.1 (the project's loopback preload), and the manager process is gone after."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nni_sparsemask.comparison import manager

NNICTL = Path(sys.executable).with_name("nnictl")

TRIAL = """
import nni

params = nni.get_next_parameter()
nni.report_final_result(float(params["x"]) / 10)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nnictl(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(NNICTL), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _trials(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/trial-jobs", timeout=10) as resp:
        return json.loads(resp.read())


def _final(trial: dict) -> float:
    data = json.loads(trial["finalMetricData"][0]["data"])
    return json.loads(data) if isinstance(data, str) else data  # NNI encodes the result once or twice


def _gone(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_two_trials_through_nnictl_create_and_stop(tmp_path):
    from nni.tools.nnictl.config_utils import Experiments

    (tmp_path / "trial.py").write_text(TRIAL)
    (tmp_path / "space.json").write_text(json.dumps({"x": {"_type": "choice", "_value": [1, 2]}}))
    config = {"experimentName": "nnictl-test", "searchSpaceFile": "space.json",
              "trialCommand": f"{sys.executable} trial.py", "trialCodeDirectory": ".", "trialConcurrency": 2,
              "maxTrialNumber": 2, "experimentWorkingDirectory": str(tmp_path / "nni"),
              "tuner": {"name": "GridSearch"}, "trainingService": {"platform": "local"}}
    (tmp_path / "config.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    port = _free_port()
    env = dict(os.environ, **manager.loopback_environment())  # the manager listens on 127.0.0.1 only
    env["PATH"] = os.pathsep.join([str(NNICTL.parent), env.get("PATH", "")])
    t0 = time.time()
    created = _nnictl("create", "--config", str(tmp_path / "config.yml"), "--port", str(port), env=env)
    output = created.stdout + created.stderr
    assert created.returncode == 0, output
    found = re.search(r"[Ee]xperiment [Ii][Dd][:\s]+([A-Za-z0-9]{8})", re.sub(r"\x1b\[[0-9;]*m", "", output))
    assert found, output
    experiment_id = found.group(1)
    pid = None
    try:
        pid = Experiments().get_all_experiments()[experiment_id]["pid"]
        listening = manager.listening_addresses(pid)
        assert ("127.0.0.1", port) in listening and all(manager.is_loopback(ip) for ip, _ in listening), listening
        deadline, trials = time.time() + 240, []
        while time.time() < deadline:
            trials = _trials(port)
            if len(trials) == 2 and all(t["status"] in ("SUCCEEDED", "FAILED") for t in trials):
                break
            time.sleep(1)
        assert sorted(t["status"] for t in trials) == ["SUCCEEDED", "SUCCEEDED"], trials
        assert sorted(_final(t) for t in trials) == [0.1, 0.2]
        listed = _nnictl("trial", "ls", experiment_id, env=env)
        assert listed.returncode == 0 and listed.stdout.count("SUCCEEDED") == 2, listed.stdout + listed.stderr
        stopped = _nnictl("stop", experiment_id, env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert _gone(pid)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing answers on the port any more
        print(f"nnictl create -> 2 trials -> nnictl stop: {time.time() - t0:.1f} s")
    finally:
        if pid is not None and not _gone(pid):
            _nnictl("stop", experiment_id, env=env)
        Experiments().remove_experiment(experiment_id)
