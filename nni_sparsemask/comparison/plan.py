"""The checks of ``sparsemask compare`` before anything starts: the experiment config and what its trials will do.

* :func:`load_config` / :func:`validate_config` -- NNI's own config classes
  (``nni.experiment.config.ExperimentConfig``: fields, types, training service), one error line for a bad file;
* :func:`plan_comparison` -- the comparison's grid (every entry a known strategy or decoder with valid
  hyper-parameters, see :mod:`.grid`), the trial settings of the ``nni_sparsemask.comparison.trial`` command
  (:mod:`.settings`) and, on the ``local`` training service, the data set root: a :class:`ComparisonPlan`.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nni_sparsemask.comparison.manager import nni_error_line

__all__ = ["ComparisonPlan", "load_config", "validate_config", "plan_comparison", "TRIAL_MODULE"]

TRIAL_MODULE = "nni_sparsemask.comparison.trial"


def load_config(path: str | Path) -> Any:
    """The experiment config in ``path`` as NNI's ``ExperimentConfig``, validated by NNI (``canonical_copy``).

    Missing file -> ``FileNotFoundError``; bad YAML, unknown fields, wrong values -> ``ValueError`` (one line).
    """
    import yaml
    from nni.experiment.config import ExperimentConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    from nni.experiment.config.utils import internal as config_internals

    try:
        config = ExperimentConfig.load(str(path))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except Exception as err:  # NNI raises TypeError / ValueError / AttributeError / AssertionError for bad fields
        raise ValueError(f"{path} is not a valid NNI experiment config: {nni_error_line(err)}") from None
    finally:
        # ExperimentConfig.load leaves its base path set when the config fails to load, and every later load
        # then fails on an assert; it has been captured by the config objects by now
        config_internals.unset_base_path()
    if type(config) is not ExperimentConfig:
        raise ValueError(f"{path} is a {type(config).__name__}: the comparison is an HPO experiment (nnictl cannot "
                         "launch NAS experiments); use experimentType hpo")
    validate_config(config, str(path))
    return config


def validate_config(config: Any, where: str) -> Any:
    """NNI's own validation of ``config``; returns the canonical copy (paths absolute, shortcuts filled in)."""
    try:
        return config.canonical_copy()
    except Exception as err:
        raise ValueError(f"{where}: invalid NNI experiment config: {nni_error_line(err)}") from None


@dataclass
class ComparisonPlan:
    """A checked experiment: NNI's config plus what the comparison's trial will do.

    Attributes:
        config: the ``ExperimentConfig`` (as loaded; NNI canonicalises it again on start).
        platform: the training service (``local``, ``remote``, ...; ``hybrid`` for a list).
        entries: the grid (``trial.GridEntry`` list), None when the trial command is not ``nni_sparsemask.comparison.trial``.
        settings: the trial's ``TrialSettings`` (None likewise).
        results_root: where the trials write run directories, when it is on this machine (``local``), else None.
        notes: remarks for the user (e.g. a tuner other than GridSearch).
    """

    config: Any
    platform: str
    entries: Optional[list] = None
    settings: Any = None
    results_root: Optional[Path] = None
    notes: tuple = ()


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise ValueError(message)


def _trial_commands(canonical: Any) -> list[str]:
    ts_list = canonical.training_service if isinstance(canonical.training_service, list) else \
        [canonical.training_service]
    commands = [canonical.trial_command or ""]
    for ts in ts_list:
        commands.append(getattr(ts, "trial_command", "") or "")
        for role in ("worker", "ps", "master"):  # kubeflow
            spec = getattr(ts, role, None)
            if spec is not None:
                commands.append(spec.command or "")
        for spec in getattr(ts, "task_roles", None) or []:  # frameworkcontroller
            commands.append(spec.command or "")
    return [c for c in commands if c]


def _trial_args(command: str) -> Optional[list[str]]:
    """The arguments given to ``python -m nni_sparsemask.comparison.trial`` in a trial command (None when absent)."""
    try:
        tokens = shlex.split(command)
    except ValueError as err:
        raise ValueError(f"trial command {command!r} cannot be parsed: {err}") from None
    if TRIAL_MODULE not in tokens:
        return None
    args = []
    for token in tokens[tokens.index(TRIAL_MODULE) + 1:]:
        if token in ("&&", "||", ";", "|", "&"):
            break
        args.append(token)
    return args


def plan_comparison(config: Any, where: str = "config") -> ComparisonPlan:
    """Check ``config`` as a comparison: the grid, the trial settings, the data set root (local runs)."""
    from nni_sparsemask.comparison.grid import check_search_space
    from nni_sparsemask.comparison.trial import build_parser, settings_from_args

    canonical = validate_config(config, where)
    ts = canonical.training_service
    platform = "hybrid" if isinstance(ts, list) else ts.platform
    notes = []
    tuner = getattr(canonical.tuner, "name", None) or getattr(canonical.tuner, "class_name", None)
    if tuner != "GridSearch":
        notes.append(f"tuner {tuner!r}: the comparison expects GridSearch (each grid entry once)")
    arg_lists = [a for a in (_trial_args(c) for c in _trial_commands(canonical)) if a is not None]
    if not arg_lists:
        notes.append(f"the trial command does not run {TRIAL_MODULE}: the grid and settings are not checked")
        return ComparisonPlan(config, platform, notes=tuple(notes))
    try:
        args = build_parser(_RaisingParser).parse_args(arg_lists[0])
    except ValueError as err:
        raise ValueError(f"{where}: trial command arguments {arg_lists[0]}: {err}") from None
    try:
        settings = settings_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{where}: trial settings: {err}") from None
    try:
        entries = check_search_space(canonical.search_space)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    results_root = None
    if platform == "local":
        results_root = (Path(ts.trial_code_directory) / args.results).resolve()
        if settings.data.dataset == "voc":
            from nni_sparsemask.data.voc import resolve_sbd_root, resolve_voc_root
            try:
                resolve_voc_root(settings.data.root)
                if settings.data.sbd_root:
                    resolve_sbd_root(settings.data.sbd_root)
            except FileNotFoundError as err:
                first = str(err).splitlines()[0]
                raise FileNotFoundError(f"{where}: the trials' data set is not there ({first}); set --data-root / "
                                        "--sbd-root in the trial command") from None
    return ComparisonPlan(config, platform, entries, settings, results_root, tuple(notes))
