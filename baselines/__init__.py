"""Baselines: search strategies and hand-designed decoders on the FDN space (imported as nni_sparsemask.baselines).

* :mod:`.decoders` -- FCN, U-Net, SparseACN and the dense FDN as :class:`~nni_sparsemask.connectivity.Connectivity`;
* :mod:`.deeplab` -- mobile DeepLabV3 (dilated MobileNetV2 + ASPP), a head of its own;
* :mod:`.samplers` -- "Rand" and "Rand (Rule)" random search;
* :mod:`.maskconnect` -- MaskConnect (top-k, straight-through) and the L1 strategy;
* :mod:`.registry` -- the decoder and strategy registries and the CLI argument validation.

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
    "DECODERS": "registry", "STRATEGIES": "registry", "build_decoder": "registry", "decoder_connectivity": "registry",
    "build_strategy": "registry", "validate_strategy_args": "registry",
    "available_decoders": "registry", "available_strategies": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
