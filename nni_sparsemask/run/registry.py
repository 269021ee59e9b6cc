"""Registries of the baselines: decoders (``fcn``, ``unet``, ``sparseacn``, ``deeplabv3``, ``fdn``; the peers of
segmentation_models_pytorch ``smp-unet``, ``smp-fpn``, ``smp-deeplabv3plus``, ``smp-pan``, ``smp-linknet``, with
the ``peers`` extra) and strategies (``sparsemask``, ``random``, ``rand_rule``, ``maskconnect``, ``l1``).

A :class:`Registry` is a small dict that raises ``ValueError`` on a duplicate or unknown name (listing the known
ones). Each :class:`StrategyEntry` declares the arguments it accepts as :class:`Param` specs, so that a CLI can
reject an argument that does not belong to the chosen strategy (``--k`` with ``sparsemask``) with
:func:`validate_strategy_args` before anything runs::

    args = validate_strategy_args("maskconnect", {"k": 3})          # -> {"k": 3, "seed": 0}
    strategy = build_strategy("maskconnect", {"k": 3}, run_dir="runs/mc3")   # a MaskConnect NNI strategy
    validate_strategy_args("sparsemask", {"k": 3})                   # ValueError: k is not an argument of ...

Strategy kinds: ``"oneshot"`` builds an NNI strategy (run it with ``NasExperiment``); ``"sampler"`` builds a
:class:`ConnectivitySampler`, whose ``sample(backbone, feature_info)`` gives the decoders to retrain one by one.
Nothing heavy is imported until an entry is built.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, TypeVar

from nni_sparsemask.nas.config import SparseMaskConfig
from nni_sparsemask.run.config import PAPER_DECODER_LR_MULT

if TYPE_CHECKING:  # annotations only: reading the registry (the CLI's --help) imports no torch
    from nni_sparsemask.fdn.backbones import FeatureInfo

__all__ = ["Registry", "Param", "DecoderEntry", "StrategyEntry", "ConnectivitySampler", "DECODERS", "STRATEGIES",
           "decoder_connectivity", "build_decoder", "validate_strategy_args", "build_strategy",
           "available_decoders", "available_strategies", "check_strategy_space", "split_search_params",
           "check_decoder_backbone"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry; ``register`` refuses duplicates, ``get`` refuses unknown names (listing the known ones)."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)


# ------------------------------------------------------------------------------------------------ decoders
@dataclass(frozen=True)
class DecoderEntry:
    """A decoder: ``connectivity`` builds a Connectivity of the FDN space (None for a head of its own: DeepLabV3,
    the smp peers). A head of its own has ``build(backbone, num_classes, channels, backbone_kwargs,
    backbone_weights) -> nn.Module`` and ``check(backbone, feature_info)``, which refuses a backbone it cannot take
    (checked before a run writes anything). ``decoder_lr_mult`` is its learning rate over the encoder's when a
    training does not set one (``TrainConfig.decoder_lr_mult`` None)."""

    name: str
    description: str
    connectivity: Callable[..., Any] | None = None
    default_channels: int = 64
    build: Callable[..., Any] | None = None
    check: Callable[..., None] | None = None
    decoder_lr_mult: float = PAPER_DECODER_LR_MULT

    @property
    def in_fdn_space(self) -> bool:
        return self.connectivity is not None


def _deeplabv3(backbone, num_classes, channels, backbone_kwargs, backbone_weights):
    from nni_sparsemask.baselines.deeplab import DeepLabV3

    return DeepLabV3(backbone, num_classes, aspp_channels=channels, backbone_weights=backbone_weights,
                     backbone_kwargs=backbone_kwargs)


def _deeplabv3_check(backbone, feature_info):
    from nni_sparsemask.baselines.deeplab import SUPPORTED_BACKBONES

    if backbone not in SUPPORTED_BACKBONES:
        raise ValueError(f"DeepLabV3 supports backbone(s) {', '.join(SUPPORTED_BACKBONES)}, got {backbone!r}")


def _smp_peer(peer: str) -> tuple[Callable[..., Any], Callable[..., None]]:
    """``(build, check)`` of the smp peer decoder ``peer`` (smp imported when one is built or checked)."""

    def build(backbone, num_classes, channels, backbone_kwargs, backbone_weights):
        from nni_sparsemask.baselines.smp_peers import build_smp_network

        return build_smp_network(peer, backbone, num_classes, channels, backbone_kwargs, backbone_weights)

    def check(backbone, feature_info):
        from nni_sparsemask.baselines.smp_peers import check_backbone

        check_backbone(peer, backbone, feature_info)

    return build, check


#: smp peer -> (description, smp's default width, decoder learning rate over the encoder's). The multiplier is the
#: paper's 10x unless 1x did better at the demo's settings (``benchmarks/RESULTS.md``, "smp peers"): at 10x
#: (decoder lr 0.2) U-Net reached 31.4 mIoU, FPN 16.1 and PAN 11.5, at 1x 36.5, 54.5 and 52.7; DeepLabV3+ 52.2 at
#: 10x, 45.0 at 1x; Linknet learnt at neither (11.3, 10.4: its 4-channel block on this encoder, see
#: ``narrowest_channels``)
_SMP_PEERS = {"unet": ("U-Net", 256, 1.0), "fpn": ("FPN", 256, 1.0), "deeplabv3plus": ("DeepLabV3+", 256, 10.0),
              "pan": ("PAN", 32, 1.0), "linknet": ("Linknet", 32, 10.0)}


def _decoders() -> Registry[DecoderEntry]:
    from nni_sparsemask.baselines import decoders as d

    reg: Registry[DecoderEntry] = Registry("decoder")
    reg.register("fcn", DecoderEntry("fcn", "FCN: D1 <- E_L only", d.fcn))
    reg.register("unet", DecoderEntry("unet", "U-Net chain: D_l <- E_l + D_{l+1}", d.unet))
    reg.register("sparseacn", DecoderEntry("sparseacn", "SparseACN: D_l <- E_l + chain layers at offsets 2^k",
                                           d.sparseacn))
    reg.register("fdn", DecoderEntry("fdn", "Fully Dense Network: every edge", d.dense))
    reg.register("deeplabv3", DecoderEntry("deeplabv3", "mobile DeepLabV3: dilated MobileNetV2 (OS 16) + ASPP's "
                                           "1x1 and image-pooling branches", None, default_channels=256,
                                           build=_deeplabv3, check=_deeplabv3_check))
    for peer, (label, channels, lr_mult) in _SMP_PEERS.items():
        build, check = _smp_peer(peer)
        reg.register(f"smp-{peer}", DecoderEntry(
            f"smp-{peer}", f"{label} of segmentation_models_pytorch on the backbone's stages (extra: peers)", None,
            default_channels=channels, build=build, check=check, decoder_lr_mult=lr_mult))
    return reg


DECODERS: Registry[DecoderEntry] = _decoders()


def available_decoders() -> list[str]:
    return DECODERS.names()


def decoder_connectivity(name: str, backbone: str = "mobilenet_v2", feature_info: list[FeatureInfo] | None = None,
                         backbone_kwargs: dict[str, Any] | None = None):
    """The :class:`Connectivity` of the FDN-space decoder ``name`` (``feature_info`` measured when not given)."""
    entry = DECODERS.get(name)
    if entry.connectivity is None:
        raise ValueError(f"decoder {name!r} is not a point of the FDN space (it has its own head); "
                         f"use build_decoder({name!r}, ...) for the network. FDN-space decoders: "
                         f"{', '.join(n for n in DECODERS if DECODERS[n].in_fdn_space)}")
    if feature_info is None:
        from nni_sparsemask.fdn.backbones import build_backbone

        feature_info = build_backbone(backbone, **dict(backbone_kwargs or {})).feature_info
    return entry.connectivity(backbone, feature_info, backbone_kwargs)


def build_decoder(name: str, backbone: str = "mobilenet_v2", num_classes: int = 21,
                  decoder_channels: int | None = None, backbone_kwargs: dict[str, Any] | None = None,
                  backbone_weights: str | os.PathLike | None = None):
    """The network (encoder + decoder ``name`` + head) as a plain ``nn.Module`` with ``.encoder``.

    ``decoder_channels`` is ``C_dec`` for FDN-space decoders (default 64), ``aspp_channels`` for ``deeplabv3``
    (default 256) and the decoder's width for the smp peers (default smp's: see ``baselines/smp_peers.py``).
    """
    entry = DECODERS.get(name)
    channels = entry.default_channels if decoder_channels is None else decoder_channels
    if entry.connectivity is None:
        return entry.build(backbone, num_classes, channels, backbone_kwargs, backbone_weights)
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.fdn.pruned import build_pruned

    encoder = build_backbone(backbone, weights=backbone_weights, **dict(backbone_kwargs or {}))
    conn = entry.connectivity(backbone, encoder.feature_info, backbone_kwargs)
    return build_pruned(conn, num_classes, channels, encoder=encoder)


def check_decoder_backbone(name: str, backbone: str, feature_info: list[FeatureInfo]) -> None:
    """Refuse a decoder with its own head on a ``backbone`` it cannot take (DeepLabV3: MobileNetV2 only; an smp
    peer: a stage at each stride it reads, and smp installed). FDN-space decoders take any backbone."""
    entry = DECODERS.get(name)
    if entry.check is not None:
        entry.check(backbone, feature_info)


# ------------------------------------------------------------------------------------------------ strategies
@dataclass(frozen=True)
class Param:
    """One argument of a strategy: its type, default and admissible range (``low``/``high``, inclusive unless the
    ``*_open`` flag is set)."""

    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def check(self, strategy: str, name: str, value: Any) -> Any:
        what = f"argument {name!r} of strategy {strategy!r}"
        if self.type is str:
            if value not in self.choices:
                raise ValueError(f"{what} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{what} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{what} must be a finite number, got {value!r}")
            value = float(value)
        lo_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        hi_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (lo_ok and hi_ok):
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            raise ValueError(f"{what} must be in {'(' if self.low_open else '['}{lo}, {hi}"
                             f"{')' if self.high_open or self.high is None else ']'}, got {value!r}")
        return value


@dataclass(frozen=True)
class StrategyEntry:
    """A strategy: ``kind`` ``"oneshot"`` (an NNI strategy) or ``"sampler"``; ``params`` the arguments it accepts."""

    name: str
    kind: str
    description: str
    factory: Callable[..., Any]
    params: dict[str, Param] = field(default_factory=dict)
    noise_on_w: bool = True  # oneshot: takes noise on w in training forwards (MaskConnect samples instead)
    #: params that set the run's SearchConfig (the cost-aware search), not the strategy's constructor
    search_params: tuple = ()


@dataclass
class ConnectivitySampler:
    """A random-search baseline ready to sample: ``sample(backbone, feature_info)`` -> ``samples`` Connectivities."""

    kind: str
    samples: int = 8
    density: float = 0.5
    seed: int = 0

    def sample(self, backbone: str, feature_info: list[FeatureInfo], backbone_kwargs: dict[str, Any] | None = None):
        from nni_sparsemask.baselines.samplers import rand_rule_connectivities, random_connectivities

        fn = {"random": random_connectivities, "rand_rule": rand_rule_connectivities}[self.kind]
        return fn(backbone, feature_info, self.samples, self.density, self.seed, backbone_kwargs)


def _sparsemask(**kw):
    from nni_sparsemask.nas.strategy import SparseMask

    return SparseMask(**kw)


def _maskconnect(**kw):
    from nni_sparsemask.baselines.maskconnect import MaskConnect

    return MaskConnect(**kw)


def _l1(**kw):
    from nni_sparsemask.baselines.maskconnect import L1

    return L1(**kw)


_SEED = Param(int, 0, "random seed", low=0)
#: SearchConfig fields a grid point may set as strategy arguments (a cost-aware point, a warm-up); None: not given
_SEARCH = {"cost": Param(str, None, "cost-aware search: latency, bytes or flops", choices=("latency", "bytes", "flops")),
           "target_fps": Param(float, None, "with cost latency: the network's target FPS", low=0.0, low_open=True),
           "budget": Param(float, None, "the decoder's cost budget, a fraction of the dense decoder's", low=0.0,
                           high=1.0, low_open=True, high_open=True),
           "speedup": Param(float, None, "the network's target speed, a multiple of the dense FDN's", low=1.0,
                            low_open=True),
           "cost_weight": Param(float, None, "mu of the cost term (default 1)", low=0.0, low_open=True),
           "arc_warmup_epochs": Param(int, None, "first search epochs with w held (default 0)", low=0)}
_THRESHOLD = Param(float, SparseMaskConfig.threshold, "sigma: keep edges with w >= threshold", low=0.0, high=1.0, low_open=True,
                   high_open=True)
_SAMPLES = Param(int, 8, "number of distinct decoders sampled", low=1)
_DENSITY = Param(float, 0.5, "probability that an edge is on", low=0.0, high=1.0, low_open=True)


def _strategies() -> Registry[StrategyEntry]:
    reg: Registry[StrategyEntry] = Registry("strategy", "strategies")
    reg.register("sparsemask", StrategyEntry(
        "sparsemask", "oneshot", "SparseMask: sparse loss of Eq. 2, prune at sigma", _sparsemask,
        {"lambda_sparse": Param(float, SparseMaskConfig.lambda_sparse, "lambda of Eq. 3", low=0.0), "threshold": _THRESHOLD,
         "seed": _SEED, **_SEARCH}, search_params=tuple(_SEARCH)))
    reg.register("l1", StrategyEntry(
        "l1", "oneshot", "SparseMask with the L1 loss (Fig. 4; lambda 1e-3, 5e-3, 1e-2)", _l1,
        {"lambda_sparse": Param(float, 1e-3, "strength of the L1 loss", low=0.0), "threshold": _THRESHOLD,
         "seed": _SEED}))
    reg.register("maskconnect", StrategyEntry(
        "maskconnect", "oneshot", "MaskConnect: exactly k inputs per stage (Fig. 4; k = 2..5)", _maskconnect,
        {"k": Param(int, 2, "inputs per decoder stage (Fig. 4: 2..5)", low=2, high=5), "seed": _SEED},
        noise_on_w=False))
    reg.register("random", StrategyEntry(
        "random", "sampler", "Rand: every edge on with probability density",
        lambda **kw: ConnectivitySampler("random", **kw),
        {"samples": _SAMPLES, "density": _DENSITY, "seed": _SEED}))
    reg.register("rand_rule", StrategyEntry(
        "rand_rule", "sampler", "Rand (Rule): D_l reads from {E_l, G} only, D1 from any of T_1",
        lambda **kw: ConnectivitySampler("rand_rule", **kw),
        {"samples": _SAMPLES, "density": _DENSITY, "seed": _SEED}))
    return reg


STRATEGIES: Registry[StrategyEntry] = _strategies()


def available_strategies() -> list[str]:
    return STRATEGIES.names()


def validate_strategy_args(name: str, args: dict[str, Any] | None = None, fill_defaults: bool = True
                           ) -> dict[str, Any]:
    """Check ``args`` against the arguments strategy ``name`` accepts; return them (with defaults filled in).

    ``None`` values count as "not given" (what argparse leaves for an option not on the command line). An
    argument the strategy does not accept is a ``ValueError`` naming the strategies that do accept it.
    """
    entry = STRATEGIES.get(name)
    given = {k: v for k, v in (args or {}).items() if v is not None}
    unknown = sorted(set(given) - set(entry.params))
    if unknown:
        parts = []
        for arg in unknown:
            owners = [n for n in STRATEGIES if arg in STRATEGIES[n].params]
            belongs = f"it belongs to {', '.join(owners)}" if owners else "no strategy takes it"
            parts.append(f"{arg!r} ({belongs})")
        raise ValueError(f"strategy {name!r} does not accept {', '.join(parts)}; it accepts: "
                         f"{', '.join(sorted(entry.params)) or 'no arguments'}")
    out = {arg: entry.params[arg].check(name, arg, value) for arg, value in given.items()}
    if fill_defaults:
        for arg, spec in entry.params.items():
            if spec.default is not None:  # None: "not given" (the cost-aware settings), left out
                out.setdefault(arg, spec.default)
    return out


def split_search_params(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(strategy arguments, SearchConfig fields)`` of the validated ``params`` of strategy ``name``."""
    search = STRATEGIES.get(name).search_params
    return ({k: v for k, v in params.items() if k not in search}, {k: v for k, v in params.items() if k in search})


def check_strategy_space(name: str, params: dict[str, Any], num_stages: int) -> None:
    """Refuse strategy arguments that make no search of an FDN space with ``num_stages`` decoder stages:
    MaskConnect's ``k`` must be below the candidates of the largest choice (``D1``: ``2 * num_stages``), or every
    stage keeps every input and the "search" is the dense FDN."""
    from nni_sparsemask.fdn.connectivity import candidate_names

    if name == "maskconnect":
        k, most = params.get("k"), len(candidate_names(1, num_stages))
        if isinstance(k, int) and k >= most:
            raise ValueError(f"maskconnect k={k} keeps every input of every stage of this {num_stages}-stage space "
                             f"(its largest stage, D1, has {most} candidates): that is the dense FDN, not a search; "
                             f"use --k < {most}")


def build_strategy(name: str, args: dict[str, Any] | None = None, **options: Any) -> Any:
    """Validate the CLI ``args`` and build strategy ``name``: an NNI strategy (oneshot) or a :class:`ConnectivitySampler`.

    ``options`` go to the one-shot strategy's class unchecked (e.g. ``run_dir``, ``arc_learning_rate``); samplers
    take none.
    """
    entry = STRATEGIES.get(name)
    kwargs, search = split_search_params(name, validate_strategy_args(name, args))
    if search:
        raise ValueError(f"{', '.join(sorted(search))} set the run's search (SearchConfig), not strategy {name!r}; "
                         "run_search takes them from the strategy arguments")
    if options and entry.kind == "sampler":
        raise ValueError(f"strategy {name!r} is a sampler and takes only {', '.join(sorted(entry.params))}; "
                         f"got extra options {', '.join(sorted(options))}")
    clash = sorted(set(options) & (set(entry.params) - set(entry.search_params)))  # search params: SearchConfig's
    if clash:
        raise ValueError(f"give {', '.join(clash)} in args (validated), not as extra options")
    return entry.factory(**kwargs, **options)
