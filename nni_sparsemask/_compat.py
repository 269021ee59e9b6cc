"""Module paths of releases before the layered layout (``nni_sparsemask.strategy``, ``.pipeline``, ...).

Importing an old path gives the module at its new place (the same module object, so classes keep one identity)
and a ``DeprecationWarning`` that names the new path. Nothing is imported until an old path is asked for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

#: old module path -> new module path
MOVED = {
    "nni_sparsemask.losses": "nni_sparsemask.nas.losses",
    "nni_sparsemask.supermodule": "nni_sparsemask.nas.supermodule",
    "nni_sparsemask.strategy": "nni_sparsemask.nas.strategy",
    "nni_sparsemask.backbones": "nni_sparsemask.fdn.backbones",
    "nni_sparsemask.fusion": "nni_sparsemask.fdn.fusion",
    "nni_sparsemask.space": "nni_sparsemask.fdn.space",
    "nni_sparsemask.connectivity": "nni_sparsemask.fdn.connectivity",
    "nni_sparsemask.model": "nni_sparsemask.fdn.pruned",
    "nni_sparsemask.metrics": "nni_sparsemask.measure.metrics",
    "nni_sparsemask.cost": "nni_sparsemask.measure.cost",
    "nni_sparsemask.deploy": "nni_sparsemask.measure.deploy",
    "nni_sparsemask.pipeline": "nni_sparsemask.run.pipeline",
    "nni_sparsemask.workflow": "nni_sparsemask.run.steps",
    "nni_sparsemask.train": "nni_sparsemask.run.lightning",
    "nni_sparsemask.pretrain": "nni_sparsemask.run.pretrain",
    "nni_sparsemask.rundir": "nni_sparsemask.run.rundir",
    "nni_sparsemask.demo": "nni_sparsemask.run.demo",
    "nni_sparsemask.baselines.registry": "nni_sparsemask.run.registry",
    "nni_sparsemask.grid": "nni_sparsemask.comparison.grid",
    "nni_sparsemask.trial": "nni_sparsemask.comparison.trial",
    "nni_sparsemask.compare": "nni_sparsemask.comparison.compare",
    "nni_sparsemask.manager": "nni_sparsemask.comparison.manager",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (imported once, under its new name)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # already executed under its new name
        pass

    def get_code(self, fullname):  # ``python -m OLD`` runs the new module's code
        return importlib.util.find_spec(self.new).loader.get_code(self.new)


class _MainSpec(importlib.machinery.ModuleSpec):
    """Spec of an old path run with ``python -m``: relative imports resolve in the new module's package."""

    def __init__(self, name: str, loader: _Alias) -> None:
        super().__init__(name, loader)
        self._new_parent = loader.new.rpartition(".")[0]

    @property
    def parent(self) -> str:
        return self._new_parent


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths in :data:`MOVED` and warns that they moved."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path will be removed in a later release",
                      DeprecationWarning, stacklevel=2)
        return _MainSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import nni_sparsemask`` does this)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
