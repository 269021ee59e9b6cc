"""The inference cost of an FDN decoder as a function of its connectivity, differentiable in the weights w.

How a decoder stage ``D_l`` runs (:func:`~nni_sparsemask.fdn.fusion.fuse`, Eq. 4 with Theorems 1-2): every live edge
is ReLU6 -> 1x1 conv at its SOURCE resolution; edges whose sources share a spatial size form a group, summed at that
size and upsampled once to ``D_l``'s size (a group already at that size is not resized, and a 1x1 group -- ``G``,
or any map that small -- is broadcast, which costs nothing); the groups are then added into one running sum. So a
stage with ``k_g`` live edges in group ``g`` and ``n`` live groups costs

    sum_edges conv_e  +  sum_g (k_g - 1) add[size_g]  +  sum_g upsample_g  +  (n - 1) iadd[size_l]

which is, exactly, the sum of three kinds of terms (:meth:`DecoderCosts.from_primitives`):

* per edge ``c_e = conv_e + add[size_e]``;
* per group ``c_g = upsample_g + iadd[size_l] - add[size_g]`` (paid once if any edge of the group is on);
* per stage ``c_s = -iadd[size_l]`` (paid once if any edge of the stage is on: ``n`` groups need ``n - 1`` adds).

Reading each w as an independent gate (edge on with probability w), the expected cost is

    E[cost] = sum_e c_e w_e + sum_g c_g (1 - prod_{e in g} (1 - w_e)) + sum_s c_s (1 - prod_{e in s} (1 - w_e))

(:func:`expected_cost`). It is differentiable, its gradient is >= 0 in every w when the primitives are >= 0, and
for binary w it is the cost of exactly that connectivity (:func:`connectivity_cost`), every stage with an input
computed. Pruning also removes stages nobody reads, so the pruned network costs at most this. ``base`` (encoder +
head, the same for every decoder) is added on request. The one thing left out: when no group of a stage is
upsampled, its first cross-group add allocates instead of adding in place (the same bytes, a little more time).

Pure torch; the costs come from :mod:`nni_sparsemask.measure.latency` (counted bytes / FLOPs, or timed latency).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from nni_sparsemask.fdn.connectivity import Connectivity, candidate_names

__all__ = ["DecoderCosts", "size_key", "expected_cost", "connectivity_cost", "dense_cost"]


def size_key(size: tuple[int, int] | list[int]) -> str:
    """``(h, w) -> "HxW"``: how group costs and primitive sizes are keyed."""
    return f"{int(size[0])}x{int(size[1])}"


@dataclass
class DecoderCosts:
    """Cost coefficients of every edge, group and stage of the FDN decoder at one input size.

    ``sizes``: spatial size of ``E1..EL`` and ``G`` at that input size (``D_l`` has ``E_l``'s);
    ``edge[label][source]``, ``group[label]["HxW"]``, ``stage[label]``: c_e, c_g, c_s of the module docstring for
    every candidate / source size / stage of the FDN; ``base``: encoder + head; ``unit``: what they count.
    """

    unit: str
    sizes: dict[str, tuple[int, int]]
    edge: dict[str, dict[str, float]]
    group: dict[str, dict[str, float]]
    stage: dict[str, float]
    base: float = 0.0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.sizes = {k: (int(v[0]), int(v[1])) for k, v in self.sizes.items()}
        self.validate()

    @property
    def num_stages(self) -> int:
        return sum(1 for k in self.sizes if k.startswith("E"))

    def labels(self) -> list[str]:
        return [f"D{l}" for l in range(self.num_stages, 0, -1)]

    def source_size(self, name: str) -> tuple[int, int]:
        return self.sizes["E" + name[1:] if name.startswith("D") else name]

    def validate(self) -> None:
        L = self.num_stages
        expected = {f"E{l}" for l in range(1, L + 1)} | {"G"}
        if L < 1 or set(self.sizes) != expected:
            raise ValueError(f"cost sizes must name E1..E{L} and G exactly, got {sorted(self.sizes)}")
        for label in self.labels():
            names = candidate_names(int(label[1:]), L)
            groups = {size_key(self.source_size(n)) for n in names}
            if set(self.edge.get(label, {})) != set(names):
                raise ValueError(f"edge costs of {label} must name {', '.join(names)}, got "
                                 f"{sorted(self.edge.get(label, {}))}")
            if set(self.group.get(label, {})) != groups:
                raise ValueError(f"group costs of {label} must name the source sizes {sorted(groups)}, got "
                                 f"{sorted(self.group.get(label, {}))}")
            if label not in self.stage:
                raise ValueError(f"no stage cost for {label}")
        extra = (set(self.edge) | set(self.group) | set(self.stage)) - set(self.labels())
        if extra:
            raise ValueError(f"costs for unknown decoder stages {sorted(extra)}: stages are D1..D{L}")

    @classmethod
    def from_primitives(cls, unit: str, sizes: Mapping[str, tuple[int, int]], conv: Mapping[str, float],
                        add: Mapping[str, float], iadd: Mapping[str, float], upsample: Mapping[str, float],
                        base: float = 0.0) -> "DecoderCosts":
        """Coefficients from the costs of the operations ``fuse`` runs (see the module docstring).

        ``conv[source]``: ReLU6 + 1x1 conv of an edge from ``source`` (``E_l``, ``D_l`` or ``G``);
        ``add["HxW"]``: out-of-place sum of two C_dec maps (within a group); ``iadd["HxW"]``: in-place add of a
        group into a stage's running sum; ``upsample["HxW->HxW"]``: bilinear resize of a C_dec map, needed for
        every source size that is neither the target's nor 1x1.
        """
        sizes = {k: (int(v[0]), int(v[1])) for k, v in sizes.items()}
        L = sum(1 for k in sizes if k.startswith("E"))
        edge, group, stage = {}, {}, {}
        for l in range(L, 0, -1):
            label, target = f"D{l}", sizes[f"E{l}"]
            names = candidate_names(l, L)
            src = {n: sizes["E" + n[1:] if n.startswith("D") else n] for n in names}
            edge[label] = {n: float(conv[n]) + float(add[size_key(src[n])]) for n in names}
            group[label] = {}
            for s in dict.fromkeys(src.values()):
                up = 0.0 if s == target or s == (1, 1) else float(upsample[f"{size_key(s)}->{size_key(target)}"])
                group[label][size_key(s)] = up + float(iadd[size_key(target)]) - float(add[size_key(s)])
            stage[label] = -float(iadd[size_key(target)])
        return cls(unit, sizes, edge, group, stage, float(base))

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "sizes": {k: list(v) for k, v in self.sizes.items()}, "edge": self.edge,
                "group": self.group, "stage": self.stage, "base": self.base}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecoderCosts":
        try:
            return cls(str(data["unit"]), dict(data["sizes"]), {k: dict(v) for k, v in data["edge"].items()},
                       {k: dict(v) for k, v in data["group"].items()}, dict(data["stage"]),
                       float(data.get("base", 0.0)))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed decoder costs ({err!r})") from None

    # ------------------------------------------------------------------------------------------- tensors
    def _tensors(self, label: str, device: torch.device, dtype: torch.dtype):
        key = (label, device, dtype)
        if key not in self._cache:
            names = candidate_names(int(label[1:]), self.num_stages)
            c_e = torch.tensor([self.edge[label][n] for n in names], device=device, dtype=dtype)
            members: dict[str, list[int]] = {}
            for i, n in enumerate(names):
                members.setdefault(size_key(self.source_size(n)), []).append(i)
            groups = [(torch.tensor(idx, device=device), self.group[label][k]) for k, idx in members.items()]
            self._cache[key] = (c_e, groups, self.stage[label])
        return self._cache[key]


def _costs(table: Any) -> DecoderCosts:
    """A :class:`DecoderCosts`, or anything holding one as ``.costs`` (``measure.latency.CostTable``)."""
    costs = getattr(table, "costs", table)
    if not isinstance(costs, DecoderCosts):
        raise ValueError(f"expected DecoderCosts or a cost table holding them, got {type(table).__name__}")
    return costs


def expected_cost(w: Mapping[str, torch.Tensor], table: Any, include_base: bool = False) -> torch.Tensor:
    """E[cost] of the decoder under independent gates ``w`` (``{label: w over FDNSpace.candidates(label)}``).

    Labels missing from ``w`` count as stages with every edge off. Differentiable in every ``w``; the result is a
    0-d tensor on the device / dtype of the first ``w``.
    """
    costs = _costs(table)
    labels = set(costs.labels())
    total = None
    for label, ws in w.items():
        if label not in labels:
            raise ValueError(f"unknown decoder stage {label!r} in w: the cost table has D1..D{costs.num_stages}")
        c_e, groups, c_s = costs._tensors(label, ws.device, ws.dtype)
        if ws.shape != c_e.shape:
            raise ValueError(f"{label}: w has shape {tuple(ws.shape)}, but {label} has {c_e.numel()} candidates")
        off = 1 - ws
        term = (c_e * ws).sum() + c_s * (1 - off.prod())
        for idx, c_g in groups:
            term = term + c_g * (1 - off[idx].prod())
        total = term if total is None else total + term
    if total is None:
        total = torch.zeros(())
    return total + costs.base if include_base else total


def connectivity_cost(conn: Connectivity, table: Any, include_base: bool = False) -> float:
    """The cost of ``conn`` as built: every stage with an input computed (prune ``conn`` first)."""
    costs = _costs(table)
    if conn.num_stages != costs.num_stages:
        raise ValueError(f"connectivity has {conn.num_stages} stages, the cost table {costs.num_stages}")
    total = costs.base if include_base else 0.0
    for label in conn.stages():
        inputs = conn.inputs(label)
        total += costs.stage[label] + sum(costs.edge[label][n] for n in inputs)
        total += sum(costs.group[label][k] for k in {size_key(costs.source_size(n)) for n in inputs})
    return float(total)


def dense_cost(table: Any, include_base: bool = False) -> float:
    """The cost of the dense FDN (every w = 1): a scale for a normalised cost penalty."""
    costs = _costs(table)
    total = sum(costs.stage.values()) + sum(sum(v.values()) for v in costs.edge.values())
    total += sum(sum(v.values()) for v in costs.group.values())
    return float(total + (costs.base if include_base else 0.0))
