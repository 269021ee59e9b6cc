"""The connectivity of an FDN decoder: which inputs every decoder stage fuses, with their weights w.

Stage names: ``E1..EL`` (encoder stage outputs, shallow to deep), ``G`` (global-pool feature) and ``D1..DL``
(decoder stages; ``D_l`` has the resolution of ``E_l``). The candidate inputs of ``D_l`` are, in this order,

    T_l = [E_l, E_{l+1}, ..., E_L,  D_{l+1}, ..., D_L,  G]        (|T_l| = 2 (L - l) + 2)

which is also the candidate order of the NNI ``InputChoice`` labelled ``D{l}`` in :class:`~nni_sparsemask.fdn.space.FDNSpace`.
The head reads the ``output`` stage (``D1`` unless duplicate merging moved it).

Pruning (section 3.3): drop edges with w < sigma; repeatedly drop stages without inputs and stages whose output no
live stage (nor the head) reads; merge exact duplicates (two stages of the same resolution with the same input
set, as the paper's code does). JSON files carry a schema version and are validated on load.

:meth:`Connectivity.from_official_mask` reads the paper's published search result (a bool ``.npy`` array of shape
``(L, L, 2)``) and :func:`convert_official_mask` writes it as ``connectivity.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from nni_sparsemask.fdn.backbones import FeatureInfo

__all__ = ["Edge", "Connectivity", "SCHEMA_VERSION", "candidate_names", "convert_official_mask"]

SCHEMA_VERSION = 1


def candidate_names(level: int, num_stages: int) -> list[str]:
    """T_l in the documented order: ``E_l..E_L``, ``D_{l+1}..D_L``, ``G``."""
    if not 1 <= level <= num_stages:
        raise ValueError(f"decoder stage D{level} does not exist: stages are D1..D{num_stages}")
    return (
        [f"E{i}" for i in range(level, num_stages + 1)]
        + [f"D{i}" for i in range(level + 1, num_stages + 1)]
        + ["G"]
    )


def _level(name: str) -> int:
    return int(name[1:])


@dataclass(frozen=True)
class Edge:
    """``source`` feeds decoder stage ``target`` with weight ``weight`` (1.0 for hand-designed decoders)."""

    target: str
    source: str
    weight: float = 1.0


@dataclass
class Connectivity:
    """Decoder connectivity over an encoder with ``len(feature_info)`` stages.

    ``history`` is optional: one entry per search epoch, ``{label: [w over T_l in candidate order]}``.
    ``meta`` holds free-form provenance (threshold, loss, search run, ...); it is saved but never interpreted.
    """

    backbone: str
    feature_info: list[FeatureInfo]
    edges: list[Edge]
    output: str = "D1"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, list[float]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.feature_info = [fi if isinstance(fi, FeatureInfo) else FeatureInfo(**fi) for fi in self.feature_info]
        self.edges = [e if isinstance(e, Edge) else Edge(**e) for e in self.edges]
        self.validate()

    # ------------------------------------------------------------------------------------------- structure
    @property
    def num_stages(self) -> int:
        return len(self.feature_info)

    def candidates(self, target: str) -> list[str]:
        """The candidate inputs T_l of decoder stage ``target`` (``"D3"``), in InputChoice order."""
        self._check_decoder_name(target, "stage")
        return candidate_names(_level(target), self.num_stages)

    def stages(self) -> list[str]:
        """Decoder stages with at least one input, deepest first (the order they are computed in)."""
        targets = {e.target for e in self.edges}
        return [f"D{l}" for l in range(self.num_stages, 0, -1) if f"D{l}" in targets]

    def inputs(self, target: str) -> list[str]:
        """Sources of ``target`` in candidate order."""
        order = {name: i for i, name in enumerate(self.candidates(target))}
        return sorted({e.source for e in self.edges if e.target == target}, key=order.__getitem__)

    def weight(self, target: str, source: str) -> float | None:
        for e in self.edges:
            if e.target == target and e.source == source:
                return e.weight
        return None

    def reduction(self, name: str) -> int:
        """Spatial reduction of a stage (``G`` has none: it is 1x1 and broadcast)."""
        if name == "G":
            raise ValueError("G is the 1x1 global-pool feature and has no fixed reduction")
        return self.feature_info[_level(name) - 1].reduction

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    # ------------------------------------------------------------------------------------------- validation
    def _check_decoder_name(self, name: str, what: str) -> None:
        if not (isinstance(name, str) and name.startswith("D") and name[1:].isdigit()
                and 1 <= int(name[1:]) <= self.num_stages):
            raise ValueError(f"unknown decoder {what} {name!r}: decoder stages are D1..D{self.num_stages}")

    def validate(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"connectivity needs a backbone name, got {self.backbone!r}")
        if self.num_stages < 1:
            raise ValueError("connectivity needs at least one encoder stage in feature_info")
        self._check_decoder_name(self.output, "output stage")
        seen = set()
        for e in self.edges:
            self._check_decoder_name(e.target, "stage in edge target")
            allowed = candidate_names(_level(e.target), self.num_stages)
            if e.source not in allowed:
                raise ValueError(
                    f"edge {e.source} -> {e.target} is not allowed: {e.target} may read only {', '.join(allowed)}"
                )
            if not isinstance(e.weight, (int, float)) or not math.isfinite(e.weight):
                raise ValueError(f"edge {e.source} -> {e.target} has a non-finite weight {e.weight!r}")
            if (e.target, e.source) in seen:
                raise ValueError(f"edge {e.source} -> {e.target} appears twice")
            seen.add((e.target, e.source))
        if self.history is not None:
            for epoch, entry in enumerate(self.history):
                for label, ws in entry.items():
                    self._check_decoder_name(label, f"label in history epoch {epoch}")
                    expected = len(candidate_names(_level(label), self.num_stages))
                    if len(ws) != expected:
                        raise ValueError(
                            f"history epoch {epoch}, {label}: {len(ws)} weights, but {label} has {expected} candidates"
                        )

    # ------------------------------------------------------------------------------------------- builders
    @classmethod
    def dense(cls, backbone: str, feature_info: Iterable[FeatureInfo], weight: float = 1.0, **kwargs) -> "Connectivity":
        """The Fully Dense Network: every decoder stage reads every candidate of T_l."""
        feature_info = list(feature_info)
        num = len(feature_info)
        edges = [Edge(f"D{l}", s, weight) for l in range(num, 0, -1) for s in candidate_names(l, num)]
        return cls(backbone, feature_info, edges, **kwargs)

    @classmethod
    def from_weights(
        cls,
        backbone: str,
        feature_info: Iterable[FeatureInfo],
        weights: dict[str, list[float]],
        history: list[dict[str, list[float]]] | None = None,
        **kwargs,
    ) -> "Connectivity":
        """All edges with the searched weights ``{label: [w over T_l]}`` (unpruned; call :meth:`prune`)."""
        feature_info = list(feature_info)
        num = len(feature_info)
        edges = []
        for label, ws in weights.items():
            if not (label.startswith("D") and label[1:].isdigit() and 1 <= int(label[1:]) <= num):
                raise ValueError(f"unknown decoder stage {label!r} in weights: stages are D1..D{num}")
            names = candidate_names(_level(label), num)
            if len(ws) != len(names):
                raise ValueError(f"{label}: {len(ws)} weights given, but {label} has {len(names)} candidates")
            edges += [Edge(label, s, float(w)) for s, w in zip(names, ws)]
        return cls(backbone, feature_info, edges, history=history, **kwargs)

    @classmethod
    def from_official_mask(cls, path_or_array: Any, backbone: str = "mobilenet_v2",
                           backbone_kwargs: dict[str, Any] | None = None,
                           feature_info: Iterable[FeatureInfo] | None = None) -> "Connectivity":
        """The connectivity of the official code's mask: a bool array ``(L, L, 2)`` (or the ``.npy`` file of one).

        Decoder index ``i`` (0 = deepest) is ``D_{L-i}``. ``mask[i, j, 0]``: it reads encoder map ``j`` counted from
        the deepest, ``E_{L-j}``; ``mask[i, j, 1]``: for ``j = 0`` the global pool ``G``, else the output of
        decoder index ``j-1``, ``D_{L-j+1}``. Every entry with ``j > i`` is an edge the FDN cannot have. The
        result is pruned of dead and duplicate stages (``prune(threshold=None)``); every edge has weight 1.
        """
        import numpy as np

        where = "official mask"
        if isinstance(path_or_array, (str, Path)):
            path = Path(path_or_array)
            if not path.is_file():
                raise FileNotFoundError(f"official mask file not found: {path}")
            where = str(path)
            try:
                path_or_array = np.load(path, allow_pickle=False) if path.suffix == ".npy" else None
            except (ValueError, OSError, EOFError):
                path_or_array = None
            if not isinstance(path_or_array, np.ndarray):
                raise ValueError(f"{where} is not a .npy array file (numpy.save's format) holding the mask")
        mask = np.asarray(path_or_array)
        if feature_info is None:
            from nni_sparsemask.fdn.backbones import build_backbone

            feature_info = build_backbone(backbone, **dict(backbone_kwargs or {})).feature_info
        info = list(feature_info)
        L = len(info)
        if mask.shape != (L, L, 2):
            raise ValueError(f"{where}: shape {mask.shape}, but backbone {backbone!r} has {L} stages: expected "
                             f"({L}, {L}, 2) (decoder stage, input counted from the deepest, encoder/decoder)")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf" or not np.isin(mask, (0, 1)).all():
                raise ValueError(f"{where}: expected a bool (or 0/1) array, got dtype {mask.dtype} with values "
                                 f"{np.unique(mask)[:5].tolist()}")
            mask = mask.astype(bool)
        edges = []
        for i, j, k in zip(*np.nonzero(mask)):
            target = f"D{L - i}"
            source = f"E{L - j}" if k == 0 else ("G" if j == 0 else f"D{L - j + 1}")
            if j > i:
                what = "a shallower encoder map" if k == 0 else "a shallower decoder stage"
                raise ValueError(f"{where}: mask[{i}, {j}, {k}] is set: {target} would read {source}, {what}; the "
                                 f"FDN lets {target} read only {', '.join(candidate_names(L - i, L))}")
            edges.append(Edge(target, source))
        meta = {"imported_from": "official SparseMask mask", "mask_file": where}
        try:
            return cls(backbone, info, edges, backbone_kwargs=dict(backbone_kwargs or {}),
                       meta=meta).prune(threshold=None)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    # ------------------------------------------------------------------------------------------- pruning
    def prune(self, threshold: float | None = 1e-3, merge_duplicates: bool = True) -> "Connectivity":
        """Section 3.3: drop edges with w < threshold, then stages without inputs or outputs, then duplicates.

        ``threshold=None`` keeps every edge and only removes dead and duplicate stages. Raises ``ValueError``
        when the output stage loses every input (nothing would reach the head).
        """
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        edges = [e for e in self.edges if threshold is None or e.weight >= threshold]
        output = self.output
        while True:
            before = (len(edges), output)
            edges = _drop_dead_stages(edges, output)
            if not any(e.target == output for e in edges):
                raise ValueError(
                    f"pruning at threshold {threshold} leaves the output stage {output} without inputs: "
                    f"no feature reaches the head; lower the threshold or search longer"
                )
            if merge_duplicates:
                edges, output = _merge_duplicates(edges, output, self.feature_info)
            if (len(edges), output) == before:
                break
        meta = dict(self.meta, threshold=threshold) if threshold is not None else dict(self.meta)
        return Connectivity(self.backbone, self.feature_info, edges, output, dict(self.backbone_kwargs),
                            self.history, meta)

    # ------------------------------------------------------------------------------------------- transfer
    def stage_mapping(self, feature_info: Iterable[FeatureInfo]) -> dict[int, Optional[int]]:
        """Section 5.1's matching: ``{old stage l: new stage}`` (1-based), the deepest stage of ``feature_info`` with
        stage l's spatial reduction, or None where the new backbone has no stage at that reduction."""
        by_reduction: dict[int, int] = {}
        for j, fi in enumerate(feature_info, start=1):
            by_reduction[fi.reduction] = j  # the deepest new stage wins
        return {i: by_reduction.get(fi.reduction) for i, fi in enumerate(self.feature_info, start=1)}

    def transfer(self, backbone: str, feature_info: Iterable[FeatureInfo] | None = None,
                 backbone_kwargs: dict[str, Any] | None = None) -> "Connectivity":
        """Section 5.1: re-map the stages onto another backbone by matching spatial reduction.

        Old stage l goes to the deepest new stage with the same reduction (the last feature of a stage carries
        the most information, section 3.1.1); several old stages landing on one new stage merge their edges
        (max weight). Stages whose reduction the new backbone lacks are dropped, then the result is pruned of
        stages left without inputs or outputs. ``feature_info`` is measured from the backbone when not given.
        """
        backbone_kwargs = dict(backbone_kwargs or {})
        if feature_info is None:
            from nni_sparsemask.fdn.backbones import build_backbone

            feature_info = build_backbone(backbone, **backbone_kwargs).feature_info
        new_info = list(feature_info)
        mapping = {"G": "G"}
        for i, j in self.stage_mapping(new_info).items():
            if j is not None:
                mapping[f"E{i}"], mapping[f"D{i}"] = f"E{j}", f"D{j}"
        merged: dict[tuple[str, str], float] = {}
        for e in self.edges:
            if e.target in mapping and e.source in mapping:
                key = (mapping[e.target], mapping[e.source])
                if key[1] in candidate_names(_level(key[0]), len(new_info)):
                    merged[key] = max(merged.get(key, e.weight), e.weight)
        if self.output not in mapping:
            raise ValueError(f"cannot transfer to {backbone!r}: it has no stage at the output's reduction")
        edges = [Edge(t, s, w) for (t, s), w in merged.items()]
        out = Connectivity(backbone, new_info, edges, mapping[self.output], backbone_kwargs, None,
                           dict(self.meta, transferred_from=self.backbone))
        return out.prune(threshold=None)

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "backbone": self.backbone,
            "backbone_kwargs": self.backbone_kwargs,
            "feature_info": [{"channels": f.channels, "reduction": f.reduction} for f in self.feature_info],
            "output": self.output,
            "edges": [{"target": e.target, "source": e.source, "weight": e.weight} for e in self.edges],
            "history": self.history,
            "meta": self.meta,
        }

    def to_json(self, path: str | Path | None = None, overwrite: bool = False) -> str:
        """Serialise; with ``path``, also write the file (refusing to replace one unless ``overwrite``)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            path = Path(path)
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            path.write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any, where: str = "connectivity") -> "Connectivity":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{where}: unsupported schema_version {version!r} (this version reads {SCHEMA_VERSION})")
        missing = [k for k in ("backbone", "feature_info", "edges") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            info = [FeatureInfo(int(f["channels"]), int(f["reduction"])) for f in data["feature_info"]]
            edges = [Edge(str(e["target"]), str(e["source"]), float(e.get("weight", 1.0))) for e in data["edges"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: malformed feature_info or edges entry ({err})") from None
        try:
            return cls(
                backbone=data["backbone"],
                feature_info=info,
                edges=edges,
                output=data.get("output", "D1"),
                backbone_kwargs=dict(data.get("backbone_kwargs") or {}),
                history=data.get("history"),
                meta=dict(data.get("meta") or {}),
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Connectivity":
        """Load from a JSON string or a file path; corrupt or invalid content raises ``ValueError``."""
        where = "connectivity"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"connectivity file not found: {path}")
            text, where = path.read_text(), str(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: corrupt JSON ({err}); re-run prune or search to write it again") from None
        return cls.from_dict(data, where)


def convert_official_mask(path: str | Path, out: str | Path, backbone: str = "mobilenet_v2",
                          overwrite: bool = False, backbone_kwargs: dict[str, Any] | None = None) -> Connectivity:
    """``sparsemask convert``: read the official mask ``path`` and write ``out`` (refused if it exists unless
    ``overwrite``); returns the connectivity."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    conn = Connectivity.from_official_mask(path, backbone, backbone_kwargs)
    conn.to_json(out, overwrite=overwrite)
    return conn


def _drop_dead_stages(edges: list[Edge], output: str) -> list[Edge]:
    """Repeat until stable: drop edges from decoder stages without inputs, and stages nobody reads."""
    while True:
        live = {e.target for e in edges}
        read = {e.source for e in edges} | {output}
        kept = [e for e in edges
                if e.target in read and not (e.source.startswith("D") and e.source not in live)]
        if len(kept) == len(edges):
            return kept
        edges = kept


def _merge_duplicates(edges: list[Edge], output: str, info: list[FeatureInfo]) -> tuple[list[Edge], str]:
    """Merge two stages of equal resolution and equal input set into the deeper one (it can feed every reader).

    Readers of the shallower stage D_a read the deeper D_b instead (D_b's readers include every stage below b,
    and a reader l of D_a has l < a < b). Duplicate edges after the redirect keep the larger weight.
    """
    inputs: dict[str, frozenset] = {}
    for e in edges:
        inputs[e.target] = inputs.get(e.target, frozenset()) | {e.source}
    names = sorted(inputs, key=_level)
    for ia, a in enumerate(names):
        for b in names[ia + 1:]:
            if inputs[a] == inputs[b] and info[_level(a) - 1].reduction == info[_level(b) - 1].reduction:
                merged: dict[tuple[str, str], float] = {}
                for e in edges:
                    if e.target == a:
                        continue
                    key = (e.target, b if e.source == a else e.source)
                    merged[key] = max(merged.get(key, e.weight), e.weight)
                return [Edge(t, s, w) for (t, s), w in merged.items()], (b if output == a else output)
    return edges, output
