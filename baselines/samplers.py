"""Random-search baselines of Fig. 4: "Rand" and "Rand (Rule)", as samplers of :class:`Connectivity` objects.

``random_connectivity``
    Every edge of the FDN (every candidate of every ``T_l``) is on independently with probability ``density``.
    A draw is pruned (``prune(threshold=None)``: stages without inputs or readers are dropped, duplicates merged);
    when nothing reaches the head (``D_1`` left without a live input) the sampler draws again, from the same seeded
    stream, so the result is a deterministic function of ``(feature_info, density, seed)``.

``rand_rule_connectivity``
    The rule the paper read off the searched connectivity (Fig. 3): every decoder stage but the last reads only
    from ``{E_l, G}``; each ``D_l`` (``l > 1``) takes one of the three non-empty subsets of ``{E_l, G}`` uniformly,
    and ``D_1`` takes a non-empty subset of its ``T_1`` (every candidate on with probability ``density``, drawn
    again while empty; ``density=0.5`` is uniform over the non-empty subsets). After pruning, only the stages
    ``D_1`` reads survive.

``random_connectivities`` / ``rand_rule_connectivities`` give ``n`` samples with distinct pruned edge sets; the
i-th candidate draw uses the stream ``numpy.random.default_rng([seed, i])``, so a list is reproducible and a
longer list extends a shorter one with the same seed.

Why a sampler and not NNI's multi-trial ``Random`` strategy over ``FDNSpace``: (1) NNI samples each candidate of
an ``InputChoice(n_chosen=None)`` independently, so a trial can get a decoder in which nothing reaches the head;
``FDNSpace.forward`` then raises and the trial is wasted, whereas the sampler rejects such draws up front;
(2) the Rand (Rule) constraint (only ``{E_l, G}`` below ``D_1``) cannot be expressed by NNI's sampling without
a custom space; (3) a multi-trial strategy pickles the evaluator into every trial (an in-memory data set
overflows NNI's message), and the trained network would be the frozen supernet (with per-edge BN) instead of
the ``build_pruned`` network every other baseline is retrained as. A sampled ``Connectivity`` goes through the
same retrain / evaluate path (and the same run directories) as the searched and hand-designed decoders, and
each sample can still be one trial of the HPO comparison experiment (``sparsemask compare``).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from nni_sparsemask.fdn.backbones import FeatureInfo
from nni_sparsemask.fdn.connectivity import Connectivity, Edge, candidate_names

__all__ = ["random_connectivity", "random_connectivities", "rand_rule_connectivity", "rand_rule_connectivities",
           "MAX_TRIES"]

#: draws per sample before giving up (only a tiny density can need many).
MAX_TRIES = 1000


def _check_density(density: float) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density (probability that an edge is on) must be in (0, 1], got {density!r}")
    return float(density)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _info(feature_info: Iterable[FeatureInfo]) -> list[FeatureInfo]:
    info = list(feature_info)
    if not info:
        raise ValueError("feature_info is empty: the FDN needs at least one encoder stage")
    return info


def _first_valid(draw: Callable[[np.random.Generator], list[Edge]], make: Callable[[list[Edge]], Connectivity],
                 rng: np.random.Generator, what: str, max_tries: int) -> tuple[Connectivity, int]:
    for attempt in range(max_tries):
        try:
            return make(draw(rng)).prune(threshold=None), attempt
        except ValueError:  # nothing reaches the head: draw again
            continue
    raise ValueError(f"{what}: no valid decoder (D1 reachable) in {max_tries} draws; raise the density")


def _random_edges(rng: np.random.Generator, L: int, density: float) -> list[Edge]:
    return [Edge(f"D{l}", s) for l in range(L, 0, -1) for s in candidate_names(l, L) if rng.random() < density]


def _rule_edges(rng: np.random.Generator, L: int, density: float) -> list[Edge]:
    edges = []
    for l in range(L, 1, -1):
        subset = [[f"E{l}"], ["G"], [f"E{l}", "G"]][int(rng.integers(3))]
        edges += [Edge(f"D{l}", s) for s in subset]
    cands = candidate_names(1, L)
    while True:
        chosen = [s for s in cands if rng.random() < density]
        if chosen:
            return edges + [Edge("D1", s) for s in chosen]


def _sample(kind: str, backbone: str, feature_info: Iterable[FeatureInfo], density: float, seed: int,
            index: int, backbone_kwargs: dict[str, Any] | None, max_tries: int) -> Connectivity:
    info = _info(feature_info)
    density, seed = _check_density(density), _check_seed(seed)
    rng = np.random.default_rng([seed, index])
    draw = {"random": _random_edges, "rand_rule": _rule_edges}[kind]
    kwargs = dict(backbone_kwargs or {})

    def make(edges: list[Edge]) -> Connectivity:
        return Connectivity(backbone, info, edges, "D1", dict(kwargs))

    conn, attempt = _first_valid(lambda g: draw(g, len(info), density), make, rng, kind, max_tries)
    conn.meta = {"sampler": kind, "density": density, "seed": seed, "index": index, "attempts": attempt + 1}
    return conn


def random_connectivity(backbone: str, feature_info: Iterable[FeatureInfo], density: float = 0.5, seed: int = 0,
                        backbone_kwargs: dict[str, Any] | None = None, max_tries: int = MAX_TRIES) -> Connectivity:
    """One "Rand" sample: every FDN edge on with probability ``density``, pruned, D1 reachable (module docstring)."""
    return _sample("random", backbone, feature_info, density, seed, 0, backbone_kwargs, max_tries)


def rand_rule_connectivity(backbone: str, feature_info: Iterable[FeatureInfo], density: float = 0.5, seed: int = 0,
                           backbone_kwargs: dict[str, Any] | None = None, max_tries: int = MAX_TRIES
                           ) -> Connectivity:
    """One "Rand (Rule)" sample: ``D_l`` (l > 1) reads a non-empty subset of ``{E_l, G}``; D1 any non-empty subset."""
    return _sample("rand_rule", backbone, feature_info, density, seed, 0, backbone_kwargs, max_tries)


def _many(kind: str, backbone: str, feature_info: Iterable[FeatureInfo], n: int, density: float, seed: int,
          backbone_kwargs: dict[str, Any] | None, max_tries: int) -> list[Connectivity]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of samples) must be an integer >= 1, got {n!r}")
    info = _info(feature_info)
    out: list[Connectivity] = []
    seen: set[tuple[str, frozenset]] = set()
    index = 0
    while len(out) < n:
        if index >= max_tries * n:
            raise ValueError(f"{kind}: found only {len(out)} distinct decoders in {index} draws, {n} asked for; "
                             "the space is too small for that many (use fewer samples or another density)")
        conn = _sample(kind, backbone, info, density, seed, index, backbone_kwargs, max_tries)
        index += 1
        key = (conn.output, frozenset((e.target, e.source) for e in conn.edges))
        if key not in seen:
            seen.add(key)
            out.append(conn)
    return out


def random_connectivities(backbone: str, feature_info: Iterable[FeatureInfo], n: int, density: float = 0.5,
                          seed: int = 0, backbone_kwargs: dict[str, Any] | None = None,
                          max_tries: int = MAX_TRIES) -> list[Connectivity]:
    """``n`` "Rand" samples with distinct pruned edge sets; the first equals ``random_connectivity(seed=seed)``."""
    return _many("random", backbone, feature_info, n, density, seed, backbone_kwargs, max_tries)


def rand_rule_connectivities(backbone: str, feature_info: Iterable[FeatureInfo], n: int, density: float = 0.5,
                             seed: int = 0, backbone_kwargs: dict[str, Any] | None = None,
                             max_tries: int = MAX_TRIES) -> list[Connectivity]:
    """``n`` "Rand (Rule)" samples with distinct pruned edge sets."""
    return _many("rand_rule", backbone, feature_info, n, density, seed, backbone_kwargs, max_tries)
