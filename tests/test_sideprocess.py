"""The demo's second process (``run.sideprocess``): when the CPU is split, a retraining run done there, a failure
there reported here with its log, and stopping it."""
import json

import pytest

from nni_sparsemask.run.config import DataConfig, ModelConfig, TrainConfig
from nni_sparsemask.run.sideprocess import SideProcess, cpu_split

MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=4)
DATA = DataConfig(image_size=32, train_scenes=16, val_scenes=4, batch_size=8)


@pytest.mark.parametrize("threads,accelerator,cuda,split", [
    (2, "auto", False, (1, 1)),
    (3, "cpu", False, (1, 2)),
    (8, "cpu", True, (4, 4)),      # training forced onto the CPU of a GPU machine
    (8, "auto", True, None),       # trains on the GPU: nothing to split
    (8, "gpu", False, None),
    (1, "cpu", False, None),       # one thread: nothing to share
])
def test_cpu_split(threads, accelerator, cuda, split):
    assert cpu_split(threads, accelerator, cuda) == split


def _job(tmp_path, name, **kwargs):
    args = dict(out=tmp_path / name, data=DATA, model=MODEL, train=TrainConfig(epochs=1, seed=0), fps_size=32,
                accelerator="cpu", fps_alone=False)
    return name, dict(args, **kwargs)


def test_a_retraining_run_in_the_second_process(tmp_path):
    log = tmp_path / "retrain.log"
    side = SideProcess([_job(tmp_path, "fcn", decoder="fcn")], 1, log).start()
    seconds = side.finish(log=lambda s: None)
    assert list(seconds) == ["fcn"] and seconds["fcn"] > 0
    metrics = json.loads((tmp_path / "fcn" / "metrics.json").read_text())
    assert metrics["fps_threads"] == 1  # the second process's share of the threads
    assert "another process trained" in metrics["fps_note"]
    assert "[retrain] fcn" in log.read_text()  # what it printed went to the log


def test_a_failure_in_the_second_process_is_raised_here_with_its_log(tmp_path):
    log = tmp_path / "retrain.log"
    side = SideProcess([_job(tmp_path, "bad", decoder="nope")], 1, log).start()
    with pytest.raises(RuntimeError, match=rf"retraining bad in the demo's second process failed \(ValueError: "
                                           rf"unknown decoder 'nope'.*{log}.*--resume"):
        side.finish(log=lambda s: None)
    assert "Traceback" in log.read_text()
    assert not (tmp_path / "bad").exists()


def test_stop_ends_the_second_process(tmp_path):
    side = SideProcess([_job(tmp_path, "fdn", decoder="fdn", train=TrainConfig(epochs=50))], 1,
                       tmp_path / "retrain.log").start()
    side.stop()
    assert not side._process.is_alive() and side._process.exitcode != 0
    side.stop()  # a second stop does nothing


_KILLED_PARENT = """
import sys, time
from pathlib import Path
from nni_sparsemask.run.config import DataConfig, ModelConfig, TrainConfig
from nni_sparsemask.run.sideprocess import SideProcess
out = Path(sys.argv[1])
model = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=4)
job = dict(out=out / "fdn", decoder="fdn", data=DataConfig(image_size=32, train_scenes=16, val_scenes=4, batch_size=8), model=model,
           train=TrainConfig(epochs=100000, seed=0), fps_size=32, accelerator="cpu", fps_alone=False)
side = SideProcess([("fdn", job)], 1, out / "retrain.log", poll_seconds=0.2).start()
(out / "pid").write_text(str(side._process.pid))
time.sleep(600)
"""


def test_the_second_process_ends_when_its_parent_is_killed(tmp_path):
    """A demo killed with SIGKILL cannot stop() its second process: the second process sees its parent gone and
    ends by itself, instead of training on alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, str(tmp_path)])
    try:
        deadline = time.time() + 120
        while not (tmp_path / "fdn" / "checkpoints").exists():  # the second process is training
            assert parent.poll() is None and time.time() < deadline, (tmp_path / "retrain.log").read_text()
            time.sleep(0.2)
        child = int((tmp_path / "pid").read_text())
        os.kill(child, 0)  # alive
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break  # gone (reaped by init once it exited)
        if _is_zombie(child):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the second process trained on after its parent was killed")


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
