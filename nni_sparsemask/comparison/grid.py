"""The grid of the strategy comparison: one :class:`GridEntry` per trial, parsed and checked before anything runs.

An entry is a strategy (searched, then retrained) or a hand-designed decoder (retrained)::

    {"params": {"_name": "maskconnect", "k": 3}, "seed": 0}     # nested choice: _name + hyper-parameters
    {"method": "l1", "lambda_sparse": 0.005, "seed": 0}          # the flat form
    {"params": {"_name": "sparsemask", "cost": "latency", "target_fps": 150}, "seed": 0}   # a cost-aware point

:func:`check_search_space` expands an NNI search space the way GridSearch will and parses every entry, so that
``sparsemask compare`` refuses a wrong grid before NNI's manager starts (:mod:`.trial` runs one entry).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

__all__ = ["GridEntry", "parse_entry", "expand_search_space", "check_search_space"]


@dataclass(frozen=True)
class GridEntry:
    """One entry of the comparison grid.

    Attributes:
        method: a strategy name (``STRATEGIES``) or a hand-designed decoder (``DECODERS``).
        kind: ``"oneshot"`` (searched with NasExperiment), ``"sampler"`` (random decoders) or ``"decoder"``.
        params: the validated strategy arguments (``seed`` included; samplers also ``sample``); ``{}`` for decoders.
        seed: the grid's seed (strategy and training).
    """

    method: str
    kind: str
    params: dict
    seed: int

    @property
    def strategy_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != "sample"}

    @property
    def sample(self) -> int:
        return int(self.params.get("sample", 0))

    @property
    def key(self) -> str:
        """The entry's directory name: method, hyper-parameters (sorted) and seed, e.g. ``l1_lambda_sparse=0.005
        _threshold=0.001_seed=1``."""
        parts = [self.method] + [f"{k}={_format_value(v)}" for k, v in sorted(self.params.items()) if k != "seed"]
        parts.append(f"seed={self.seed}")
        return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))

    def describe(self) -> str:
        hyper = ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(self.params.items()) if k != "seed")
        return f"{self.method}({hyper}) seed {self.seed}" if hyper else f"{self.method} seed {self.seed}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _known_methods() -> str:
    from nni_sparsemask.run.registry import DECODERS, STRATEGIES
    return f"strategies {', '.join(STRATEGIES)}; hand-designed decoders {', '.join(DECODERS)}"


def parse_entry(parameters: Any) -> GridEntry:
    """The :class:`GridEntry` of one trial's parameters (see the module docstring); ``ValueError`` when invalid."""
    from nni_sparsemask.run.registry import DECODERS, STRATEGIES, split_search_params, validate_strategy_args

    if not isinstance(parameters, Mapping):
        raise ValueError(f"trial parameters must be an object such as {{'params': {{'_name': 'fcn'}}, 'seed': 0}}, "
                         f"got {parameters!r}")
    seed = parameters.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"trial parameter 'seed' must be an integer >= 0, got {seed!r}")
    nested = parameters.get("params")
    if isinstance(nested, Mapping) and "_name" in nested:
        extra = sorted(set(parameters) - {"params", "seed"})
        if extra:
            raise ValueError(f"trial parameters: unexpected {extra} beside 'params' and 'seed'")
        hyper = dict(nested)
        method = hyper.pop("_name")
    else:
        method = parameters.get("method", parameters.get("strategy"))
        hyper = {k: v for k, v in parameters.items() if k not in ("method", "strategy", "seed")}
    if not isinstance(method, str) or not method:
        raise ValueError(f"trial parameters name no method: give params._name (nested choice) or 'method'; "
                         f"got {dict(parameters)!r}")
    if method in STRATEGIES:
        kind = STRATEGIES.get(method).kind
        sample = hyper.pop("sample", 0) if kind == "sampler" else None
        if "seed" in hyper:
            raise ValueError(f"give the seed of {method!r} as the grid's 'seed', not as its hyper-parameter")
        params = validate_strategy_args(method, {**hyper, "seed": seed})
        _, search = split_search_params(method, params)
        if search:  # a cost-aware point: its settings must make a SearchConfig
            from nni_sparsemask.run.config import SearchConfig
            SearchConfig(**search)
        if sample is not None:
            if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < params["samples"]:
                raise ValueError(f"'sample' of {method!r} must be an integer in [0, samples={params['samples']}), "
                                 f"got {sample!r}")
            params["sample"] = sample
        return GridEntry(method, kind, params, seed)
    if method in DECODERS:
        if hyper:
            raise ValueError(f"hand-designed decoder {method!r} takes no hyper-parameters, got {sorted(hyper)}")
        return GridEntry(method, "decoder", {}, seed)
    raise ValueError(f"unknown method {method!r}; known: {_known_methods()}")


def expand_search_space(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every parameter set NNI's GridSearch tuner hands out for ``space`` (in its order)."""
    import nni
    from nni.algorithms.hpo.gridsearch_tuner import GridSearchTuner

    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"the search space must be a non-empty JSON object, got {space!r}")
    for name, spec in _walk_specs(space):
        if spec.get("_type") != "choice":
            raise ValueError(f"search space parameter {name!r} is {spec.get('_type')!r}: the comparison grid takes "
                             "'choice' parameters only (a grid over discrete values)")
    tuner_logger = logging.getLogger("nni.tuner.gridsearch")
    level = tuner_logger.level
    tuner_logger.setLevel(logging.WARNING)  # it logs the grid size at INFO: noise here
    try:
        tuner = GridSearchTuner()
        try:
            tuner.update_search_space(dict(space))
        except Exception as err:  # NNI's own parser: any malformed spec
            raise ValueError(f"malformed search space ({type(err).__name__}: {err})") from None
        out = []
        while True:
            try:
                out.append(tuner.generate_parameters(len(out)))
            except nni.NoMoreTrialError:
                return out
    finally:
        tuner_logger.setLevel(level)


def _walk_specs(space: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, spec in space.items():
        if name == "_name":
            continue
        if not isinstance(spec, Mapping) or "_type" not in spec or "_value" not in spec:
            raise ValueError(f"search space parameter {prefix + name!r} must be {{'_type': ..., '_value': [...]}}, "
                             f"got {spec!r}")
        yield prefix + name, spec
        if spec["_type"] == "choice" and isinstance(spec["_value"], list):
            for value in spec["_value"]:
                if isinstance(value, Mapping) and "_name" in value:
                    yield from _walk_specs(value, f"{prefix}{name}.{value['_name']}.")


def check_search_space(space: Mapping[str, Any]) -> list[GridEntry]:
    """Every entry of the grid, each validated (unknown methods, bad hyper-parameters, duplicates -> ValueError)."""
    entries, seen = [], {}
    for parameters in expand_search_space(space):
        try:
            entry = parse_entry(parameters)
        except ValueError as err:
            raise ValueError(f"search space entry {json.dumps(parameters, sort_keys=True)}: {err}") from None
        if entry.key in seen:
            raise ValueError(f"search space entries {seen[entry.key]} and {json.dumps(parameters, sort_keys=True)} "
                             f"are the same run ({entry.key}); remove one")
        seen[entry.key] = json.dumps(parameters, sort_keys=True)
        entries.append(entry)
    return entries
