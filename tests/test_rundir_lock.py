"""One writer per run directory: a second process is refused, a killed holder never blocks."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nni_sparsemask.run.rundir import LOCK_FILE, RunDir, RunDirBusy, read_json

# a process that takes the run directory and holds it until killed (or, with "exit", ends at once)
HOLDER = textwrap.dedent("""
    import sys, time
    from nni_sparsemask.run.rundir import RunDir
    run = RunDir(sys.argv[1], {"a": 1}, resume=True)
    run.write_json("progress.json", {"epoch": 3})
    print("locked", flush=True)
    if sys.argv[2] == "hold":
        time.sleep(120)
""")
# a process that tries to take the run directory once and says what happened
TRY = textwrap.dedent("""
    import sys
    from nni_sparsemask.run.rundir import RunDir, RunDirBusy
    try:
        RunDir(sys.argv[1], {"a": 1}, resume=True).close()
        print("acquired")
    except RunDirBusy as err:
        print("busy:", err)
""")


def _holder(path, mode="hold"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _try_from_another_process(path) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(path)], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


@pytest.fixture
def holder(tmp_path):
    proc = _holder(tmp_path / "run")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path, holder):
    run = tmp_path / "run"
    for kwargs in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(RunDirBusy) as err:
            RunDir(run, {"a": 1}, **kwargs)
        msg = str(err.value)
        assert "\n" not in msg and f"pid {holder.pid}" in msg and str(run) in msg, msg
        assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors as `sparsemask CMD: error: ...`
    # --overwrite deleted nothing of the live run
    assert read_json(run / "progress.json") == {"epoch": 3} and read_json(run / "config.json") == {"a": 1}
    assert _try_from_another_process(run).startswith(f"busy: run directory {run} is in use by another process "
                                                     f"(pid {holder.pid}")


def test_a_killed_holder_never_blocks(tmp_path, holder):
    run = tmp_path / "run"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert (run / LOCK_FILE).read_text().split()[0] == str(holder.pid)  # the stale pid is still written there
    rd = RunDir(run, {"a": 1}, resume=True)  # the kernel dropped the dead process's flock
    assert rd.resumed and (run / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    rd.close()
    rd = RunDir(run, {"a": 2}, overwrite=True)  # and overwriting it works too
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "config.json"]
    rd.close()


def test_a_holder_that_ends_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run, "exit")
    assert proc.wait(timeout=30) == 0
    assert (run / LOCK_FILE).read_text() == ""  # released at exit, the pid cleared
    assert _try_from_another_process(run) == "acquired"


def test_close_and_with_release_the_lock(tmp_path):
    run = tmp_path / "run"
    rd = RunDir(run, {"a": 1})
    assert rd.locked and _try_from_another_process(run).startswith("busy:")
    rd.close()
    rd.close()  # idempotent
    assert not rd.locked and _try_from_another_process(run) == "acquired"
    with RunDir(run, {"a": 1}, resume=True) as rd:
        assert _try_from_another_process(run).startswith(f"busy: run directory {run} is in use by another process "
                                                         f"(pid {os.getpid()}")
    assert _try_from_another_process(run) == "acquired"
    rd = RunDir(run, {"a": 1}, resume=True)
    del rd  # garbage collected: released
    assert _try_from_another_process(run) == "acquired"


def test_a_refused_open_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    RunDir(run, {"a": 1}).close()
    with pytest.raises(ValueError, match="another configuration"):
        RunDir(run, {"a": 2}, resume=True)
    assert _try_from_another_process(run) == "acquired"


def test_objects_of_one_process_share_the_lock(tmp_path):
    run = tmp_path / "run"
    first = RunDir(run, {"a": 1})
    second = RunDir(run, {"a": 1}, resume=True)  # the same command resuming in the same interpreter
    first.close()
    assert _try_from_another_process(run).startswith("busy:")  # still held by `second`
    second.close()
    assert _try_from_another_process(run) == "acquired"


def test_the_lock_file_does_not_make_a_directory_non_empty(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("999999999\nold command\n")  # left by a killed process
    with RunDir(run, {"a": 1}) as rd:
        assert not rd.resumed and read_json(run / "config.json") == {"a": 1}


def test_overwrite_refuses_while_another_process_holds_a_run_directory_inside(tmp_path):
    parent, sub = tmp_path / "demo", tmp_path / "demo" / "search"
    RunDir(parent, {"a": 1}).close()
    proc = _holder(sub)
    try:
        with pytest.raises(RunDirBusy, match=rf"cannot overwrite .*demo: the run directory .*search in it is in use "
                                             rf"by another process \(pid {proc.pid}"):
            RunDir(parent, {"a": 1}, overwrite=True)
        assert read_json(sub / "progress.json") == {"epoch": 3} and (parent / "config.json").is_file()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with RunDir(parent, {"a": 2}, overwrite=True):
        assert sorted(p.name for p in parent.iterdir()) == [LOCK_FILE, "config.json"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_shares_nor_drops_the_parents_lock(tmp_path):
    run = tmp_path / "run"
    rd = RunDir(run, {"a": 1})
    pid = os.fork()
    if pid == 0:  # the child: refused (its parent holds it), and its exit must not unlock the parent's lock
        code = 1
        try:
            RunDir(run, {"a": 1}, resume=True)
        except RunDirBusy as err:
            code = 0 if f"pid {os.getppid()}" in str(err) else 2
        finally:
            rd.close()  # what a child's clean-up would do
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _try_from_another_process(run).startswith(f"busy: run directory {run} is in use by another process "
                                                     f"(pid {os.getpid()}")
    rd.close()
