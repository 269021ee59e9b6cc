"""Checkpoint files that are broken give one error line, not a torch traceback (base layer: torch and stdlib only).

* :func:`check_checkpoint` -- cheap integrity check without unpickling: missing, empty, not a zip archive
  (truncated, overwritten) or a member failing its CRC (bytes changed) raise :class:`CheckpointError`.
* :func:`load_checkpoint` -- ``torch.load`` after that check; whatever ``torch.load`` still raises on a broken file
  (``EOFError``, ``OSError`` Errno 22, the zip reader's ``RuntimeError``, unpickling errors) becomes the same
  one-line :class:`CheckpointError` that names the file and what to do.
* :func:`checked_load` -- the same translation around any loader of a checked file (Lightning's ``CheckpointIO``).

Checkpoints written by ``torch.save`` (PyTorch >= 1.6, and Lightning's) are zip archives whose members carry a
CRC-32; that is what the check reads. Every layer may use this module: the search's own checkpoint
(``nas/searchdir.py``) as well as the run layer's (``run/checkpoints.py``, which re-exports these names).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["CheckpointError", "check_checkpoint", "load_checkpoint", "checked_load"]


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
    return checked_load(path, lambda: torch.load(path, map_location=map_location, weights_only=weights_only,
                                                 **kwargs))


def checked_load(path: Path, load: Callable[[], Any]) -> Any:
    """``load()`` (which reads ``path``), with the errors of a broken file turned into one :class:`CheckpointError`.

    A missing or unreadable (permission) file and a ``weights_only`` refusal propagate as they are.
    """
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
