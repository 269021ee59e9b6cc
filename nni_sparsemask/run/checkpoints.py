"""Checkpoints that a kill cannot cut in half, and a one-line error for one that is broken anyway.

* :class:`AtomicCheckpointIO` -- Lightning's ``CheckpointIO`` for the Trainer's ``plugins=[...]``: every
  checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the old one
  (``os.replace``), so a checkpoint path holds the previous complete checkpoint or the new one, never a half file.
  It loads through :func:`check_checkpoint` as well.
* :func:`check_checkpoint` -- cheap integrity check without unpickling: missing, empty, not a zip archive
  (truncated, overwritten) or a member failing its CRC (bytes changed) raise :class:`CheckpointError`.
* :func:`load_checkpoint` -- ``torch.load`` after that check; whatever ``torch.load`` still raises on a broken file
  (``EOFError``, ``OSError`` Errno 22, the zip reader's ``RuntimeError``, unpickling errors) becomes the same
  one-line :class:`CheckpointError` that names the file and what to do.

Checkpoints written by ``torch.save`` (PyTorch >= 1.6, and Lightning's) are zip archives whose members carry a
CRC-32; that is what the check reads.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["CheckpointError", "AtomicCheckpointIO", "check_checkpoint", "load_checkpoint", "save_atomic"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (a ``ValueError``: the command line prints it as one error line)."""


def _broken(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is {what}, probably cut short by a killed or crashed run: delete it "
                           f"to start that run over, or put another checkpoint of the same run at this path to "
                           f"resume from there")


def check_checkpoint(path: str | os.PathLike) -> Path:
    """Raise a one-line :class:`CheckpointError` (``FileNotFoundError`` if missing) unless ``path`` is intact."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise _broken(path, "empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise _broken(path, f"not a complete PyTorch checkpoint ({_first_line(err) or 'no zip archive'})") from None
    if bad is not None:
        raise _broken(path, f"corrupt (its member {bad} fails the CRC check)")
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", weights_only: bool = True,
                    **kwargs: Any) -> Any:
    """``torch.load(path, ...)`` after :func:`check_checkpoint`; a broken file raises one :class:`CheckpointError`.

    A ``weights_only`` refusal (an intact file holding other objects) is not a broken file and propagates as is.
    """
    path = check_checkpoint(path)
    return _translated(path, lambda: torch.load(path, map_location=map_location, weights_only=weights_only, **kwargs))


def _translated(path: Path, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise
        raise _broken(path, f"unreadable ({type(err).__name__}: {_first_line(err)})") from None
    except (FileNotFoundError, PermissionError):
        raise
    except (EOFError, OSError, RuntimeError, UnicodeDecodeError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise _broken(path, f"unreadable ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""


def save_atomic(obj: Any, path: str | os.PathLike, save: Callable[[Any, Any], None] = torch.save) -> Path:
    """``save(obj, file)`` into a temporary file next to ``path``, flushed to disk, then renamed onto ``path``.

    If ``save`` raises (or the process is killed) ``path`` keeps what it held before and no temporary file stays
    behind (a kill may leave a hidden ``.NAME.*.tmp``, never a half ``NAME``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on disk
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes (:func:`save_atomic`), checked reads (:func:`check_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage
                        ) -> dict[str, Any]:
        path = check_checkpoint(path)
        return _translated(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, map_location))
