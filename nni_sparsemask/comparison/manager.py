"""NNI's manager for ``sparsemask compare``: started on 127.0.0.1, checked, stopped by its own process id (the
report of a finished experiment needs no manager: ``analysis`` reads NNI's SQLite database).

NNI's manager (a Node process) has no authentication on its REST API and web UI, and ``app.listen(port)`` binds
every interface. On the ``local`` training service it therefore gets the preload ``loopback.js`` (``node
--require`` through ``NODE_OPTIONS``), and after the start its listening sockets are checked: anything off
loopback and it is stopped. Cluster training services need the manager reachable from the workers: only with
``expose``, unless the workers reach it on this machine's loopback (:func:`exposure_needed`: a loopback
``nniManagerIp`` with SSH reverse tunnels, or a ``remote`` machine list of this machine only).

What ``sparsemask compare`` started can be stopped later, also after the ``compare`` process itself was killed
(``sparsemask compare --stop ID``, :func:`stop_recorded`): it records the processes it is responsible for, each as
``(pid, start time)`` so that a pid the system has since reused is never signalled, in
``<experiment working directory>/<id>/`` :data:`PROCESS_RECORD`: its own, the manager's, and the manager's
descendants (the local trials) at every poll.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

__all__ = ["LOOPBACK_JS", "temporary_environ", "loopback_environment", "listening_addresses", "is_loopback",
           "remote_hosts", "loopback_workers", "exposure_needed", "pin_loopback_manager_ip", "manager_pid",
           "manifest_entry", "start_experiment", "stop_experiment", "nni_error_line", "PROCESS_RECORD",
           "record_processes", "read_record", "stop_recorded"]

LOOPBACK_JS = Path(__file__).with_name("loopback.js")
PROCESS_RECORD = "sparsemask-processes.json"
Log = Callable[[str], None]


def nni_error_line(err: BaseException) -> str:
    """One line for an error raised inside NNI's config classes (their bare ``assert``s have no message)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not text:
        frames = traceback.extract_tb(err.__traceback__)
        text = frames[-1].line if frames and frames[-1].line else type(err).__name__
    return f"{text}" if isinstance(err, (ValueError, TypeError)) else f"{type(err).__name__}: {text}"


@contextlib.contextmanager
def temporary_environ(**changes: Optional[str]) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the block: what the manager's process inherits."""
    def apply(values: dict[str, Optional[str]]) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    old = {k: os.environ.get(k) for k in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(old)


def loopback_environment() -> dict[str, str]:
    """``NODE_OPTIONS`` that make a Node process (NNI's manager) listen on 127.0.0.1 only (see ``loopback.js``)."""
    if not LOOPBACK_JS.is_file():
        raise FileNotFoundError(f"{LOOPBACK_JS} is missing from the installed package: reinstall nni-sparsemask "
                                "(it keeps NNI's manager on 127.0.0.1)")
    preload = f'--require "{LOOPBACK_JS}"'
    current = os.environ.get("NODE_OPTIONS", "").strip()
    return {"NODE_OPTIONS": f"{current} {preload}".strip()}


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """``(ip, port)`` of every TCP socket process ``pid`` listens on."""
    import psutil

    proc = psutil.Process(pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
    return sorted({(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN})


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


def _manager_ip(config: Any) -> str:
    """``nniManagerIp`` of ``config`` (root or training service), '' when not set."""
    ts = config.training_service
    for source in ([config] + (ts if isinstance(ts, list) else [ts])):
        value = getattr(source, "nni_manager_ip", None)
        if isinstance(value, str) and value:
            return value
    return ""


def remote_hosts(config: Any) -> list[str]:
    """The ``host`` of every machine of the ``remote`` training service(s) of ``config`` ([] for other platforms)."""
    ts = config.training_service
    hosts = []
    for service in (ts if isinstance(ts, list) else [ts]):
        if getattr(service, "platform", None) == "remote":
            hosts += [str(machine.host) for machine in (getattr(service, "machine_list", None) or [])]
    return hosts


def loopback_workers(config: Any) -> bool:
    """True when ``config`` runs on the ``remote`` training service alone and every machine of its
    ``machineList`` is this machine (a loopback host: ``127.0.0.1``, ``::1``, ``localhost``)."""
    ts = config.training_service
    if isinstance(ts, list) or getattr(ts, "platform", None) != "remote":
        return False
    hosts = remote_hosts(config)
    return bool(hosts) and all(is_loopback(host) for host in hosts)


def exposure_needed(config: Any, port: int = 8080) -> Optional[str]:
    """None when NNI's manager of ``config`` can stay on 127.0.0.1 (no ``--expose``), else why it cannot (one line).

    It can on the ``local`` training service; with a loopback ``nniManagerIp`` (the workers come through SSH reverse
    tunnels); and on ``remote`` when every machine of ``machineList`` is this machine (the trial keepers connect to
    ``nniManagerIp``, which must then be unset or a loopback address). Everything else needs ``--expose``.
    """
    ts = config.training_service
    platform = "hybrid" if isinstance(ts, list) else getattr(ts, "platform", None)
    if platform == "local":
        return None
    ip = _manager_ip(config)
    if ip and is_loopback(ip):
        return None
    if loopback_workers(config):
        if not ip:
            return None
        return (f"every machine of machineList is this machine, but nniManagerIp is {ip}: NNI's manager stays on "
                "127.0.0.1, where the workers would not find it at that address; set nniManagerIp: 127.0.0.1 (or "
                "leave it out), or pass --expose")
    return (f"training service {platform!r}: the workers must reach NNI's manager, which then listens on every "
            f"interface of this machine (ports {port} and {port + 1}: REST API and web UI without authentication); "
            "pass --expose to accept that, behind a firewall, or give nniManagerIp: 127.0.0.1 with SSH reverse "
            "tunnels from the workers (experiments/README.md)")


def pin_loopback_manager_ip(config: Any) -> bool:
    """Set ``nniManagerIp: 127.0.0.1`` on a ``remote`` ``config`` whose machines are all this machine and that sets
    no ``nniManagerIp`` (NNI would hand the workers ``localhost``, which may resolve to ``::1``, where the manager
    does not listen). Returns whether it was set."""
    if loopback_workers(config) and not _manager_ip(config):
        config.nni_manager_ip = "127.0.0.1"
        return True
    return False


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _HidePortalUrls(logging.Filter):
    """NNI prints the web UI on every interface's address; on loopback only that would be wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Web portal URLs")


def manifest_entry(experiment_id: str) -> Optional[dict[str, Any]]:
    from nni.tools.nnictl.config_utils import Experiments
    from nni.tools.nnictl.nnictl_utils import update_experiment

    update_experiment()  # marks experiments whose manager died as STOPPED
    entry = Experiments().get_all_experiments().get(experiment_id)
    return entry if isinstance(entry, dict) else None


def manager_pid(experiment: Any) -> Optional[int]:
    """The pid of the manager process this very ``experiment`` object launched (its Popen), None when none runs.

    Never a pid read back from NNI's experiment list: that one may have been reused by another process since.
    """
    proc = getattr(experiment, "_proc", None)
    return int(proc.pid) if proc is not None and getattr(proc, "pid", None) else None


def start_experiment(plan: Any, port: int = 8080, *, resume: Optional[str] = None, expose: bool = False,
                     log: Log = print) -> Any:
    """Start (or ``resume``) the experiment of ``plan`` on ``port``; returns the running ``nni.experiment.Experiment``.

    Without ``expose`` the manager listens on 127.0.0.1 only (checked; otherwise it is stopped and a
    ``RuntimeError`` raised): on ``local``, and on the other training services when the workers reach it there
    (:func:`exposure_needed`); the others need ``expose``.
    """
    from nni.experiment import Experiment

    if isinstance(port, bool) or not isinstance(port, int) or not 1024 < port < 65535:
        raise ValueError(f"--port must be an integer in (1024, 65535), got {port!r}")
    loopback = not expose
    refusal = exposure_needed(plan.config, port) if loopback else None
    if refusal is not None:
        raise ValueError(refusal)
    ports = [port] if plan.platform == "local" else [port, port + 1]
    for p in ports:
        if _port_in_use(p):
            raise ValueError(f"port {p} is in use (another NNI manager? see `nnictl experiment list`); pass --port")
    env: dict[str, Optional[str]] = {}
    if plan.platform == "local":
        # trials run `python ...`: make it this interpreter (the one with nni_sparsemask installed)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if loopback:
        env.update(loopback_environment())
    else:
        log(f"[compare] WARNING: --expose: NNI's manager listens on every interface, ports {', '.join(map(str, ports))}"
            " (REST API and web UI, no authentication): keep them behind a firewall or an SSH tunnel")
    nni_logger = logging.getLogger("nni.experiment")
    portal_filter = _HidePortalUrls()
    if loopback:
        nni_logger.addFilter(portal_filter)
    experiment = Experiment(None, id=resume) if resume else Experiment(plan.config)
    try:
        with temporary_environ(**env):
            if resume:
                experiment.resume(port=port, wait_completion=False)
            else:
                experiment.start(port=port)
    except BaseException as err:  # a failed start, or Ctrl-C during it: no manager is left behind
        with contextlib.suppress(Exception):
            stop_experiment(experiment, log=lambda s: None)
        if isinstance(err, Exception):
            raise RuntimeError(f"NNI could not start the experiment: {nni_error_line(err)}") from None
        raise
    finally:
        nni_logger.removeFilter(portal_filter)
    if experiment.port is None:  # Experiment.resume swallows a KeyboardInterrupt during the start
        stop_experiment(experiment, log=lambda s: None)
        raise KeyboardInterrupt
    pid = manager_pid(experiment)
    if loopback:
        exposed = [f"{ip}:{p}" for ip, p in listening_addresses(pid) if not is_loopback(ip)] if pid else ["?"]
        if exposed:
            stop_experiment(experiment, log=log)
            raise RuntimeError(f"NNI's manager (pid {pid}) listened on {', '.join(exposed)}, not only on 127.0.0.1; "
                               "it was stopped. Is NODE_OPTIONS honoured by this Node (nni_node/node)?")
    return experiment


def stop_experiment(experiment: Any, log: Log = print) -> None:
    """Stop the manager of ``experiment`` (NNI's REST stop, then its own process by pid if still alive)."""
    import psutil

    pid = manager_pid(experiment)
    proc = None
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
    with contextlib.suppress(Exception):
        experiment.stop()  # DELETE /experiment, waits for the process; kills it by pid when that fails
    if proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        log(f"[compare] NNI manager pid {pid} still running: terminating it")
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


# ------------------------------------------------------------------------------------------------ recorded processes
def _identity(proc: Any) -> dict[str, Any]:
    return {"pid": int(proc.pid), "started": float(proc.create_time())}


def _alive(entry: Any) -> Any:
    """The ``psutil.Process`` recorded as ``entry`` (``{"pid", "started"}``) if it still runs, else None (a pid now
    held by another process, started at another time, is not it)."""
    import psutil

    if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
        return None
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - float(entry.get("started", -1))) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, TypeError, ValueError):
        return None


def _experiment_dir(experiment: Any) -> Optional[Path]:
    root = getattr(getattr(experiment, "config", None), "experiment_working_directory", None)
    experiment_id = getattr(experiment, "id", None)
    if not root or not experiment_id:
        return None
    return Path(str(root)).expanduser() / str(experiment_id)


def record_processes(experiment: Any, compare_pid: Optional[int] = None) -> Optional[Path]:
    """Write (or refresh) the record of what ``experiment`` runs: the manager this object started, its live
    descendants (trials, NNI's dispatcher) added to those recorded before, and ``compare_pid`` (given once, at the
    start). Returns the record's path, None when there is nothing to record; never raises (a record that cannot be
    written only means ``--stop`` falls back to ``nnictl stop``)."""
    import psutil

    with contextlib.suppress(Exception):
        folder, pid = _experiment_dir(experiment), manager_pid(experiment)
        if folder is None or pid is None:
            return None
        path = folder / PROCESS_RECORD
        old = read_record(path) if path.is_file() else {}
        manager = psutil.Process(pid)
        record = {"experiment": str(experiment.id), "port": getattr(experiment, "port", None),
                  "manager": _identity(manager),
                  "compare": _identity(psutil.Process(compare_pid)) if compare_pid else old.get("compare")}
        if old.get("manager") != record["manager"]:
            old = {}  # another start (a --resume): the earlier trials are not this manager's
        trials = [t for t in old.get("trials", []) if _alive(t) is not None]
        for child in manager.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if all(t["pid"] != child.pid for t in trials):
                    trials.append(_identity(child))
        record["trials"] = trials
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return path
    return None


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); stop the experiment with `nnictl stop`") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a process record; stop the experiment with `nnictl stop`")
    return record


def _record_path(experiment_id: str, experiments_dir: Optional[str | Path]) -> Path:
    if experiments_dir is None:
        entry = manifest_entry(experiment_id)
        experiments_dir = (entry or {}).get("logDir") or Path.home() / "nni-experiments"
    path = Path(str(experiments_dir)).expanduser() / experiment_id / PROCESS_RECORD
    if not path.is_file():
        raise ValueError(f"no processes of experiment {experiment_id!r} recorded at {path}: it was not started by "
                         f"`sparsemask compare` here (`nnictl stop {experiment_id}` stops NNI's manager)")
    return path


def _rest_stop(port: Any) -> bool:
    """Ask the manager on 127.0.0.1:``port`` to stop (it stops its trials and exits), as NNI's own stop does."""
    if not isinstance(port, int):
        return False
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/nni/experiment", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except Exception:
        return False


def _running(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_ended(procs: list[Any], timeout: float) -> list[Any]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; returns those still running. A zombie has ended: its
    parent (e.g. the shell or test that started ``compare``) reaps it when it gets to it, which may be after this
    returns."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    return alive


def _end(procs: list[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, to every process of ``procs`` still running."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = _wait_ended(procs, timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_ended(alive, timeout)


def stop_recorded(experiment_id: str, experiments_dir: Optional[str | Path] = None, log: Log = print,
                  grace: float = 60.0) -> int:
    """Stop what ``sparsemask compare`` recorded for ``experiment_id``: first the ``compare`` process if it still
    runs (SIGTERM: it stops its experiment itself and prints how to resume), then the manager (NNI's REST stop,
    which ends its trials; SIGTERM / SIGKILL by pid when it does not exit) and every recorded or descendant process
    still running. Only processes whose pid and start time match the record are signalled. Returns how many were
    still running."""
    import psutil

    path = _record_path(experiment_id, experiments_dir)
    record = read_record(path)
    running = 0
    compare_proc = _alive(record.get("compare"))
    if compare_proc is not None and compare_proc.pid != os.getpid():
        running += 1
        log(f"[compare] stopping the compare process {compare_proc.pid} of experiment {experiment_id}")
        _end([compare_proc], grace)
    manager = _alive(record.get("manager"))
    targets = [p for p in (_alive(t) for t in record.get("trials", [])) if p is not None]
    if manager is not None:
        with contextlib.suppress(psutil.Error):
            targets += manager.children(recursive=True)
    for proc in list(targets):
        with contextlib.suppress(psutil.Error):
            targets += proc.children(recursive=True)
    targets = list({p.pid: p for p in targets if p.pid != os.getpid()}.values())
    if manager is not None:
        running += 1
        log(f"[compare] stopping NNI's manager (pid {manager.pid}) of experiment {experiment_id}")
        if _rest_stop(record.get("port")):
            _wait_ended([manager], min(grace, 30.0))
        _end([manager], grace)
    left = [p for p in targets if _running(p)]
    if left:
        running += len(left)
        log(f"[compare] ending {len(left)} trial process(es) of experiment {experiment_id}: "
            f"{', '.join(str(p.pid) for p in left)}")
        _end(left, min(grace, 15.0))
    with contextlib.suppress(Exception):
        manifest_entry(experiment_id)  # NNI's experiment list marks the experiment STOPPED (its manager is gone)
    return running
