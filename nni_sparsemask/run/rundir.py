"""Run directories: one per command, holding everything the report and the comparison read.

Layout (files appear as the command gets to them)::

    RUN/config.json        the typed config the command ran with (+ command name, package version)
    RUN/metrics.json       final numbers (mIoU, per-class IoU, params, FPS, ...)
    RUN/history.csv        one row per epoch
    RUN/connectivity.json  searched / used connectivity
    RUN/checkpoints/       resumable state
    RUN/*.png              figures

Nothing is lost silently: an existing non-empty directory is refused unless ``overwrite`` (then its contents are
removed first) or ``resume`` (then its config must equal the new one, and a finished run is left as it is). Files
are written atomically (temporary file + rename), so an interrupted write never leaves a half file.

One writer at a time: a ``RunDir`` holds an exclusive ``flock`` on ``RUN/.lock`` (which records the holder's pid
and command) from its creation until :meth:`RunDir.close`, the end of a ``with`` block, its garbage collection or
the end of the process. A second process that opens the directory to write (new, ``resume`` or ``overwrite``) is
refused with :class:`RunDirBusy`, naming the holder's pid; ``overwrite`` also refuses when another process holds a
run directory inside it. The kernel drops the lock when its process dies, so a killed run never blocks the next
one (the stale pid left in ``.lock`` is ignored). Within one process, ``RunDir`` objects of the same directory
share its lock (one command's phases, a resumed training in the same interpreter).
"""
from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RunDir", "RunDirBusy", "write_json_atomic", "read_json", "LOCK_FILE"]

FINISHED = "metrics.json"
LOCK_FILE = ".lock"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt JSON ({err}); delete it or re-run the command that wrote it") from None


class RunDirBusy(ValueError):
    """Another live process writes the run directory (a ``ValueError``: the command line prints it as an error)."""


# ------------------------------------------------------------------------------------------------ the lock
class _Held:
    """This process's lock of one run directory: the open ``.lock`` descriptor and how many ``RunDir`` share it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.count, self.pid = fd, 1, os.getpid()


_HELD: dict[str, _Held] = {}  # real path of the run directory -> its lock, in this process
_HELD_GUARD = threading.Lock()


def _holder(lock_file: Path) -> str:
    """``pid N (command)`` as the holder recorded it in ``lock_file``, for the refusal message."""
    try:
        lines = lock_file.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if not lines or not lines[0].strip().isdigit():
        return "pid unknown"
    command = " ".join(lines[1].split()) if len(lines) > 1 else ""
    command = command if len(command) <= 160 else command[:157] + "..."
    return f"pid {lines[0].strip()}" + (f": {command}" if command else "")


def _try_flock(lock_file: Path) -> int | None:
    """An open descriptor of ``lock_file`` holding its exclusive flock, or ``None`` when another holds it."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _busy(path: Path, lock_file: Path) -> RunDirBusy:
    return RunDirBusy(f"run directory {path} is in use by another process ({_holder(lock_file)}); wait for it to "
                      f"end or stop it, or choose another --out")


def _acquire(path: Path) -> str:
    """Lock run directory ``path`` (which exists) for this process; returns the key to :func:`_release` it."""
    key = os.path.realpath(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            return key
        lock_file = path / LOCK_FILE
        fd = _try_flock(lock_file)
        if fd is None:
            raise _busy(path, lock_file)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode(errors="replace"), 0)
        _HELD[key] = _Held(fd)  # (a forked child's inherited entry is replaced: the pid tells them apart)
        return key


def _release(key: str) -> None:
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[key]
        try:
            if held.pid == os.getpid():  # a forked child must not unlock its parent's lock (one open file)
                os.ftruncate(held.fd, 0)
                fcntl.flock(held.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(held.fd)


def _lock_nested(path: Path) -> list[int]:
    """Lock every run directory inside ``path`` (to delete them); refused while another writer holds one of them.

    Returns the descriptors holding those locks: close them once the directories are gone.
    """
    fds: list[int] = []
    try:
        for lock_file in sorted(path.rglob(LOCK_FILE)):
            sub = lock_file.parent
            if sub == path:
                continue
            held = _HELD.get(os.path.realpath(sub))
            if held is not None and held.pid == os.getpid():
                raise RunDirBusy(f"cannot overwrite {path}: this process still writes the run directory {sub} in it")
            fd = _try_flock(lock_file)
            if fd is None:
                raise RunDirBusy(f"cannot overwrite {path}: the run directory {sub} in it is in use by another "
                                 f"process ({_holder(lock_file)}); wait for it to end or stop it, or choose another "
                                 f"--out")
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


# ------------------------------------------------------------------------------------------------ run directory
class RunDir:
    """A command's output directory; see the module docstring for the rules.

    Holds the directory's lock until :meth:`close` (also a context manager; garbage collection and the end of the
    process release it as well).
    """

    def __init__(self, path: str | Path, config: dict[str, Any], overwrite: bool = False, resume: bool = False,
                 resumable: bool = True, legacy: dict[str, dict[str, Any]] | None = None,
                 changeable: tuple[str, ...] = (), located: dict[str, str] | None = None):
        """``resumable``: the command has ``--resume`` (the refusal of an existing directory suggests it).
        ``legacy``: ``{section: {key: value}}`` (section ``""``: the top level) of settings added after a run
        directory may have been written, each with the value that reproduces what such a run did; a recorded
        config without the key is compared as if it held that value.
        ``changeable``: top-level keys whose value may change on resume, because they only add or leave out work
        (the demo's baselines); ``self.changed`` names those that did, and ``config.json`` records the new values.
        ``located``: ``{where_key: content_key}``, top-level keys that say where an input was read from (a file
        path) and the key that records what was read; a run may be moved or its input copied, so ``where_key``
        is compared only against a recorded config written before ``content_key`` existed (and with no ``legacy``
        value for it: a command may derive one from the files the run wrote)."""
        self._legacy = legacy or {}
        self._located = dict(located or {})
        self._changeable = frozenset(changeable)
        self.changed: list[str] = []
        if overwrite and resume:
            raise ValueError("--overwrite and --resume exclude each other: pick one")
        self.path = Path(path)
        self.config = config
        self.resumed = False
        self._hint = "pass --resume to continue it or --overwrite to replace it" if resumable else \
            "pass --overwrite to replace it"
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not a directory; choose another --out")
        if self._non_empty() and not (resume or overwrite):
            raise FileExistsError(
                f"run directory {self.path} already exists; {self._hint}"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_key = _acquire(self.path)
        self._finalizer = weakref.finalize(self, _release, self._lock_key)
        try:
            self._open(config, overwrite, resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory's lock (idempotent); the files stay."""
        self._finalizer()

    @property
    def locked(self) -> bool:
        return self._finalizer.alive

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _non_empty(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK_FILE for p in self.path.iterdir())

    def _open(self, config: dict[str, Any], overwrite: bool, resume: bool) -> None:
        non_empty = self._non_empty()  # again, now that this process holds the lock
        if non_empty and resume:
            old = _with_legacy(read_json(self.path / "config.json", "config.json of the run to resume"), self._legacy)
            old_c, new_c = _comparable(old), _comparable(config)
            for where, content in self._located.items():
                # what was read is compared, not where it was read from; a run written before the content was
                # recorded (and with no legacy value for it) is compared as it was then, by where
                dropped = where if old_c.get(content) is not None or new_c.get(content) is None else content
                old_c.pop(dropped, None)
                new_c.pop(dropped, None)
            diff = sorted(k for k in set(old_c) | set(new_c) if old_c.get(k) != new_c.get(k))
            fixed = [k for k in diff if k not in self._changeable]
            if fixed:
                raise ValueError(
                    f"cannot resume {self.path}: it was written with another configuration (differs in "
                    f"{', '.join(fixed)}); use a new --out, or --overwrite to discard it"
                )
            self.resumed = True
            self.changed = diff
            if diff:
                write_json_atomic(self.path / "config.json", config)
        elif non_empty and overwrite:
            nested = _lock_nested(self.path)
            try:
                for child in self.path.iterdir():
                    if child.name == LOCK_FILE:
                        continue  # held by this process: removing it would let a second writer lock a new file
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            finally:
                for fd in nested:
                    os.close(fd)
        elif non_empty:
            raise FileExistsError(
                f"run directory {self.path} already exists; {self._hint}"
            )
        if not self.resumed:
            write_json_atomic(self.path / "config.json", config)

    @property
    def finished(self) -> bool:
        return (self.path / FINISHED).is_file()

    @property
    def checkpoints(self) -> Path:
        p = self.path / "checkpoints"
        p.mkdir(exist_ok=True)
        return p

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        write_json_atomic(self.path / name, obj)
        return self.path / name

    def write_history(self, rows: Iterable[dict[str, Any]], name: str = "history.csv") -> Path:
        rows = list(rows)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path / name)
        return self.path / name


def _with_legacy(config: dict[str, Any], legacy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``config`` with every missing ``legacy`` setting filled in (see :class:`RunDir`)."""
    out = dict(config)
    for section, values in legacy.items():
        if not section:
            out = {**values, **out}
        elif isinstance(out.get(section), dict):
            out[section] = {**values, **out[section]}
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Keys that may differ between an interrupted run and its resumption are ignored."""
    kept = {k: v for k, v in config.items() if k not in {"resume", "overwrite", "version", "out"}}
    return json.loads(json.dumps(kept, default=str))  # as read back from config.json (tuples become lists)
