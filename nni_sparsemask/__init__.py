"""nni-sparsemask: SparseMask (Wu et al., 2019) connectivity search for dense-prediction decoders, on NNI.

The public names are imported lazily so that ``import nni_sparsemask`` stays cheap (no NNI or torch work at
import time until a name is used).
"""
from __future__ import annotations

import importlib

from nni_sparsemask import _compat

_compat.install()  # old module paths (nni_sparsemask.strategy, ...) still import, with a DeprecationWarning

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureInfo": "nni_sparsemask.fdn.backbones",
    "build_backbone": "nni_sparsemask.fdn.backbones",
    "FDNSpace": "nni_sparsemask.fdn.space",
    "Connectivity": "nni_sparsemask.fdn.connectivity",
    "build_pruned": "nni_sparsemask.fdn.pruned",
    "SparseMixedInput": "nni_sparsemask.nas.supermodule",
    "SparseMask": "nni_sparsemask.nas.strategy",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nni_sparsemask' has no attribute {name!r}")
