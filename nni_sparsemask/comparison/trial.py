"""The trial of the strategy comparison: one grid entry end to end (``python -m nni_sparsemask.comparison.trial``).

The comparison is an NNI HPO experiment (``experiments/comparison*.yml``, GridSearch tuner) whose trials each run
one entry of the grid::

    {"params": {"_name": "maskconnect", "k": 3}, "seed": 0}     # a strategy: search -> prune -> retrain -> evaluate
    {"params": {"_name": "fcn"}, "seed": 1}                     # a hand-designed decoder: retrain -> evaluate

``params`` is a nested ``choice`` of the search space (``_name`` = a strategy of ``STRATEGIES`` or a decoder of
``DECODERS``, the other keys its hyper-parameters); the flat form ``{"method": "l1", "lambda_sparse": 0.005,
"seed": 0}`` is accepted too. Samplers (``random``, ``rand_rule``) take ``sample`` (which of their ``samples``
decoders to retrain, default 0). The grid's ``seed`` seeds the strategy and the training; the data set is the
same for every entry.

Experiment-wide settings (data, backbone, epochs, FPS size) come from the command line: ``--preset quick`` (the
DigitScenes CPU comparison) or ``--preset paper`` (PASCAL VOC, MobileNetV2, GPU), changed by ``--settings`` (a
JSON object or file, merged into the preset) and ``--data-root`` / ``--sbd-root``.

Nothing lost, nothing done twice: every entry has its own directory under ``--results``, named by its
parameters (:attr:`GridEntry.key`)::

    RESULTS/<key>/config.json      the entry and the settings (a rerun with other settings is refused)
    RESULTS/<key>/search/          the search run (strategies): connectivity.json, search.json, ...
    RESULTS/<key>/retrain/         the retrain run: config.json, history.csv, checkpoints/, model.pt,
                                   metrics.json (the row of Table 1; written last)
    RESULTS/<key>/error.txt        the traceback of the last failed attempt (removed when the entry finishes)

A rerun of a finished entry reports its ``metrics.json`` again without training; an interrupted one continues
(``resume``) from its last checkpoint. A lock (``RESULTS/.locks/<key>.lock``) keeps two trials from working
on the same entry at once (NNI may hand a resumed entry out twice).

Reported to NNI: every validation epoch of the search and of the retraining as an intermediate result
(``{"default": val mIoU, ..., "phase": "search" | "retrain"}``) and at the end the final result
``{"default": mIoU, "fps", "params_decoder", "edges", "run_dir", ...}``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from nni_sparsemask.comparison.grid import GridEntry, check_search_space, expand_search_space, parse_entry
from nni_sparsemask.run.pipeline import PRETRAINED, DataConfig, ModelConfig, TrainConfig, checked_fields, config_from_dict

__all__ = ["TrialSettings", "GridEntry", "PRESETS", "preset_settings", "parse_entry", "expand_search_space",
           "check_search_space", "run_entry", "build_parser", "settings_from_args", "main"]

Log = Callable[[str], None]
SEARCH_SUBDIR, RETRAIN_SUBDIR, ERROR_FILE, LOCK_DIR = "search", "retrain", "error.txt", ".locks"


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class TrialSettings:
    """What every entry of one comparison shares.

    Attributes:
        data / model: the data set and the network around the decoder (see :mod:`.pipeline`).
        search_epochs / search_lr / arc_lr: the one-shot search (SparseMask, L1, MaskConnect).
        retrain_epochs / retrain_lr: retraining every decoder with L_task (searched and hand-designed alike).
        fps_size / fps_batch / fps_seconds: the FPS measurement (input side, batch, timed seconds).
        pretrain: overrides of :class:`~.pretrain.PretrainConfig` when ``model.backbone_weights`` is
            ``"pretrained"`` (the cached DigitScenes digit classifier).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search_epochs: int = 15
    search_lr: float = 0.02
    arc_lr: float = 0.02
    retrain_epochs: int = 15
    retrain_lr: float = 0.02
    fps_size: int = 512
    fps_batch: int = 1
    fps_seconds: float = 2.0
    pretrain: dict = field(default_factory=dict)
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        for name in ("search_epochs", "retrain_epochs", "fps_size", "fps_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"trial setting {name} must be an integer >= 1, got {value!r}")
        for name in ("search_lr", "arc_lr", "retrain_lr", "fps_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"trial setting {name} must be a number > 0, got {value!r}")
        if not isinstance(self.pretrain, dict):
            raise ValueError(f"trial setting pretrain must be an object of PretrainConfig fields, got "
                             f"{self.pretrain!r}")
        from nni_sparsemask.run.pretrain import PretrainConfig
        unknown = sorted(set(self.pretrain) - {f.name for f in dataclasses.fields(PretrainConfig)})
        if unknown:
            raise ValueError(f"trial setting pretrain: unknown PretrainConfig field(s) {unknown}")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ValueError(f"trial setting accelerator must be auto, cpu, gpu, cuda or mps, got {self.accelerator!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Any, where: str = "trial settings") -> "TrialSettings":
        values = checked_fields(cls, data, where, noun="setting")
        if "data" in values:
            values["data"] = config_from_dict(DataConfig, values["data"], f"{where}: data")
        if "model" in values:
            values["model"] = config_from_dict(ModelConfig, values["model"], f"{where}: model")
        return cls(**values)


#: ``--preset`` values: plain dicts (settings are built on use, so importing this module does no work)
PRESETS: dict[str, dict[str, Any]] = {
    # DigitScenes at the demo's size (64px scenes, the demo's convnet and its cached pre-trained weights) with
    # fewer scenes and epochs, so that the whole grid runs in about 20 minutes on a 2-core CPU (one trial at a time)
    "quick": {
        "data": {"dataset": "digitscenes", "image_size": 64, "train_scenes": 800, "val_scenes": 200,
                 "batch_size": 16},
        "model": {"backbone": "convnet", "backbone_kwargs": {"widths": [16, 32, 48, 64, 96]},
                  "backbone_weights": PRETRAINED, "decoder_channels": 32},
        "search_epochs": 4, "search_lr": 0.02, "arc_lr": 0.02, "retrain_epochs": 5, "retrain_lr": 0.02,
        "fps_size": 256, "fps_batch": 1, "fps_seconds": 2.0, "pretrain": {}, "accelerator": "auto",
    },
    # the paper's setting on a GPU: PASCAL VOC 2012 (train_aug with --sbd-root), MobileNetV2 with ImageNet weights
    "paper": {
        "data": {"dataset": "voc", "root": None, "sbd_root": None, "image_size": 512, "batch_size": 16},
        "model": {"backbone": "mobilenet_v2", "backbone_kwargs": {}, "backbone_weights": "IMAGENET1K_V1",
                  "decoder_channels": 64},
        "search_epochs": 30, "search_lr": 0.007, "arc_lr": 0.02, "retrain_epochs": 50, "retrain_lr": 0.007,
        "fps_size": 512, "fps_batch": 1, "fps_seconds": 2.0, "pretrain": {}, "accelerator": "auto",
    },
}


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if key in ("data", "model", "pretrain") and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def preset_settings(name: str, overrides: Optional[Mapping[str, Any]] = None) -> TrialSettings:
    """The settings of preset ``name`` with ``overrides`` merged in (``data``/``model``/``pretrain`` per field)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    merged = _merge(PRESETS[name], overrides or {})
    if merged["data"].get("dataset") == "voc" and not merged["data"].get("root"):
        raise ValueError("the VOC comparison needs the data set: pass --data-root (the folder holding "
                         "VOCdevkit/VOC2012) and, for train_aug, --sbd-root")
    return TrialSettings.from_dict(merged, f"preset {name!r} with --settings")


# ------------------------------------------------------------------------------------------------ NNI reporting
@contextlib.contextmanager
def _reporting_phase(phase: str, enabled: bool) -> Iterator[None]:
    """While the block runs (a search or a retraining), NNI reports go to the trial, once each:

    - every intermediate result (a validation epoch) is sent to the trial's channel, tagged with ``phase``;
    - a final result (Lightning's end of fit) is not: the trial reports its one final result itself;
    - an in-process one-shot ``NasExperiment`` runs its model under a channel of its own (the sequential
      engine's) and calls ``nni.get_next_parameter()`` on it: its reports still reach that engine as without this
      block, and the trial's parameter record (``nni.trial._params``, which the engine leaves replaced, as NNI's
      ``Evaluator.mock_runtime`` notes) is put back afterwards.

    The project's training code reports through ``nni.report_intermediate_result`` / ``nni.report_final_result``,
    looked up at call time; those two names are what is replaced here, for the block only.
    """
    if not enabled:
        yield
        return
    import nni
    import nni.trial
    from nni.runtime.env_vars import trial_env_vars
    from nni.runtime.trial_command_channel import get_default_trial_command_channel

    trial_channel = get_default_trial_command_channel()
    params = nni.trial._params
    parameter_id = params["parameter_id"] if params else None
    original_intermediate, original_final = nni.report_intermediate_result, nni.report_final_result
    sequence = [nni.trial._intermediate_seq]

    def under_inner_engine() -> bool:
        return get_default_trial_command_channel() is not trial_channel

    def intermediate(metric: Any) -> None:
        if under_inner_engine():
            original_intermediate(metric)
        value = {**metric, "phase": phase} if isinstance(metric, Mapping) else metric
        trial_channel.send_metric(type="PERIODICAL", parameter_id=parameter_id,
                                  trial_job_id=trial_env_vars.NNI_TRIAL_JOB_ID, sequence=sequence[0], value=value)
        sequence[0] += 1

    def final(metric: Any) -> None:
        if under_inner_engine():
            original_final(metric)

    nni.report_intermediate_result, nni.report_final_result = intermediate, final
    try:
        yield
    finally:
        nni.report_intermediate_result, nni.report_final_result = original_intermediate, original_final
        nni.trial._params = params
        nni.trial._intermediate_seq = sequence[0]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released when the process ends, however it ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (one trial per entry is still the normal case)
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ one entry
def final_result(metrics: Mapping[str, Any], run_dir: Path, reused: bool = False) -> dict[str, Any]:
    """What the trial reports to NNI at the end (``default`` = mIoU), from a retrain run's ``metrics.json``."""
    def number(key: str) -> Optional[float]:
        value = metrics.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return None if math.isnan(float(value)) else float(value)

    miou = number("miou")
    if miou is None:
        raise ValueError(f"{run_dir / 'metrics.json'} has no mIoU; delete the run directory and run the entry again")
    return {"default": miou, "miou": miou, "pixel_accuracy": number("pixel_accuracy"), "fps": number("fps"),
            "params_encoder": number("params_encoder"), "params_decoder": number("params_decoder"),
            "flops": number("flops"), "edges": metrics.get("edges"), "stages": metrics.get("stages"), "method": metrics.get("method"),
            "seed": metrics.get("seed"), "run_dir": str(run_dir.resolve()), "reused": reused}


def _retrain(out: Path, entry: GridEntry, settings: TrialSettings, model: ModelConfig,
             connectivity: Optional[Path], *, report: bool, progress: bool, log: Log) -> dict[str, Any]:
    """``workflow.run_retrain`` of the entry (resumable), reporting every epoch to NNI and keeping the grid entry's
    own ``params`` (a sampler's ``sample``) in the results."""
    from nni_sparsemask.run.steps import run_retrain

    train = TrainConfig(epochs=settings.retrain_epochs, learning_rate=settings.retrain_lr, seed=entry.seed)
    decoder = entry.method if entry.kind == "decoder" else None
    log(f"[trial] retrain {entry.describe()}: {train.epochs} epochs, run dir {out}")
    with _reporting_phase("retrain", report):
        return run_retrain(out, settings.data, model, train, connectivity=connectivity, decoder=decoder,
                           fps_size=settings.fps_size, fps_batch=settings.fps_batch, fps_seconds=settings.fps_seconds,
                           resume=True, progress=progress, accelerator=settings.accelerator, log=log,
                           method=entry.method, params=entry.params, report_to_nni=report)


def run_entry(entry: GridEntry, settings: TrialSettings, results: str | Path, *, report: bool = False,
              progress: bool = False, log: Log = print) -> dict[str, Any]:
    """Run ``entry`` end to end under ``results`` (see the module docstring) and return its final result.

    ``report``: send intermediate results to NNI (inside a trial). A finished entry is not run again; an
    interrupted one resumes; an entry directory written with other settings is refused (``ValueError``). On an
    exception the traceback is saved in the entry's ``error.txt`` and the exception propagates.
    """
    from nni_sparsemask.run.rundir import RunDir, read_json

    results = Path(results)
    entry_dir = results / entry.key
    retrain_dir = entry_dir / RETRAIN_SUBDIR
    with _file_lock(results / LOCK_DIR / f"{entry.key}.lock"):
        # resume=True: a new directory is created, an existing one must hold the same entry and settings
        config = {"command": "comparison-entry", "method": entry.method, "params": entry.params, "seed": entry.seed,
                  "entry": entry.key, "settings": settings.to_dict()}
        try:
            run = RunDir(entry_dir, config, resume=True)
        except ValueError as err:
            if not str(err).startswith("cannot resume"):
                raise
            raise ValueError(f"{entry_dir} was run with other settings ({str(err).split('(', 1)[-1].split(')')[0]})"
                             f"; use another --results for these settings, or delete that directory") from None
        if (retrain_dir / "metrics.json").is_file():
            log(f"[trial] {entry.describe()}: finished before, reusing {retrain_dir / 'metrics.json'}")
            return final_result(read_json(retrain_dir / "metrics.json"), retrain_dir, reused=True)
        try:
            metrics = _run_entry(entry, settings, run.path, report=report, progress=progress, log=log)
        except BaseException:
            run.file(ERROR_FILE).write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {entry.describe()} failed:\n"
                                            f"{traceback.format_exc()}")
            raise
        run.file(ERROR_FILE).unlink(missing_ok=True)
    return final_result(metrics, retrain_dir)


def _run_entry(entry: GridEntry, settings: TrialSettings, entry_dir: Path, *, report: bool, progress: bool,
               log: Log) -> dict[str, Any]:
    from nni_sparsemask.run.pipeline import resolve_backbone_weights
    from nni_sparsemask.run.steps import run_search

    model = settings.model
    if model.backbone_weights is not None:
        # one file for the search and the retraining; pre-trained once per machine (the lock keeps concurrent
        # trials from training the same cached backbone side by side)
        from nni_sparsemask.run.pretrain import backbone_cache_dir
        with _file_lock(backbone_cache_dir() / ".pretrain.lock"):
            weights = resolve_backbone_weights(model, settings.data, log, settings.pretrain, progress=progress)
        model = dataclasses.replace(model, backbone_weights=weights)
    connectivity = None
    if entry.kind != "decoder":
        search_dir = entry_dir / SEARCH_SUBDIR
        with _reporting_phase("search", report):
            run_search(search_dir, entry.method, entry.strategy_args, settings.data, model,
                       epochs=settings.search_epochs, learning_rate=settings.search_lr,
                       arc_learning_rate=settings.arc_lr, resume=True, progress=progress,
                       accelerator=settings.accelerator, log=log)
        connectivity = search_dir / "connectivity.json"
        if entry.kind == "sampler":
            connectivity = search_dir / "samples" / f"sample-{entry.sample:02d}.json"
    return _retrain(entry_dir / RETRAIN_SUBDIR, entry, settings, model, connectivity, report=report,
                    progress=progress, log=log)


# ------------------------------------------------------------------------------------------------ command line
def build_parser(parser_class: type = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The trial's command line (``parser_class``: e.g. one that raises instead of exiting, to check a config)."""
    p = parser_class(prog="python -m nni_sparsemask.comparison.trial",
                                description="One entry of the strategy comparison, as an NNI trial (parameters from "
                                            "nni.get_next_parameter(), or --params outside NNI).")
    p.add_argument("--results", default="runs/comparison",
                   help="root of the entries' run directories (default runs/comparison, relative to the trial's "
                        "working directory = trialCodeDirectory)")
    p.add_argument("--preset", default="quick", help=f"settings preset: {', '.join(PRESETS)} (default quick)")
    p.add_argument("--settings", default=None,
                   help="JSON object (or a .json file) merged into the preset, e.g. '{\"retrain_epochs\": 2}'")
    p.add_argument("--data-root", default=None, help="VOC: the folder holding VOCdevkit/VOC2012")
    p.add_argument("--sbd-root", default=None, help="VOC: SBD benchmark_RELEASE folder (train_aug)")
    p.add_argument("--params", default=None,
                   help="run this entry outside NNI: a JSON object such as '{\"params\": {\"_name\": \"fcn\"}, "
                        "\"seed\": 0}'")
    p.add_argument("--progress", action="store_true", help="show progress bars (off in trials: they flood the logs)")
    return p


def _json_arg(text: str, what: str) -> Any:
    path = Path(text)
    if not text.lstrip().startswith("{") and path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON ({err}): {text!r}") from None


def settings_from_args(args: argparse.Namespace) -> TrialSettings:
    overrides = _json_arg(args.settings, "--settings") if args.settings else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--settings must be a JSON object, got {overrides!r}")
    data = dict(overrides.get("data") or {})
    if args.data_root is not None:
        data["root"] = args.data_root
    if args.sbd_root is not None:
        data["sbd_root"] = args.sbd_root
    if data:
        overrides = {**overrides, "data": data}
    return preset_settings(args.preset, overrides)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = _print_flush
    try:
        settings = settings_from_args(args)
        if args.params is not None:
            parameters, inside_nni = _json_arg(args.params, "--params"), False
        else:
            import nni
            parameters, inside_nni = nni.get_next_parameter(), True
            if parameters is None:
                log("[trial] NNI has no parameters for this trial (the grid is done); nothing to run")
                return 0
        entry = parse_entry(parameters)
    except (ValueError, FileNotFoundError) as err:
        print(f"sparsemask trial: error: {err}", file=sys.stderr)
        return 2
    log(f"[trial] {entry.describe()} -> {Path(args.results) / entry.key}")
    try:
        result = run_entry(entry, settings, args.results, report=inside_nni, progress=args.progress, log=log)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"sparsemask trial: error: {entry.describe()}: {err}", file=sys.stderr)
        return 2
    # any other exception (out of memory, a bug) ends the process with its traceback: NNI records the trial as
    # failed, with this log, and goes on with the other entries
    if inside_nni:
        import nni
        nni.report_final_result(result)
    log(f"[trial] {entry.describe()}: mIoU {result['miou']:.4f}, FPS {result['fps']}, decoder params "
        f"{result['params_decoder']}, edges {result['edges']}; {result['run_dir']}")
    return 0


def _print_flush(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    sys.exit(main())
