"""Run directories: one per command, holding everything the report and the comparison read.

Layout (files appear as the command gets to them)::

    RUN/config.json        the typed config the command ran with (+ command name, package version)
    RUN/metrics.json       final numbers (mIoU, per-class IoU, params, FPS, ...)
    RUN/history.csv        one row per epoch
    RUN/connectivity.json  searched / used connectivity
    RUN/checkpoints/       resumable state
    RUN/*.png              figures

Nothing is lost silently: an existing non-empty directory is refused unless ``overwrite`` (then it is removed
first) or ``resume`` (then its config must equal the new one, and a finished run is left as it is). Files are
written atomically (temporary file + rename), so an interrupted write never leaves a half file.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RunDir", "write_json_atomic", "read_json"]

FINISHED = "metrics.json"


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


class RunDir:
    """A command's output directory; see the module docstring for the rules."""

    def __init__(self, path: str | Path, config: dict[str, Any], overwrite: bool = False, resume: bool = False):
        if overwrite and resume:
            raise ValueError("--overwrite and --resume exclude each other: pick one")
        self.path = Path(path)
        self.config = config
        self.resumed = False
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not a directory; choose another --out")
        non_empty = self.path.is_dir() and any(self.path.iterdir())
        if non_empty and resume:
            old = read_json(self.path / "config.json", "config.json of the run to resume")
            if _comparable(old) != _comparable(config):
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ValueError(
                    f"cannot resume {self.path}: it was written with another configuration (differs in "
                    f"{', '.join(diff)}); use a new --out, or --overwrite to discard it"
                )
            self.resumed = True
        elif non_empty and overwrite:
            shutil.rmtree(self.path)
        elif non_empty:
            raise FileExistsError(
                f"run directory {self.path} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
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


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Keys that may differ between an interrupted run and its resumption are ignored."""
    kept = {k: v for k, v in config.items() if k not in {"resume", "overwrite", "version", "out"}}
    return json.loads(json.dumps(kept, default=str))  # as read back from config.json (tuples become lists)
