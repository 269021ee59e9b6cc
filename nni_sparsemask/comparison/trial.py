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

Experiment-wide settings (data, backbone, epochs, FPS size; :mod:`.settings`) come from the command line:
``--preset quick`` (the DigitScenes CPU comparison) or ``--preset paper`` (PASCAL VOC, MobileNetV2, GPU), changed
by ``--settings`` (a JSON object or file, merged into the preset) and ``--data-root`` / ``--sbd-root``.

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

Reported to NNI inside a trial (NNI's trial environment: ``run.lightning.in_nni_trial``; not with ``--params``),
with ``nni.report_intermediate_result`` / ``nni.report_final_result``: every validation epoch of the retraining
(``{"default": val mIoU, ...}``), then the trial's one final result ``{"default": mIoU, "fps", "run_dir", ...}``.
Not the search: a one-shot search is an in-process ``NasExperiment``, whose engine hands its model out through
NNI's trial API and leaves it as the process's current parameter (every later report would carry the engine's
parameter id): inside a trial it runs in a process of its own (:func:`_search_in_own_process`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from nni_sparsemask.comparison.grid import GridEntry, check_search_space, expand_search_space, parse_entry
from nni_sparsemask.comparison.settings import PRESETS, TrialSettings, preset_settings
from nni_sparsemask.run.config import SEARCH_LEGACY, ModelConfig, TrainConfig

__all__ = ["TrialSettings", "GridEntry", "PRESETS", "preset_settings", "parse_entry", "expand_search_space",
           "check_search_space", "run_entry", "build_parser", "settings_from_args", "main"]

Log = Callable[[str], None]
SEARCH_SUBDIR, RETRAIN_SUBDIR, ERROR_FILE, LOCK_DIR = "search", "retrain", "error.txt", ".locks"


# ------------------------------------------------------------------------------------------------ search apart

#: trial settings added after the first release (the search's w settings), as earlier comparisons ran them
_SETTINGS_LEGACY = {k: SEARCH_LEGACY[k] for k in ("arc_optimizer", "arc_noise", "arc_weight_decay", "freeze_bn")}

def _search_in_own_process(target: Callable[..., Any], kwargs: Mapping[str, Any], log: Log,
                           poll_seconds: float = 2.0) -> None:
    """``target(**kwargs, log=...)`` in a process of its own (``spawn``, a picklable ``target``), started without
    NNI's trial environment: what it does to NNI's module state stays there, and it cannot find the trial's channel.
    Its ``log`` lines come back to ``log``, an exception it raises is raised here (its traceback as the cause), and
    it stops when this process goes away."""
    import multiprocessing

    from nni.runtime.env_vars import trial_env_vars

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_own_process_main, args=(sender, os.getpid(), poll_seconds, target, dict(kwargs)),
                              name="sparsemask-search")  # not a daemon: its data loaders may start workers
    saved = {name: os.environ.pop(name) for name in trial_env_vars._fields if name in os.environ}
    try:
        process.start()  # with this environment, without NNI's trial variables
    finally:
        os.environ.update(saved)
    sender.close()
    outcome: Optional[tuple[str, Any]] = None
    try:
        while outcome is None:
            kind, payload = receiver.recv()  # EOFError: it ended without an outcome (killed), told below
            if kind == "log":
                log(payload)
            else:
                outcome = (kind, payload)
    except EOFError:
        pass
    finally:
        receiver.close()
        if outcome is None and process.is_alive():  # interrupted here (Ctrl-C, an error in log): it goes too
            process.terminate()
        process.join()
    if outcome is None:
        raise RuntimeError(f"the search process ended without a result (exit code {process.exitcode}); "
                           "its output is in the log above")
    if outcome[0] == "error":
        error, text = outcome[1]
        raise error from RuntimeError(f"in the search process:\n{text}")


def _own_process_main(sender: Any, parent_pid: int, poll_seconds: float, target: Callable[..., Any],
                      kwargs: dict[str, Any]) -> None:
    """The body of :func:`_search_in_own_process`'s process: runs ``target``, sends back log lines and the outcome."""
    from nni_sparsemask.run.sideprocess import exit_with_parent

    exit_with_parent(parent_pid, poll_seconds)  # the trial was killed (NNI cancels it, say): no search goes on alone
    try:
        target(**kwargs, log=lambda message: sender.send(("log", str(message))))
        outcome: tuple[str, Any] = ("done", None)
    except BaseException as err:  # noqa: BLE001 - everything goes back to the trial, which raises it
        error: BaseException = err
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as its text
            error = RuntimeError(f"{type(err).__name__}: {err}")
        outcome = ("error", (error, traceback.format_exc()))
    sender.send(outcome)
    sender.close()


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
    """What the trial reports to NNI at the end, from a retrain run's ``metrics.json``: ``default`` = the task's
    main score (mIoU; max F-beta for saliency, ODS for edges), then the task's scores by name (runs without a
    ``task`` were segmentation runs)."""
    def number(key: str) -> Optional[float]:
        value = metrics.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return None if math.isnan(float(value)) else float(value)

    from nni_sparsemask.run.tasks import task_info
    task = metrics.get("task", "segmentation")
    info = task_info(task)
    main = number(info.main)
    if main is None:
        raise ValueError(f"{run_dir / 'metrics.json'} has no {info.label}; delete the run directory and run the entry "
                         "again")
    scores = {k: number(k) for k in info.scores}
    return {"default": main, "task": task, **scores, "fps": number("fps"),
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
    return run_retrain(out, settings.data, model, train, connectivity=connectivity, decoder=decoder,
                       fps_size=settings.fps_size, fps_batch=settings.fps_batch, fps_seconds=settings.fps_seconds,
                       resume=True, progress=progress, accelerator=settings.accelerator, log=log,
                       method=entry.method, params=entry.params, report_to_nni=report)


def run_entry(entry: GridEntry, settings: TrialSettings, results: str | Path, *, report: bool = False,
              progress: bool = False, log: Log = print) -> dict[str, Any]:
    """Run ``entry`` end to end under ``results`` (see the module docstring) and return its final result.

    ``report``: report the retraining's epochs to NNI (inside a trial: see the module docstring). A finished
    entry is not run again; an interrupted one resumes; an entry directory written with other settings is refused
    (``ValueError``). On an exception the traceback is saved in the entry's ``error.txt`` and it propagates.
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
            run = RunDir(entry_dir, config, resume=True, legacy={"settings": _SETTINGS_LEGACY})
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
        search = dict(out=search_dir, strategy=entry.method, strategy_args=entry.strategy_args, data=settings.data,
                      model=model, schedule=settings.search_config(), resume=True, progress=progress,
                      accelerator=settings.accelerator)
        if report and entry.kind == "oneshot":  # not in the trial's process (see the module docstring)
            _search_in_own_process(run_search, search, log)
        else:
            run_search(**search, log=log)
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
        from nni_sparsemask import malloc

        malloc.tune()  # as the sparsemask commands: every trial of a comparison runs with the same allocator
        settings = settings_from_args(args)
        if args.params is not None:
            parameters, inside_nni = _json_arg(args.params, "--params"), False
        else:
            from nni_sparsemask.run.lightning import in_nni_trial
            if not in_nni_trial():
                raise ValueError("not started by NNI as a trial (no NNI_PLATFORM / NNI_TRIAL_JOB_ID in the "
                                 "environment): run it from an NNI experiment, or give the entry with --params")
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
    from nni_sparsemask.run.tasks import task_info
    log(f"[trial] {entry.describe()}: {task_info(result['task']).label} {result['default']:.4f}, FPS {result['fps']}, "
        f"decoder params {result['params_decoder']}, edges {result['edges']}; {result['run_dir']}")
    return 0


def _print_flush(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    sys.exit(main())
