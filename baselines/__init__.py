"""Baselines: search strategies and hand-designed decoders on the FDN space (imported as nni_sparsemask.baselines).

* :mod:`.decoders` -- FCN, U-Net, SparseACN and the dense FDN as :class:`~nni_sparsemask.fdn.connectivity.Connectivity`;
* :mod:`.deeplab` -- mobile DeepLabV3 (dilated MobileNetV2 + ASPP), a head of its own;
* :mod:`.samplers` -- "Rand" and "Rand (Rule)" random search;
* :mod:`.maskconnect` -- MaskConnect (top-k, straight-through) and the L1 strategy.

Baselines import only the core (``nni_sparsemask.nas`` / ``nni_sparsemask.fdn``); the registry that names them
for the CLI and the comparison is the run layer's (:mod:`nni_sparsemask.run.registry`).

Names are imported lazily (no torch / NNI work at ``import nni_sparsemask.baselines``).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "fcn": "decoders", "unet": "decoders", "sparseacn": "decoders", "dense": "decoders", "fdn": "decoders",
    "DeepLabV3": "deeplab",
    "random_connectivity": "samplers", "random_connectivities": "samplers",
    "rand_rule_connectivity": "samplers", "rand_rule_connectivities": "samplers",
    "MaskConnect": "maskconnect", "MaskConnectInput": "maskconnect", "L1": "maskconnect",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
