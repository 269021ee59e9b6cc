"""NNI's manager for ``sparsemask compare``: started on 127.0.0.1, checked, stopped by its own process id (the
report of a finished experiment needs no manager: ``analysis`` reads NNI's SQLite database).

NNI's manager (a Node process) has no authentication on its REST API and web UI, and ``app.listen(port)`` binds
every interface. On the ``local`` training service it therefore gets the preload ``loopback.js`` (``node
--require`` through ``NODE_OPTIONS``), and after the start its listening sockets are checked: anything off
loopback and it is stopped. Cluster training services need the manager reachable from the workers: only with
``expose``.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

__all__ = ["LOOPBACK_JS", "temporary_environ", "loopback_environment", "listening_addresses", "is_loopback",
           "manager_pid", "manifest_entry", "start_experiment", "stop_experiment", "nni_error_line"]

LOOPBACK_JS = Path(__file__).with_name("loopback.js")
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

    On ``local`` without ``expose`` the manager listens on 127.0.0.1 only (checked; otherwise it is stopped and a
    ``RuntimeError`` raised). Other training services need ``expose`` (the workers must reach the manager).
    """
    from nni.experiment import Experiment

    if isinstance(port, bool) or not isinstance(port, int) or not 1024 < port < 65535:
        raise ValueError(f"--port must be an integer in (1024, 65535), got {port!r}")
    loopback = not expose
    if plan.platform != "local" and loopback and not is_loopback(_manager_ip(plan.config)):
        raise ValueError(f"training service {plan.platform!r}: the workers must reach NNI's manager, which then "
                         f"listens on every interface of this machine (ports {port} and {port + 1}: REST API and web "
                         "UI without authentication); pass --expose to accept that, behind a firewall, or give "
                         "nniManagerIp: 127.0.0.1 with SSH reverse tunnels from the workers (experiments/README.md)")
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
