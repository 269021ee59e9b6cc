"""The checks of ``sparsemask compare`` before anything starts: the experiment config and what its trials will do.

* :func:`load_config` / :func:`validate_config` -- NNI's own config classes
  (``nni.experiment.config.ExperimentConfig``: fields, types, training service), one error line for a bad file;
* :func:`plan_comparison` -- the comparison's grid (every entry a known strategy or decoder with valid
  hyper-parameters, see :mod:`.grid`), the trial settings of the ``nni_sparsemask.comparison.trial`` command
  (:mod:`.settings`) and, on the ``local`` training service, the data set root: a :class:`ComparisonPlan`;
* :func:`dry_run` -- ``sparsemask compare --dry-run``: every trial's command, and what the trials need that is not
  here (:func:`missing_pieces`: data roots, backbone weights files, CUDA devices), one line each.
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nni_sparsemask.comparison.manager import loopback_workers, nni_error_line, pin_loopback_manager_ip

__all__ = ["ComparisonPlan", "load_config", "validate_config", "plan_comparison", "TRIAL_MODULE", "DryRun",
           "dry_run", "missing_pieces", "trial_command_of"]

TRIAL_MODULE = "nni_sparsemask.comparison.trial"


def load_config(path: str | Path) -> Any:
    """The experiment config in ``path`` as NNI's ``ExperimentConfig``, validated by NNI (``canonical_copy``).

    Missing file -> ``FileNotFoundError``; bad YAML, unknown fields, wrong values -> ``ValueError`` (one line).
    A ``remote`` config whose machines are all this machine gets ``nniManagerIp: 127.0.0.1`` when it sets none
    (:func:`.manager.pin_loopback_manager_ip`).
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
    pin_loopback_manager_ip(config)
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
        trial_command: the command that runs the trial module (None likewise).
    """

    config: Any
    platform: str
    entries: Optional[list] = None
    settings: Any = None
    results_root: Optional[Path] = None
    notes: tuple = ()
    trial_command: Optional[str] = None


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


def plan_comparison(config: Any, where: str = "config", check_data: bool = True) -> ComparisonPlan:
    """Check ``config`` as a comparison: the grid, the trial settings, the data set root (local runs; not with
    ``check_data=False``, which :func:`dry_run` uses to list every missing piece instead of raising on the first)."""
    from nni_sparsemask.comparison.grid import check_search_space
    from nni_sparsemask.comparison.trial import build_parser, settings_from_args

    canonical = validate_config(config, where)
    ts = canonical.training_service
    platform = "hybrid" if isinstance(ts, list) else ts.platform
    notes = []
    tuner = getattr(canonical.tuner, "name", None) or getattr(canonical.tuner, "class_name", None)
    if tuner != "GridSearch":
        notes.append(f"tuner {tuner!r}: the comparison expects GridSearch (each grid entry once)")
    with_module = [(c, a) for c, a in ((c, _trial_args(c)) for c in _trial_commands(canonical)) if a is not None]
    arg_lists = [a for _, a in with_module]
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
        if check_data and settings.data.dataset == "voc":
            from nni_sparsemask.data.voc import resolve_sbd_root, resolve_voc_root
            try:
                resolve_voc_root(settings.data.root)
                if settings.data.sbd_root:
                    resolve_sbd_root(settings.data.sbd_root)
            except FileNotFoundError as err:
                first = str(err).splitlines()[0]
                raise FileNotFoundError(f"{where}: the trials' data set is not there ({first}); set --data-root / "
                                        "--sbd-root in the trial command") from None
    return ComparisonPlan(config, platform, entries, settings, results_root, tuple(notes), with_module[0][0])


# ------------------------------------------------------------------------------------------------ --dry-run
_SHELL_OPERATORS = ("&&", "||", ";", "|", "&")
_WEIGHTS_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass
class DryRun:
    """What ``sparsemask compare --dry-run`` shows.

    Attributes:
        plan: the checked :class:`ComparisonPlan`.
        code_directory: where the commands run (the trial code directory; on cluster services, NNI's copy of it).
        commands: one ``(parameters, command)`` per trial, in GridSearch's order: the parameters NNI hands the
            trial, and the trial command with them as ``--params`` (what runs that trial by hand).
        missing: one line per piece the trials need that is not here, saying what to provide.
        notes: remarks (e.g. what the workers need that cannot be checked from here).
    """

    plan: ComparisonPlan
    code_directory: str
    commands: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def trial_command_of(command: str, parameters: Any) -> str:
    """``command`` with ``--params JSON`` after the arguments of the trial module (before a ``&&``, ``;``, ...)."""
    tokens = shlex.split(command)
    if TRIAL_MODULE not in tokens:
        return command
    end = tokens.index(TRIAL_MODULE) + 1
    while end < len(tokens) and tokens[end] not in _SHELL_OPERATORS:
        end += 1
    tokens[end:end] = ["--params", json.dumps(parameters)]
    return " ".join(t if t in _SHELL_OPERATORS else shlex.quote(t) for t in tokens)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".;: ") if text else type(err).__name__


def _here(path: Optional[str], base: Path) -> Optional[Path]:
    """``path`` as the trials see it: ``~`` expanded, relative to the trial code directory."""
    if path is None or str(path) == "":
        return None
    out = Path(str(path)).expanduser()
    return out if out.is_absolute() else base / out


def _data_missing(data: Any, base: Path) -> list[str]:
    from nni_sparsemask.data.datasets import check_root, dataset_entry

    entry = dataset_entry(data.dataset)
    if not entry.needs_root:
        return []
    root = _here(data.root, base)
    lines = []
    if data.dataset == "voc":
        splits = ["val"] + ([] if data.sbd_root else ["train"])  # train_aug: VOC lists + SBD
        what = "--data-root in the trial command: the folder holding VOCdevkit/VOC2012"
    else:
        splits = [s for s in (entry.train_split, entry.eval_split) if s]
        what = f"--data-root in the trial command: the folder of {data.dataset} in its archive's layout"
    for split in splits:
        try:
            check_root(data.dataset, root, split)
        except (FileNotFoundError, ValueError) as err:
            lines.append(f"data set {data.dataset} ({split} split): {_first_line(err)}; set {what}")
            break
    if data.sbd_root:
        from nni_sparsemask.data.voc import resolve_sbd_root
        try:
            resolve_sbd_root(_here(data.sbd_root, base))
        except FileNotFoundError as err:
            lines.append(f"SBD (train_aug): {_first_line(err)}; set --sbd-root in the trial command to "
                         "SBD's benchmark_RELEASE folder (or drop it to train on VOC train only)")
    return lines


def _weights_missing(model: Any, base: Path) -> list[str]:
    from nni_sparsemask.run.config import PRETRAINED

    weights = model.backbone_weights
    if weights is None or weights == PRETRAINED:  # random init / the DigitScenes classifier, trained on first use
        return []
    path = _here(weights, base)
    if str(weights).endswith(_WEIGHTS_SUFFIXES) or "/" in str(weights) or path.exists():
        if path.is_file():
            return []
        return [f"backbone weights file {weights} not found ({path}): provide that state_dict file, or set "
                "model.backbone_weights in the trial's --settings"]
    try:  # a torchvision weights name: its file must be in the torch hub cache (the trials download nothing)
        import os

        import torch
        from torchvision.models import get_model_weights

        url = get_model_weights(model.backbone)[str(weights)].url
    except Exception:  # not a torchvision backbone or weights name: the trial says so
        return []
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return []
    return [f"{model.backbone} weights {weights} not in the torch hub cache: copy {cached.name} (from {url}) to "
            f"{cached.parent} (the trials download nothing), or give a local file as model.backbone_weights"]


def _devices_missing(gpus: int, accelerator: str, platform: str) -> list[str]:
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    where = "this machine" if platform == "local" else "this machine (every machine of machineList)"
    if gpus and have < gpus:
        return [f"trialGpuNumber is {gpus}: each trial needs {gpus} CUDA device(s), {where} has {have}; run it on a "
                "machine with GPUs, or set trialGpuNumber: 0 and --settings '{\"accelerator\": \"cpu\"}'"]
    if accelerator in ("gpu", "cuda") and have == 0:
        return [f"trial setting accelerator {accelerator!r} needs a CUDA device, {where} has none; run it on a "
                "machine with a GPU, or set --settings '{\"accelerator\": \"cpu\"}'"]
    return []


def missing_pieces(plan: ComparisonPlan, code_directory: Path, gpus: int = 0) -> list[str]:
    """One line per piece the trials of ``plan`` need that is not on this machine: the data set roots
    (``--data-root`` / ``--sbd-root``, in the expected layout), a backbone weights file (a local path, or a
    torchvision weights name whose file is not cached), and ``gpus`` CUDA devices per trial. Paths are read as
    the trials read them, relative to ``code_directory``."""
    if plan.settings is None:
        return []
    return (_data_missing(plan.settings.data, code_directory) + _weights_missing(plan.settings.model, code_directory)
            + _devices_missing(gpus, plan.settings.accelerator, plan.platform))


def dry_run(config: Any, where: str = "config") -> DryRun:
    """``sparsemask compare --dry-run``: the checks of a launch (:func:`plan_comparison`), every trial's command,
    and, when the trials run on this machine (``local``, or ``remote`` on loopback machines only), what they need
    that is missing (:func:`missing_pieces`). Nothing is launched, nothing written."""
    from nni_sparsemask.comparison.grid import expand_search_space

    plan = plan_comparison(config, where, check_data=False)
    canonical = validate_config(config, where)
    ts = canonical.training_service
    code = getattr(ts, "trial_code_directory", None) or canonical.trial_code_directory or "."
    for role in ("master", "worker"):  # kubeflow keeps it per role
        code = getattr(getattr(ts, role, None), "code_directory", None) or code
    code_directory = Path(str(code)).expanduser().resolve()
    out = DryRun(plan, str(code_directory), notes=list(plan.notes))
    parameters = expand_search_space(canonical.search_space)
    command = plan.trial_command or canonical.trial_command or ""
    out.commands = [(p, trial_command_of(command, p) if plan.trial_command else command) for p in parameters]
    gpus = int(getattr(ts, "trial_gpu_number", None) or canonical.trial_gpu_number or 0) \
        if not isinstance(ts, list) else 0
    if plan.platform == "local" or loopback_workers(canonical):
        out.missing = missing_pieces(plan, code_directory, gpus)
    elif plan.settings is not None:
        data = plan.settings.data
        needs = [f"--data-root {data.root}" if data.root else "",
                 f"--sbd-root {data.sbd_root}" if data.sbd_root else "",
                 f"backbone weights {plan.settings.model.backbone_weights}"
                 if plan.settings.model.backbone_weights else "",
                 f"{gpus} GPU(s) per trial" if gpus else ""]
        needs = [n for n in needs if n]
        out.notes.append(f"the trials run on the {plan.platform} workers, whose files and devices are not checked "
                         "from here" + (f"; they need: {', '.join(needs)}" if needs else ""))
    return out
