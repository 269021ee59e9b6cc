"""The commands of the pipeline as functions: ``search`` -> ``prune`` -> ``retrain`` -> ``evaluate``, and ``demo``.

Each takes typed configs (:mod:`.pipeline`) and an output run directory (:class:`~.rundir.RunDir`: refused when
it exists, unless ``overwrite`` or ``resume``), writes its files there and returns a summary dict. The CLI
(:mod:`.cli`) only parses arguments into these calls.

Search run directory::

    config.json, search/ (the strategy's own run dir: checkpoints, search_result.json),
    connectivity_full.json (every edge with its final w and the w history: what ``prune`` re-thresholds),
    connectivity.json (pruned at sigma), w_heatmap.png, search.json (summary; written last = finished)

A random / Rand(Rule) search samples decoders instead: ``samples/sample-NN.json`` and ``connectivity.json`` =
the first sample.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.run.config import (PAPER_DECODER_LR_MULT, SEARCH_LEGACY, DataConfig, EvalConfig, ModelConfig,
                                       SearchConfig, TrainConfig, config_from_dict)
from nni_sparsemask.run.distributed import DEFAULT_DEVICES, DEFAULT_DIST_STRATEGY, check_dist
from nni_sparsemask.run.pipeline import (build_network, check_connectivity, check_eval_device, check_inputs,
                                         evaluate_network, head_width, load_weights, make_loaders,
                                         resolve_backbone_weights, save_weights, train_network)
from nni_sparsemask.run.rundir import RunDir, read_json
from nni_sparsemask.seeding import seed_everything

__all__ = ["run_search", "run_prune", "run_retrain", "run_evaluate", "load_run_network", "search_cost_term", "SEARCH_DONE"]

SEARCH_DONE = "search.json"
Log = Callable[[str], None]


def _base_config(command: str, method: str, params: dict[str, Any], seed: int, data: DataConfig,
                 model: ModelConfig) -> dict[str, Any]:
    return {"command": command, "method": method, "params": params, "seed": seed,
            "data": dataclasses.asdict(data), "model": dataclasses.asdict(model)}


def _heatmap(conn: Connectivity, path: Path, title: str, log: Log) -> None:
    try:
        from nni_sparsemask.analysis import plot_w_heatmaps, save_figure
        save_figure(plot_w_heatmaps({title: conn}), path)
    except Exception as err:  # the figure is a convenience; the JSON files are the result
        log(f"(heatmap not written: {err})")


# ------------------------------------------------------------------------------------------------ search
def run_search(out: str | Path, strategy: str, strategy_args: dict[str, Any], data: DataConfig,
               model: ModelConfig, schedule: Optional[SearchConfig] = None, *, overwrite: bool = False,
               resume: bool = False, progress: bool = True, accelerator: str = "auto", log: Log = print,
               devices: int = DEFAULT_DEVICES, dist_strategy: str = DEFAULT_DIST_STRATEGY,
               cost_threads: Optional[int] = None) -> dict[str, Any]:
    """Search a decoder of the FDN space with ``strategy`` (see ``run.registry.STRATEGIES``) on ``data``; a
    one-shot search trains as ``schedule`` says (default :class:`SearchConfig`), on ``devices`` processes
    (:mod:`.distributed`). ``cost_threads``: the threads a latency cost is timed for, when the searched network
    will run with other threads than the search trains with (default: this process's PyTorch threads)."""
    from nni_sparsemask.run.registry import STRATEGIES, check_strategy_space, split_search_params, validate_strategy_args

    entry = STRATEGIES.get(strategy)
    params = validate_strategy_args(strategy, strategy_args)
    schedule = schedule if schedule is not None else SearchConfig()
    _, search_args = split_search_params(strategy, params)
    if search_args:  # a cost-aware point of a comparison grid: its settings are the search's
        schedule = dataclasses.replace(schedule, **search_args)
    check_strategy_space(strategy, params, len(check_inputs(data, model)))  # all checked before the run dir
    check_dist(devices, dist_strategy, accelerator)
    config = _base_config("search", strategy, params, int(params.get("seed", 0)), data, model)
    term = None
    if entry.kind == "oneshot":
        config["search"] = dataclasses.asdict(schedule)
        # a target no decoder reaches: refused here
        term = search_cost_term(schedule, data, model, accelerator, log, cost_threads)
    elif schedule.cost is not None:
        raise ValueError(f"strategy {strategy!r} samples decoders without training w: --cost applies to the "
                         "one-shot strategies (sparsemask, l1, maskconnect)")
    run = RunDir(out, config, overwrite=overwrite, resume=resume, legacy={"search": SEARCH_LEGACY})
    if run.resumed and run.file(SEARCH_DONE).is_file():
        log(f"[search] {run.path} is already finished; its results are kept as they are")
        return read_json(run.file(SEARCH_DONE))
    meta = {"method": strategy, "params": params, "num_classes": data.num_classes, "dataset": data.dataset,
            "task": data.task}
    t0 = time.time()
    if entry.kind == "sampler":
        conn, summary = _sample(run, strategy, params, model, meta, t0)
    else:
        conn, summary = _search_oneshot(run, strategy, params, data, model, meta, schedule, t0, term,
                                        progress=progress, accelerator=accelerator, log=log, devices=devices,
                                        dist_strategy=dist_strategy)
    conn.to_json(run.file("connectivity.json"), overwrite=True)
    run.write_json(SEARCH_DONE, summary)
    return summary


def _sample(run: RunDir, strategy: str, params: dict[str, Any], model: ModelConfig, meta: dict[str, Any],
            t0: float) -> tuple[Connectivity, dict[str, Any]]:
    """A sampler's decoders into ``samples/sample-NN.json``; the first one and the summary (timed from ``t0``)."""
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.run.registry import build_strategy

    sampler = build_strategy(strategy, params)
    info = build_backbone(model.backbone, **model.backbone_kwargs).feature_info
    conns = sampler.sample(model.backbone, info, model.backbone_kwargs)
    samples = run.file("samples")
    samples.mkdir(exist_ok=True)
    for i, c in enumerate(conns):
        c.meta = dict(c.meta, **meta, sample=i)
        c.to_json(samples / f"sample-{i:02d}.json", overwrite=True)
    return conns[0], {"method": strategy, "params": params, "samples": len(conns),
                      "edges": [c.num_edges for c in conns], "search_seconds": time.time() - t0}


def search_cost_term(schedule: SearchConfig, data: DataConfig, model: ModelConfig, accelerator: str, log: Log,
                     threads: Optional[int] = None) -> Any:
    """The cost term of a cost-aware search (None without ``--cost``), from a space without weights: costs do not
    depend on them, and so a bad target is refused before anything is trained or written. The demo calls it
    before a split of the CPU, so that a latency table is timed alone (``threads``: see :func:`run_search`)."""
    if schedule.cost is None:
        return None
    from nni_sparsemask.fdn.space import FDNSpace
    from nni_sparsemask.run.costaware import cost_term
    from nni_sparsemask.run.pipeline import default_device

    space = FDNSpace(model.backbone, num_classes=data.num_classes, decoder_channels=model.decoder_channels,
                     backbone_kwargs=model.backbone_kwargs)
    return cost_term(schedule, space, "cpu" if accelerator == "cpu" else default_device(), log, threads)


def _search_oneshot(run: RunDir, strategy: str, params: dict[str, Any], data: DataConfig, model: ModelConfig,
                    meta: dict[str, Any], schedule: SearchConfig, t0: float, term: Any, *, progress: bool,
                    accelerator: str, log: Log, devices: int = DEFAULT_DEVICES,
                    dist_strategy: str = DEFAULT_DIST_STRATEGY) -> tuple[Connectivity, dict[str, Any]]:
    """A one-shot search (``NasExperiment``) of the FDN space, its own files in ``search/``: the pruned
    connectivity and the summary (timed from ``t0``); ``connectivity_full.json`` and the w heatmap are written
    here."""
    from nni.nas.experiment import NasExperiment

    from nni_sparsemask.fdn.space import FDNSpace
    from nni_sparsemask.run.distributed import trainer_options
    from nni_sparsemask.run.lightning import Segmentation
    from nni_sparsemask.run.registry import STRATEGIES, build_strategy, split_search_params

    weights = resolve_backbone_weights(model, data, log, progress=progress)
    seed_everything(int(params.get("seed", 0)))  # the decoder's initial weights
    space = FDNSpace(model.backbone, num_classes=data.num_classes, decoder_channels=model.decoder_channels,
                     backbone_weights=weights, backbone_kwargs=model.backbone_kwargs)
    train_loader, val_loader = make_loaders(data, progress=progress)
    evaluator = Segmentation(num_classes=data.num_classes, task=data.task, learning_rate=schedule.learning_rate,
                             train_dataloaders=train_loader, val_dataloaders=val_loader, max_epochs=schedule.epochs,
                             accelerator=accelerator, enable_checkpointing=False, logger=False,
                             enable_progress_bar=progress, enable_model_summary=False,
                             **trainer_options(devices, dist_strategy, accelerator))
    strat = build_strategy(strategy, split_search_params(strategy, params)[0], run_dir=run.file("search"),
                           **schedule.strategy_options(noise=STRATEGIES.get(strategy).noise_on_w),
                           **(term.strategy_options() if term is not None else {}))
    log(f"[search] {strategy} {params}: {schedule.epochs} epochs on {data.dataset} ({data.train_scenes} scenes, "
        f"{data.image_size}px), run dir {run.path}")
    NasExperiment(space, evaluator, strat).run()
    full = space.connectivity_from_weights(strat.weights(), None, strat.history(), meta)
    full.to_json(run.file("connectivity_full.json"), overwrite=True)
    conn = strat.connectivity()
    conn.meta = dict(conn.meta, **meta)
    gap = strat.binarization()["overall"]
    summary = {"method": strategy, "params": params, "edges": conn.num_edges, "stages": len(conn.stages()),
               "binarization": gap, "binarization_gap": gap.get("gap"), "weights": strat.weights(),
               "search_seconds": time.time() - t0}
    if term is not None:
        summary["cost"] = dict(term.summary, expected_decoder_cost=strat.expected_cost(),
                               searched=term.table.predict(conn, include_base=True))
        speedup = term.summary["predicted"]["dense"] / summary["cost"]["searched"]
        summary["cost"]["searched_speedup"] = speedup
        if schedule.cost == "latency":
            fps = 1.0 / summary["cost"]["searched"]
            summary["cost"]["searched_fps"] = fps
            log(f"[search] the searched decoder is predicted at {fps:.1f} FPS, {speedup:.2f}x the dense FDN (target "
                f"{_target(schedule)})")
    _heatmap(full, run.file("w_heatmap.png"), strategy, log)
    return conn, summary


def _target(schedule: Any) -> str:
    if schedule.target_fps is not None:
        return f"{schedule.target_fps:g} FPS"
    if schedule.speedup is not None:
        return f"{schedule.speedup:g}x"
    return f"decoder <= {schedule.budget:g} x the dense decoder's"


# ------------------------------------------------------------------------------------------------ prune
def run_prune(search_dir: str | Path, out: str | Path, threshold: float, *, overwrite: bool = False,
              log: Log = print) -> dict[str, Any]:
    """Re-threshold a finished search at ``threshold`` without training: ``out/connectivity.json``."""
    search_dir = Path(search_dir)
    if not 0 < threshold < 1:
        raise ValueError(f"--threshold must be in (0, 1), got {threshold}")
    full_path = search_dir / "connectivity_full.json"
    if not full_path.is_file():
        raise FileNotFoundError(f"{full_path} not found: give the run directory of a finished one-shot search "
                                "(sparsemask search --strategy sparsemask|l1 ...)")
    full = Connectivity.from_json(full_path)
    src = read_json(search_dir / "config.json", "config.json of the search")
    config = dict(src, command="prune", source=str(search_dir), params=dict(src.get("params") or {},
                  threshold=threshold))
    run = RunDir(out, config, overwrite=overwrite, resumable=False)
    conn = full.prune(threshold)
    conn.meta = dict(conn.meta, params=config["params"])
    conn.to_json(run.file("connectivity.json"), overwrite=True)
    from nni_sparsemask.nas.binarization import binarization_report  # the search's own definition of the gap, at the new sigma
    weights: dict[str, list[float]] = {}
    for e in full.edges:
        weights.setdefault(e.target, []).append(e.weight)
    gap = binarization_report(weights, threshold)["overall"]
    summary = {"method": config.get("method"), "params": config["params"], "edges": conn.num_edges,
               "stages": len(conn.stages()), "threshold": threshold, "binarization": gap,
               "binarization_gap": gap["gap"], "source": str(search_dir)}
    run.write_json(SEARCH_DONE, summary)
    log(f"[prune] {full.num_edges} edges -> {conn.num_edges} kept at sigma={threshold} "
        f"({len(conn.stages())} stages): {run.file('connectivity.json')}")
    return summary


# ------------------------------------------------------------------------------------------------ retrain
def run_retrain(out: str | Path, data: DataConfig, model: ModelConfig, train: TrainConfig, *,
                connectivity: str | Path | None = None, decoder: Optional[str] = None,
                fps_size: int = EvalConfig.fps_size, fps_batch: int = EvalConfig.fps_batch,
                fps_seconds: float = EvalConfig.fps_seconds, overwrite: bool = False, resume: bool = False,
                progress: bool = True, accelerator: str = "auto", log: Log = print, method: Optional[str] = None,
                params: Optional[dict[str, Any]] = None, report_to_nni: bool = False,
                devices: int = DEFAULT_DEVICES, dist_strategy: str = DEFAULT_DIST_STRATEGY,
                head_channels: Optional[int] = None, fps_alone: bool = True) -> dict[str, Any]:
    """Train a fixed decoder (a searched ``connectivity.json`` or a hand-designed ``decoder``) with L_task only,
    evaluate it, and write ``metrics.json`` (the row Table 1 and Fig. 4 read).

    ``train.decoder_lr_mult`` None takes the decoder's own (the paper's 10; the smp peers' 1), and ``config.json``
    records the one used.
    ``head_channels``: the width of a ``decoder`` with a head of its own (default: its published width; C_dec,
    ``model.decoder_channels``, is the FDN space's). ``method`` / ``params`` name the run in the results (default: the search's, from the connectivity's meta, or
    the decoder's name); ``report_to_nni`` sends every epoch's val mIoU to NNI (inside an nnictl trial).
    ``fps_alone=False`` says that another process trained while FPS was timed (the demo's second process):
    ``metrics.json`` then carries an ``fps_note`` saying so.
    The search summary (binarisation gap, search time) is read from ``search.json`` beside the connectivity
    file, or one level up for a sampler's ``samples/sample-NN.json``."""
    if (connectivity is None) == (decoder is None):
        raise ValueError("give exactly one of --connectivity FILE and --decoder NAME")
    from nni_sparsemask.run.registry import DECODERS
    if connectivity is not None:
        connectivity = Path(connectivity)
        conn, method, params, extra = _searched_decoder(connectivity, model, data, method, params)
    else:
        DECODERS.get(decoder)  # unknown name -> clear error before anything is written
        conn, extra = None, {}
        method, params = method or decoder, dict(params or {})
    if head_channels is not None:
        if decoder is None or DECODERS.get(decoder).in_fdn_space:
            raise ValueError(f"--head-channels sets the width of a decoder with a head of its own (deeplabv3, "
                             f"smp-*), not of {decoder or 'a searched connectivity'}: its width is --decoder-channels")
        if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1:
            raise ValueError(f"--head-channels must be an integer >= 1, got {head_channels!r}")
    if train.decoder_lr_mult is None:
        train = dataclasses.replace(train, decoder_lr_mult=DECODERS.get(decoder).decoder_lr_mult if decoder
                                    else PAPER_DECODER_LR_MULT)
    EvalConfig(fps_size=fps_size, fps_batch=fps_batch, fps_seconds=fps_seconds)  # checked before training
    check_inputs(data, model, decoder)
    check_dist(devices, dist_strategy, accelerator)
    config = _base_config("retrain", method, params, train.seed, data, model)
    config.update(train=dataclasses.asdict(train), decoder=decoder,
                  connectivity=str(connectivity) if connectivity is not None else None,
                  connectivity_edges=_edge_record(conn), head_channels=head_width(decoder, head_channels),
                  fps={"size": fps_size, "batch": fps_batch, "seconds": fps_seconds})
    run = RunDir(out, config, overwrite=overwrite, resume=resume, located={"connectivity": "connectivity_edges"},
                 legacy={"": {"connectivity_edges": _built_edges(Path(out)) if conn is not None else None,
                              "head_channels": None}})
    if run.finished:
        log(f"[retrain] {run.path} is already finished; its results are kept as they are")
        return read_json(run.file("metrics.json"))
    weights = resolve_backbone_weights(model, data, log, progress=progress)
    seed_everything(train.seed)
    net = build_network(model, data.num_classes, connectivity=conn, decoder=decoder, weights=weights,
                        head_channels=head_channels)
    layout = conn  # the decoder's edges (None for a head of its own: DeepLabV3, the smp peers)
    from nni_sparsemask.run.registry import decoder_connectivity
    if conn is None and DECODERS.get(decoder).in_fdn_space:
        layout = decoder_connectivity(decoder, model.backbone, net.encoder.feature_info, model.backbone_kwargs)
    if layout is not None:
        layout.to_json(run.file("connectivity.json"), overwrite=True)
    log(f"[retrain] {method}: {train.epochs} epochs on {data.dataset}, run dir {run.path}")
    net, history, seconds = train_network(net, run, train, data, resume=run.resumed, progress=progress,
                                          accelerator=accelerator, report_to_nni=report_to_nni, devices=devices,
                                          dist_strategy=dist_strategy)
    save_weights(net, run.file("model.pt"))
    scores = evaluate_network(net, data, fps_size=fps_size, fps_batch=fps_batch, fps_seconds=fps_seconds,
                              progress=progress)
    metrics = {"method": method, "params": params, "seed": train.seed, **scores,
               "edges": layout.num_edges if layout is not None else None,
               "stages": len(layout.stages()) if layout is not None else None, "train_seconds": seconds,
               "epochs": train.epochs, **extra}
    if not fps_alone:
        metrics["fps_note"] = ("timed while another process trained on the same CPU: compare FPS measured side by "
                               "side (the demo's table), not this one")
    run.write_json("metrics.json", metrics)
    return metrics


def _edge_record(conn: Optional[Connectivity]) -> Optional[list[list[Any]]]:
    """The decoder a connectivity builds, as config.json records it: ``[[target, source, weight], ...]`` in file
    order, then ``["output", name]`` (None for a hand-designed decoder)."""
    if conn is None:
        return None
    return [[e.target, e.source, e.weight] for e in conn.edges] + [["output", conn.output]]


def _built_edges(out: Path) -> Optional[list[list[Any]]]:
    """For a run written before config.json recorded its edges: the decoder it built, from its own
    ``connectivity.json`` (None, so that the connectivity's path is compared, where there is none to read)."""
    try:
        return _edge_record(Connectivity.from_json(out / "connectivity.json"))
    except (OSError, ValueError):
        return None


def _searched_decoder(connectivity: Path, model: ModelConfig, data: DataConfig, method: Optional[str],
                      params: Optional[dict[str, Any]]) -> tuple[Connectivity, str, dict[str, Any], dict[str, Any]]:
    """The checked connectivity of a search, the run's method and params (default: the search's) and what the
    search's ``search.json`` (beside the file, or one level up for a sampler's sample) says of it."""
    conn = Connectivity.from_json(connectivity)
    check_connectivity(conn, model, data.num_classes, str(connectivity))
    method = method or str(conn.meta.get("method", "searched"))
    params = dict(conn.meta.get("params") or {}) if params is None else dict(params)
    extra: dict[str, Any] = {}
    for summary in (connectivity.parent / SEARCH_DONE, connectivity.parent.parent / SEARCH_DONE):
        if summary.is_file():
            found = read_json(summary)
            extra = {k: found[k] for k in ("binarization_gap", "search_seconds") if found.get(k) is not None}
            break
    return conn, method, params, extra


# ------------------------------------------------------------------------------------------------ evaluate
def load_run_network(run_dir: str | Path) -> tuple[Any, DataConfig, ModelConfig]:
    """The trained network of a finished ``retrain`` run, rebuilt from its config.json (+ connectivity.json)."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "config.json of the run")
    if config.get("command") != "retrain":
        raise ValueError(f"{run_dir} is a {config.get('command')!r} run; evaluate takes a retrain run directory")
    where = str(run_dir / "config.json")
    data = config_from_dict(DataConfig, config.get("data"), where)
    model = config_from_dict(ModelConfig, config.get("model"), where)
    from nni_sparsemask.run.registry import DECODERS
    decoder = config.get("decoder")
    if decoder is not None and not DECODERS.get(decoder).in_fdn_space:  # its own head: no connectivity
        # a run written before the head's width was recorded built it at C_dec
        net = build_network(model, data.num_classes, decoder=decoder,
                            head_channels=config.get("head_channels", model.decoder_channels))
    else:
        net = build_network(model, data.num_classes, connectivity=Connectivity.from_json(run_dir / "connectivity.json"))
    return load_weights(net, run_dir / "model.pt"), data, model


def evaluation_data(trained: DataConfig, run_dir: Path, task: Optional[str] = None, dataset: Optional[str] = None,
                    root: Optional[str] = None) -> DataConfig:
    """The data a run is evaluated on: the one it was trained on, or another data set of the same task
    (``dataset`` / ``root``: a saliency run trained on DUTS, scored on ECSSD). A ``task`` other than the run's is
    refused: its network was trained for its own task's targets."""
    if task is not None and task != trained.task:
        raise ValueError(f"{run_dir} was trained for task {trained.task!r}, not {task!r}: evaluate it with --task "
                         f"{trained.task} (or leave --task out), or retrain it for {task}")
    if dataset is None and root is None:
        return trained
    from dataclasses import replace
    dataset = dataset or trained.dataset
    changes: dict[str, Any] = {"dataset": dataset, "root": root if root is not None else
                               (trained.root if dataset == trained.dataset else None)}
    if dataset != "voc":
        changes["sbd_root"] = None
    return replace(trained, **changes)


def run_evaluate(run_dir: str | Path, *, fps_size: int = EvalConfig.fps_size, fps_batch: int = EvalConfig.fps_batch,
                 device: Optional[str] = None, overwrite: bool = False, progress: bool = True,
                 task: Optional[str] = None, dataset: Optional[str] = None, data_root: Optional[str] = None,
                 edge_nms: bool = False) -> dict[str, Any]:
    """Evaluate a finished retrain run again (e.g. FPS on another device, or another data set of its task):
    ``evaluate.json`` (``evaluate-<dataset>.json`` on another data set; ``-nms`` before ``.json`` with
    ``edge_nms``: an edge run scored after non-maximum suppression, HED's and RCF's protocol)."""
    run_dir = Path(run_dir)
    net, trained, _ = load_run_network(run_dir)
    data = evaluation_data(trained, run_dir, task, dataset, data_root)
    if edge_nms and data.task != "edges":
        raise ValueError(f"--edge-nms scores edge maps; {run_dir} is a {data.task} run")
    stem = "evaluate" if data.dataset == trained.dataset else f"evaluate-{data.dataset}"
    target = run_dir / f"{stem}{'-nms' if edge_nms else ''}.json"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    EvalConfig(fps_size=fps_size, fps_batch=fps_batch)
    check_eval_device(device)
    scores = evaluate_network(net, data, fps_size=fps_size, fps_batch=fps_batch, device=device, progress=progress,
                              edge_nms=edge_nms)
    from nni_sparsemask.run.rundir import write_json_atomic
    write_json_atomic(target, scores)
    return scores


def format_iou(iou: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {'-' if v is None else f'{v:.2f}'}" for k, v in iou.items())
