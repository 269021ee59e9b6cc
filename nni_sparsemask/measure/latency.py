"""Per-edge cost tables of the FDN decoder: what :mod:`nni_sparsemask.fdn.costmodel` predicts a decoder's cost from.

:func:`profile_space` measures the operations a decoder stage runs (:func:`nni_sparsemask.fdn.fusion.fuse`) on the
real modules, at the run's input size, in the deployment form (:func:`nni_sparsemask.measure.deploy.as_measured`:
BN folded, channels_last, batch 1):

* per source (every ``E_l``, ``D_l`` and ``G``): an edge, ``EdgeConv`` (ReLU6 -> 1x1 conv to C_dec);
* per source size: the out-of-place sum of two C_dec maps (edges of one group); per target size: the in-place add
  of a group into the stage's sum; per (source size, target size): the bilinear upsampling (``resize_to``);
* once: the encoder and the head (``base``, the same for every decoder).

``kind`` is ``"latency"`` (seconds on ``device``: the fastest of the ``torch.utils.benchmark`` blocks of
``blocked_autorange``, since on a shared machine interference only adds time) or a count of
:func:`nni_sparsemask.measure.cost.inference_cost`: ``"bytes"`` (written), ``"flops"`` or ``"ops"`` (operator
calls). Counted tables predict :func:`inference_cost` of ``build_pruned(conn)`` exactly (tested); a latency table
predicts the time of the whole network up to what separate timing misses (``benchmarks/cost_predictor.py``).

A :class:`CostTable` carries a :class:`CostKey` (kind, space, C_dec, classes, input size, device, threads, torch
version) and is saved as JSON. With ``cache_dir`` (the caller passes the project's cache, e.g.
``nni_sparsemask.data.digitscenes.cache_root()``) a table is profiled once per key and loaded afterwards; loading a
table made for another key raises ``ValueError`` naming every field that differs.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from nni_sparsemask.fdn.backbones import Encoder, FeatureInfo, build_backbone
from nni_sparsemask.fdn.connectivity import Connectivity, candidate_names
from nni_sparsemask.fdn.costmodel import DecoderCosts, connectivity_cost, size_key
from nni_sparsemask.fdn.fusion import EdgeConv, resize_to
from nni_sparsemask.fdn.space import SegmentationHead
from nni_sparsemask.measure.cost import inference_cost
from nni_sparsemask.measure.deploy import as_measured

__all__ = ["CostKey", "CostTable", "KINDS", "profile_space", "space_key", "load_cost_table", "cost_table_path", "device_name"]

#: kind -> unit
KINDS = {"latency": "s", "bytes": "bytes", "flops": "FLOP", "ops": "calls"}
SCHEMA_VERSION = 1


def device_name(device: str | torch.device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<CPU model name>`` (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device.type}:{model or platform.processor() or platform.machine() or 'unknown'}"


@dataclass
class CostKey:
    """What a table is valid for. ``device`` and ``threads`` are ``""`` / 0 for counted (machine-free) kinds."""

    kind: str
    backbone: str
    backbone_kwargs: dict[str, Any]
    feature_info: list[list[int]]
    decoder_channels: int
    num_classes: int
    input_size: list[int]
    device: str = ""
    threads: int = 0
    torch_version: str = torch.__version__

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown cost kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        self.backbone_kwargs = json.loads(json.dumps(self.backbone_kwargs or {}))  # tuples -> lists, as in JSON
        self.feature_info = [[int(c), int(r)] for c, r in self.feature_info]
        self.input_size = [int(v) for v in self.input_size]

    def mismatches(self, other: "CostKey") -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: table {mine[k]!r}, wanted {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CostTable:
    """Cost coefficients (:class:`~nni_sparsemask.fdn.costmodel.DecoderCosts`) + what they are valid for.

    ``primitives`` keeps the measured operations (``conv``, ``add``, ``iadd``, ``upsample``, ``encoder``, ``head``).
    """

    key: CostKey
    costs: DecoderCosts
    primitives: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, conn: Connectivity, include_base: bool = True) -> float:
        """The cost of ``build_pruned(conn)`` (with the encoder and head unless ``include_base=False``)."""
        return connectivity_cost(conn, self.costs, include_base)

    def check(self, expected: CostKey, where: str = "cost table") -> None:
        wrong = self.key.mismatches(expected)
        if wrong:
            raise ValueError(f"{where} was made for another setting ({'; '.join(wrong)}); profile this one with "
                             f"profile_space or pass the table made for it")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "key": asdict(self.key), "costs": self.costs.to_dict(),
                "primitives": self.primitives, "meta": self.meta}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = "cost table") -> "CostTable":
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{where}: not a cost table of schema version {SCHEMA_VERSION}")
        try:
            key = CostKey(**data["key"])
            costs = DecoderCosts.from_dict(data["costs"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: malformed cost table ({err})") from None
        return cls(key, costs, dict(data.get("primitives") or {}), dict(data.get("meta") or {}))


def load_cost_table(path: str | Path, expected: CostKey | None = None) -> CostTable:
    """Load a table; with ``expected``, a table made for another kind / space / size / device is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cost table not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON ({err}); delete it to profile again") from None
    table = CostTable.from_dict(data, str(path))
    if expected is not None:
        table.check(expected, str(path))
    return table


def cost_table_path(cache_dir: str | Path, key: CostKey) -> Path:
    return Path(cache_dir) / "cost_tables" / f"{key.kind}-{key.backbone}-{key.digest()}.json"


# --------------------------------------------------------------------------------------------------- operations
class _Add(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x


class _IAdd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(x)


class _Resize(nn.Module):
    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, self.size)


class _Head(nn.Module):
    def __init__(self, head: SegmentationHead, size: Sequence[int]):
        super().__init__()
        self.head, self.size = head, [int(s) for s in size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x, self.size)


def _timer(device: torch.device, threads: int, min_run_time: float) -> Callable[[nn.Module, tuple], float]:
    from torch.utils import benchmark

    def measure(module: nn.Module, shape: tuple) -> float:
        first = next(module.parameters(), None)
        here = first.device if first is not None else torch.device("cpu")
        net, x, _ = as_measured(module, torch.randn(*shape, device=here), inference=True)  # a copy
        net, x = net.to(device), x.to(device)
        if isinstance(module, (_Add, _IAdd)):  # two operands, as in fuse
            y = torch.randn_like(x)
            fn = (lambda: x + y) if isinstance(module, _Add) else (lambda: x.add_(y))
        else:
            fn = lambda: net(x)  # noqa: E731
        with torch.no_grad():
            for _ in range(3):
                fn()
            m = benchmark.Timer(stmt="fn()", globals={"fn": torch.no_grad()(fn)},
                                num_threads=threads).blocked_autorange(min_run_time=min_run_time)
        return float(min(m.times))  # the least disturbed block: interference only ever adds time

    return measure


def _warn_if_busy(threads: int) -> None:
    """Warn when other processes keep the CPU busy: their threads and ours oversubscribe the cores, and every
    timed operation comes out many times slower (measured here: a 5 ms encoder timed at 500 ms at load 4 on 2
    cores), which a cached table would then keep. Measured over half a second, not by the lagging load average
    (:mod:`nni_sparsemask.measure.cpuload`)."""
    import os
    import warnings

    from nni_sparsemask.measure.cpuload import other_busy_cores

    busy, how = other_busy_cores()
    cores = os.cpu_count() or 1
    if busy > max(1.0, cores - threads + 0.5):
        warnings.warn(f"profiling latency while the machine is busy ({busy:.1f} {how}, {cores} cores, timing with "
                      f"{threads} threads): the table will be inflated by contention; profile on an idle machine "
                      "(sparsemask profile --refresh) before a cost-aware search", RuntimeWarning, stacklevel=3)


def _counter(kind: str) -> Callable[[nn.Module, tuple], float]:
    attr = {"bytes": "bytes_written", "flops": "flops", "ops": "ops"}[kind]

    def measure(module: nn.Module, shape: tuple) -> float:
        cost = inference_cost(module, tuple(shape[2:]), in_channels=shape[1], inference=True)
        return float(getattr(cost, attr))

    return measure


def _resolve(space: Any, backbone: str | None, backbone_kwargs: dict | None, decoder_channels: int | None,
             num_classes: int | None) -> tuple[Encoder, str, dict, int, int]:
    """(encoder, backbone, kwargs, C_dec, classes) from an ``FDNSpace``, an ``Encoder`` or a ``feature_info``."""
    if hasattr(space, "encoder") and hasattr(space, "decoder_channels"):  # FDNSpace (or a model holding one)
        encoder, backbone = space.encoder, space.backbone_name
        backbone_kwargs = dict(space.backbone_kwargs)
        decoder_channels = space.decoder_channels if decoder_channels is None else decoder_channels
        num_classes = space.num_classes if num_classes is None else num_classes
    elif isinstance(space, Encoder):
        encoder, backbone = space, backbone or space.name
    else:
        info = [FeatureInfo(*f) if not isinstance(f, FeatureInfo) else f for f in space]
        if backbone is None:
            raise ValueError("profile_space on a feature_info list needs backbone= (the encoder is timed too)")
        encoder = build_backbone(backbone, **dict(backbone_kwargs or {}))
        if list(encoder.feature_info) != info:
            raise ValueError(f"feature_info {info} is not that of backbone {backbone!r} {backbone_kwargs or ''}: "
                             f"{encoder.feature_info}")
    if decoder_channels is None or num_classes is None:
        raise ValueError("profile_space needs decoder_channels= and num_classes= (an FDNSpace carries them)")
    return encoder, backbone, dict(backbone_kwargs or {}), int(decoder_channels), int(num_classes)


def _key(space: Any, kind: str, input_size: int | Sequence[int], decoder_channels: int | None,
         num_classes: int | None, backbone: str | None, backbone_kwargs: dict[str, Any] | None,
         device: str | torch.device, num_threads: int | None) -> tuple[CostKey, Encoder]:
    if kind not in KINDS:
        raise ValueError(f"unknown cost kind {kind!r}; kinds: {', '.join(KINDS)}")
    h, w = (input_size, input_size) if isinstance(input_size, int) else (int(v) for v in input_size)
    encoder, backbone, kwargs, c_dec, classes = _resolve(space, backbone, backbone_kwargs, decoder_channels,
                                                         num_classes)
    threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    timed = kind == "latency"
    key = CostKey(kind, backbone, kwargs, [[f.channels, f.reduction] for f in encoder.feature_info], c_dec,
                  classes, [h, w], device_name(device) if timed else "", threads if timed else 0)
    return key, encoder


def space_key(space_or_feature_info: Any, kind: str = "latency", input_size: int | Sequence[int] = 256, *,
              decoder_channels: int | None = None, num_classes: int | None = None, backbone: str | None = None,
              backbone_kwargs: dict[str, Any] | None = None, device: str | torch.device = "cpu",
              num_threads: int | None = None) -> CostKey:
    """The :class:`CostKey` :func:`profile_space` would give these arguments (nothing measured): what a table
    file must carry to be used for them (``load_cost_table(path, space_key(...))``)."""
    return _key(space_or_feature_info, kind, input_size, decoder_channels, num_classes, backbone, backbone_kwargs,
                device, num_threads)[0]


def profile_space(space_or_feature_info: Any, kind: str = "latency", input_size: int | Sequence[int] = 256, *,
                  decoder_channels: int | None = None, num_classes: int | None = None, backbone: str | None = None,
                  backbone_kwargs: dict[str, Any] | None = None, device: str | torch.device = "cpu",
                  num_threads: int | None = None, min_run_time: float = 0.1, cache_dir: str | Path | None = None,
                  refresh: bool = False) -> CostTable:
    """The :class:`CostTable` of ``kind`` for an ``FDNSpace``, an ``Encoder`` or a ``feature_info`` list (then
    ``backbone`` is required) at ``input_size``.

    Latency is timed on ``device`` with ``num_threads`` (default ``torch.get_num_threads()``) for at least
    ``min_run_time`` seconds per operation. With ``cache_dir`` the table is read from / written to
    :func:`cost_table_path` (``refresh=True`` profiles again).
    """
    key, encoder = _key(space_or_feature_info, kind, input_size, decoder_channels, num_classes, backbone,
                        backbone_kwargs, device, num_threads)
    h, w = key.input_size
    c_dec, classes, threads, timed = key.decoder_channels, key.num_classes, key.threads, kind == "latency"
    device = torch.device(device)
    path = cost_table_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.is_file() and not refresh:
        return load_cost_table(path, key)

    if timed and device.type == "cpu":
        _warn_if_busy(threads)
    measure = _timer(device, threads, min_run_time) if timed else _counter(kind)
    with torch.no_grad():
        was_training = encoder.training
        features, _ = encoder.eval()(torch.zeros(1, 3, h, w, device=next(encoder.parameters()).device))
        encoder.train(was_training)
    L = len(features)
    head_module = _Head(SegmentationHead(c_dec, classes), (h, w))

    def base() -> tuple[float, float]:  # encoder and head: the largest items, the same for every decoder
        return measure(encoder, (1, 3, h, w)), measure(head_module, (1, c_dec) + tuple(features[0].shape[-2:]))

    first = base()
    sizes = {f"E{l}": tuple(int(v) for v in f.shape[-2:]) for l, f in enumerate(features, start=1)}
    sizes["G"] = (1, 1)
    chans = {f"E{l}": f.channels for l, f in enumerate(encoder.feature_info, start=1)}
    chans.update({f"D{l}": c_dec for l in range(1, L + 1)}, G=encoder.feature_info[-1].channels)
    memo: dict[tuple, float] = {}

    def once(op: str, module: Callable[[], nn.Module], shape: tuple) -> float:
        if (op, shape) not in memo:
            memo[(op, shape)] = measure(module(), shape)
        return memo[(op, shape)]

    conv = {n: once("conv", lambda: EdgeConv(c, c_dec, bn=False), (1, c) + sizes["E" + n[1:] if n[0] == "D" else n])
            for n, c in chans.items()}
    pairs = {(sizes["E" + n[1:] if n[0] == "D" else n], sizes[f"E{l}"])
             for l in range(1, L + 1) for n in candidate_names(l, L)}
    add = {size_key(s): once("add", _Add, (1, c_dec) + s) for s in set(sizes.values())}
    iadd = {size_key(t): once("iadd", _IAdd, (1, c_dec) + t) for _, t in pairs}
    upsample = {f"{size_key(s)}->{size_key(t)}": once(f"up{t}", lambda t=t: _Resize(t), (1, c_dec) + s)
                for s, t in pairs if s != t and s != (1, 1)}
    # timed again at the end, the lower time kept: a disturbed window at the start once put the encoder at 1.7x
    # and FCN's predicted speed-up at 1.90x instead of 2.2-2.4x, which refused a reachable --speedup
    enc, head = (min(a, b) for a, b in zip(first, base())) if timed else first
    costs = DecoderCosts.from_primitives(KINDS[kind], sizes, conv, add, iadd, upsample, base=enc + head)
    primitives = {"conv": conv, "add": add, "iadd": iadd, "upsample": upsample, "encoder": enc, "head": head}
    table = CostTable(key, costs, primitives, {"form": "BN folded, channels_last", "batch_size": 1,
                                               "min_run_time": min_run_time if timed else None})
    if path is not None:
        table.save(path, overwrite=True)
    return table
