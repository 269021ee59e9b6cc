"""Hand-designed decoders as points of the FDN space: each is a :class:`~nni_sparsemask.fdn.connectivity.Connectivity`.

Every function has the signature ``f(backbone, feature_info, backbone_kwargs=None) -> Connectivity`` and returns an
already minimal connectivity (``conn.prune(threshold=None)`` leaves it unchanged); build the network with
:func:`~nni_sparsemask.fdn.pruned.build_pruned`. Edges carry weight 1.0. With L encoder stages (``E_1..E_L``, shallow to
deep) and the global-pool feature ``G``, the decoders are:

``fcn``
    FCN [Long et al. 2015], the single-path decoder: ``D_1 <- E_L``. The deepest feature goes through one
    ReLU6 -> 1x1 conv edge to ``C_dec`` channels, is upsampled to ``D_1``'s resolution, and the head (ReLU6 -> 1x1
    conv to the classes) upsamples the logits to the input size. (The paper's FCN puts the classifier directly on
    ``E_L``; inside the FDN space every path has one decoder edge, so this version has one 1x1 conv more.)

``unet``
    U-Net [Ronneberger et al. 2015], a chain: ``D_L <- E_L`` and ``D_l <- {E_l, D_{l+1}}`` for ``l < L``.

``sparseacn``
    SparseACN [Zhu et al. 2018, "Sparsely aggregated convolutional networks"]: in a SparseNet block, layer ``n``
    aggregates the outputs of layers ``n - 2^k`` (k = 0, 1, 2, ...) that exist. Mapped onto the decoder:

    * the decoder is the chain of layers ``x_0 = E_L`` (its input), ``x_1 = D_L``, ``x_2 = D_{L-1}``, ...,
      ``x_L = D_1``; so ``D_l = x_n`` with ``n = L - l + 1``;
    * ``D_l`` reads ``x_{n - 2^k}`` for every ``k >= 0`` with ``2^k <= n``: that is ``D_{l + 2^k}`` for every
      offset with ``l + 2^k <= L``, and ``E_L`` when ``n`` is a power of two (``2^k = n`` reaches ``x_0``);
    * plus, as in U-Net, its lateral encoder skip ``E_l`` (the encoder feature of its own resolution).

    So ``D_L <- {E_L}`` and, e.g. for MobileNetV2 (L = 9), ``D_1 <- {E_1, D_2, D_3, D_5, D_9}`` and
    ``D_2 <- {E_2, E_9, D_3, D_4, D_6}``. ``G`` is not read (SparseNet has no global-pool input).

``dense`` / ``fdn``
    The Fully Dense Network: every edge of every ``T_l`` (:meth:`Connectivity.dense`).

``meta["decoder"]`` records the name.
"""
from __future__ import annotations

from typing import Any, Iterable

from nni_sparsemask.fdn.backbones import FeatureInfo
from nni_sparsemask.fdn.connectivity import Connectivity, Edge

__all__ = ["fcn", "unet", "sparseacn", "sparseacn_sources", "dense", "fdn", "CONNECTIVITY_DECODERS"]


def _info(feature_info: Iterable[FeatureInfo]) -> list[FeatureInfo]:
    info = list(feature_info)
    if not info:
        raise ValueError("feature_info is empty: a decoder needs at least one encoder stage")
    return info


def _make(name: str, backbone: str, info: list[FeatureInfo], edges: list[Edge],
          backbone_kwargs: dict[str, Any] | None) -> Connectivity:
    return Connectivity(backbone, info, edges, "D1", dict(backbone_kwargs or {}), None, {"decoder": name})


def fcn(backbone: str, feature_info: Iterable[FeatureInfo], backbone_kwargs: dict[str, Any] | None = None
        ) -> Connectivity:
    """FCN: ``D_1 <- E_L`` only (see the module docstring)."""
    info = _info(feature_info)
    return _make("fcn", backbone, info, [Edge("D1", f"E{len(info)}")], backbone_kwargs)


def unet(backbone: str, feature_info: Iterable[FeatureInfo], backbone_kwargs: dict[str, Any] | None = None
         ) -> Connectivity:
    """U-Net: ``D_L <- E_L``; ``D_l <- E_l + D_{l+1}`` for ``l < L``."""
    info = _info(feature_info)
    L = len(info)
    edges = [Edge(f"D{L}", f"E{L}")]
    for l in range(L - 1, 0, -1):
        edges += [Edge(f"D{l}", f"E{l}"), Edge(f"D{l}", f"D{l + 1}")]
    return _make("unet", backbone, info, edges, backbone_kwargs)


def sparseacn_sources(level: int, num_stages: int) -> list[str]:
    """The inputs of ``D_level`` in the SparseACN decoder (module docstring), lateral ``E_l`` first.

    >>> sparseacn_sources(1, 9)
    ['E1', 'D2', 'D3', 'D5', 'D9']
    """
    if not 1 <= level <= num_stages:
        raise ValueError(f"decoder stage D{level} does not exist: stages are D1..D{num_stages}")
    n = num_stages - level + 1  # D_l is layer x_n of the chain x_0 = E_L, x_1 = D_L, ...
    sources = [f"E{level}"]
    offset = 1
    while offset <= n:
        j = n - offset
        name = f"E{num_stages}" if j == 0 else f"D{num_stages - j + 1}"
        if name not in sources:
            sources.append(name)
        offset *= 2
    return sources


def sparseacn(backbone: str, feature_info: Iterable[FeatureInfo], backbone_kwargs: dict[str, Any] | None = None
              ) -> Connectivity:
    """SparseACN: ``D_l`` reads its lateral ``E_l`` and the chain layers at offsets ``2^k`` (module docstring)."""
    info = _info(feature_info)
    L = len(info)
    edges = [Edge(f"D{l}", s) for l in range(L, 0, -1) for s in sparseacn_sources(l, L)]
    return _make("sparseacn", backbone, info, edges, backbone_kwargs)


def dense(backbone: str, feature_info: Iterable[FeatureInfo], backbone_kwargs: dict[str, Any] | None = None
          ) -> Connectivity:
    """The Fully Dense Network: every candidate of every stage."""
    return Connectivity.dense(backbone, _info(feature_info), backbone_kwargs=dict(backbone_kwargs or {}),
                              meta={"decoder": "fdn"})


fdn = dense

#: name -> connectivity builder (the registry in :mod:`nni_sparsemask.run.registry` uses these).
CONNECTIVITY_DECODERS = {"fcn": fcn, "unet": unet, "sparseacn": sparseacn, "fdn": dense}
