"""Checkpoints that a kill cannot cut in half, and a one-line error for one that is broken anyway.

* :func:`save_atomic` -- ``torch.save`` (or another writer) into a temporary file in the same folder, flushed to
  disk and renamed over the old one (``os.replace``), so a checkpoint path holds the previous complete checkpoint
  or the new one, never a half file.
* :class:`AtomicCheckpointIO` -- Lightning's ``CheckpointIO`` for the Trainer's ``plugins=[...]``: writes through
  :func:`save_atomic`, loads through :func:`check_checkpoint`.
* :func:`check_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointError` -- the checks of a checkpoint file
  (a broken one is one error line naming it), defined in the base layer (:mod:`nni_sparsemask.checkpoint_files`,
  where the search's own checkpoint uses them too) and re-exported here.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from nni_sparsemask.checkpoint_files import CheckpointError, check_checkpoint, checked_load, load_checkpoint

__all__ = ["CheckpointError", "AtomicCheckpointIO", "check_checkpoint", "load_checkpoint", "save_atomic"]


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
        return checked_load(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, map_location))
