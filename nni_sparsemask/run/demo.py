"""``sparsemask demo`` (what ``make demo`` runs): the whole pipeline on the built-in DigitScenes data.

pretrain (cached) -> SparseMask search on the FDN space -> prune at sigma -> retrain the searched decoder ->
evaluate, and, with the same data, epochs and learning rate, the dense FDN and the ``baselines`` (FCN by
default). It prints one table (method, edges, mIoU, params encoder+decoder, FPS, FPS / dense FDN FPS) with the
per-class IoU of every network (so a background-only result is visible) and writes::

    OUT/config.json, OUT/search/ (search run), OUT/sparsemask/, OUT/fdn/, OUT/fcn/ (retrain runs),
    OUT/w_heatmap.png (final w of the search), OUT/demo.json (the table, the seconds of every step) + OUT/table.md

``--resume`` continues an interrupted demo: finished steps are kept, an interrupted step resumes from its
last checkpoint. The baselines alone may change on resume: ``demo --resume --baselines fcn smp-unet`` trains the
networks the finished demo lacks and times them all side by side again.
"""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from nni_sparsemask.nas.config import SparseMaskConfig
from nni_sparsemask.run.config import (SEARCH_LEGACY, DataConfig, ModelConfig, PretrainConfig, SearchConfig,
                                       TrainConfig)
from nni_sparsemask.run.rundir import RunDir

__all__ = ["DemoConfig", "run_demo", "demo_table"]


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (defaults: what ``make demo`` runs; see the README for the measured time)."""

    # where the demo departs from the general defaults (run.config), the value is written here, with its reason
    search_epochs: int = 10             # 10 + 12 epochs keep the demo under 15 minutes on 2 CPU cores
    retrain_epochs: int = 12
    train_scenes: int = 4000            # the setting the demo's table was measured with (README)
    val_scenes: int = DataConfig.val_scenes
    image_size: int = DataConfig.image_size
    learning_rate: float = TrainConfig.learning_rate   # search and retraining alike
    arc_optimizer: str = SearchConfig.arc_optimizer
    arc_learning_rate: Optional[float] = SearchConfig.arc_learning_rate
    arc_noise: float = SearchConfig.arc_noise
    arc_weight_decay: float = SearchConfig.arc_weight_decay
    freeze_bn: bool = SearchConfig.freeze_bn
    arc_warmup_epochs: int = SearchConfig.arc_warmup_epochs
    cost: Optional[str] = SearchConfig.cost            # a cost-aware search (costs taken at fps_size)
    target_fps: Optional[float] = SearchConfig.target_fps
    budget: Optional[float] = SearchConfig.budget
    speedup: Optional[float] = SearchConfig.speedup
    cost_weight: float = SearchConfig.cost_weight
    lambda_sparse: float = SparseMaskConfig.lambda_sparse
    decoder_channels: int = ModelConfig.decoder_channels
    threshold: float = SparseMaskConfig.threshold
    seed: int = TrainConfig.seed
    pretrain_scenes: int = PretrainConfig.num_scenes
    pretrain_epochs: int = PretrainConfig.epochs
    baselines: tuple = ("fcn",)
    fps_size: int = 256                 # timed at 256 px (the 512 px default takes 4x the FPS step's time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        for name in ("search_epochs", "retrain_epochs", "train_scenes", "val_scenes", "image_size", "fps_size",
                     "pretrain_scenes", "pretrain_epochs", "decoder_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"demo {name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        from nni_sparsemask.run.registry import DECODERS
        for name in self.baselines:
            DECODERS.get(name)
        if "fdn" in self.baselines:
            raise ValueError("the dense FDN is always trained by the demo; leave 'fdn' out of --baselines")
        self.search_config()

    def search_config(self) -> SearchConfig:
        """The search's schedule and w settings."""
        return SearchConfig(epochs=self.search_epochs, learning_rate=self.learning_rate,
                            arc_optimizer=self.arc_optimizer, arc_learning_rate=self.arc_learning_rate,
                            arc_noise=self.arc_noise, arc_weight_decay=self.arc_weight_decay, freeze_bn=self.freeze_bn,
                            arc_warmup_epochs=self.arc_warmup_epochs,
                            cost=self.cost, target_fps=self.target_fps, budget=self.budget, speedup=self.speedup,
                            cost_weight=self.cost_weight, cost_size=self.fps_size)


def fps_side_by_side(runs: dict[str, Path], size: int, rounds: int = 5, seconds: float = 1.0,
                     device: str | None = None) -> dict[str, Any]:
    """FPS of the trained networks of the run directories ``runs``, timed together (:func:`time_side_by_side`)."""
    from nni_sparsemask.run.steps import load_run_network

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return time_side_by_side({name: load_run_network(path)[0] for name, path in runs.items()}, size, rounds,
                             seconds, device)


def time_side_by_side(nets: dict[str, Any], size: int, rounds: int = 5, seconds: float = 1.0,
                      device: str | None = None) -> dict[str, Any]:
    """FPS of ``nets`` measured together: ``rounds`` round-robin passes over the networks (so that a busy phase of
    the machine hits every network alike). Batch 1, ``size`` x ``size``, deployment form (BN folded,
    channels_last), on ``device`` (default: CUDA when available, else the CPU, as ``evaluate``).

    Returns ``{"fps": {name: best pass}, "rounds": [{name: fps} per pass], "device": str}``: the best pass of each
    network is the least disturbed one; the passes show how much the machine moved the numbers.
    """
    from nni_sparsemask.measure.fps import measure_fps
    from nni_sparsemask.run.pipeline import default_device

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = device or default_device()
    passes, name_of_device = [], ""
    for _ in range(rounds):
        this = {}
        for name, net in nets.items():
            result = measure_fps(net, input_size=(size, size), device=device, min_run_time=seconds, inference=True)
            this[name], name_of_device = result.fps, result.device
        passes.append(this)
    best = {name: max(p[name] for p in passes) for name in nets}
    from nni_sparsemask import malloc

    return {"fps": best, "rounds": passes, "device": name_of_device, "malloc": malloc.state()}


def ratio_over_passes(passes: list[dict[str, float]], name: str, reference: str) -> tuple[float, float, float]:
    """Median, lowest and highest of ``FPS[name] / FPS[reference]``, each ratio taken within one pass (paired, so
    that a slow phase of the machine cancels out)."""
    ratios = [p[name] / p[reference] for p in passes]
    return statistics.median(ratios), min(ratios), max(ratios)


def _fps_device(accelerator: str) -> str | None:
    """The device FPS is timed on: the CPU when training was forced onto it, else the default (CUDA if any)."""
    return "cpu" if accelerator == "cpu" else None


def demo_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the demo's networks (rows as written to ``demo.json``)."""
    lines = ["| method | edges | mIoU | PixAcc | params (enc+dec) | FPS | FPS / dense FDN |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        edges = "-" if r.get("edges") is None else str(r["edges"])
        spread = r.get("fps_ratio_range")
        ratio = f"{r['fps_ratio']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")
        lines.append(f"| {r['name']} | {edges} | {100 * r['miou']:.1f} | {100 * r['pixel_accuracy']:.1f} | "
                     f"{r['params']} | {r['fps']:.1f} | {ratio} |")
    return "\n".join(lines)


class _Steps:
    """Runs the demo's steps by name, logging and timing each (``seconds``: name -> s, in the order run)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.seconds = log, {}
        self.start = time.time()

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.time()
        self.log(f"\n[demo] --- {name} ---")
        result = fn()
        self.seconds[name] = round(time.time() - t0, 1)
        self.log(f"[demo] {name}: {self.seconds[name]:.0f} s")
        return result


def _networks(run: RunDir, cfg: DemoConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """``(title, run dir name, run_retrain arguments)`` of the searched decoder, the dense FDN and the baselines."""
    nets = [("SparseMask (searched)", "sparsemask", dict(connectivity=run.file("search") / "connectivity.json")),
            ("FDN (dense)", "fdn", dict(decoder="fdn"))]
    return nets + [(name.upper() if name == "fcn" else name, name, dict(decoder=name)) for name in cfg.baselines]


def _rows(run: RunDir, nets: list, results: dict[str, Any], side: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``demo.json``: a retrain run's metrics with the FPS timed side by side (ratio to the dense FDN)."""
    fps = side["fps"]
    ratios = {sub: ratio_over_passes(side["rounds"], sub, "fdn") for _, sub, _ in nets}
    rows = []
    for title, sub, _ in nets:
        m = results[sub]
        rows.append({"name": title, "run": str(run.file(sub)), "edges": m.get("edges"), "miou": m["miou"],
                     "pixel_accuracy": m["pixel_accuracy"], "params": m["params_text"],
                     "params_decoder": m["params_decoder"], "fps": fps[sub], "fps_ratio": ratios[sub][0],
                     "fps_ratio_range": list(ratios[sub][1:]), "iou": m["iou"]})
    return rows


def _note(cfg: DemoConfig, side: dict[str, Any], fps_form: str) -> str:
    """How the table was measured (printed under it and written to ``table.md``)."""
    import torch

    from nni_sparsemask import malloc

    return (f"FPS: {side['device']}, {cfg.fps_size}x{cfg.fps_size}, batch 1, {torch.get_num_threads()} threads, "
            f"{fps_form}, malloc {malloc.state()}, measured side by side in {len(side['rounds'])} "
            f"round-robin passes: FPS of the best pass; FPS / dense FDN is the median (range) of the ratio within "
            f"each pass. "
            f"Search {cfg.search_epochs} epochs, every network retrained {cfg.retrain_epochs} epochs on "
            f"{cfg.train_scenes} DigitScenes {cfg.image_size}px scenes; mIoU on {cfg.val_scenes} val scenes.")


def _finish(run: RunDir, rows: list[dict[str, Any]], note: str, search: dict[str, Any], side: dict[str, Any],
            seconds: dict[str, float], log: Callable[[str], None]) -> dict[str, Any]:
    """Print the table and the search's outcome, write ``demo.json`` and ``table.md``; returns the summary."""
    from nni_sparsemask.nas.binarization import describe_binarization
    from nni_sparsemask.run.steps import format_iou

    table = demo_table(rows)
    log("\n" + table + "\n" + note)
    for r in rows:
        log(f"  {r['name']} per-class IoU: {format_iou(r['iou'])}")
    gap = describe_binarization(search.get("binarization"))
    log(f"SparseMask search kept {search.get('edges')} edges; binarisation {gap}; heatmap of the final w: "
        f"{run.file('w_heatmap.png')}")
    log(f"demo time: {seconds['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items() if k != 'total')})")
    summary = {"rows": rows, "seconds": seconds, "fps_passes": side["rounds"],
               "search": {k: search.get(k) for k in ("edges", "binarization_gap")},
               "note": note}
    run.write_json("demo.json", summary)
    run.file("table.md").write_text(table + "\n\n" + note + "\n")
    return summary


def run_demo(out: str | Path, cfg: DemoConfig | None = None, *, overwrite: bool = False, resume: bool = False,
             progress: bool = True, log: Callable[[str], None] = print, accelerator: str = "auto",
             split_cpu: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``{"rows": [...], "seconds": {...}}`` (also in ``out/demo.json``).

    ``split_cpu``: on a CPU with 2 or more threads, the dense FDN and the baselines retrain in a second process
    while this one searches and retrains the searched decoder, each with half the threads
    (:mod:`.sideprocess`; its output goes to ``out/retrain.log``). The default runs every step here, one after
    another, with all threads. The FPS table is timed after both, alone, with all threads."""
    import torch

    from nni_sparsemask.measure.deploy import AS_GIVEN
    from nni_sparsemask.run.pipeline import resolve_backbone_weights
    from nni_sparsemask.run.sideprocess import SideProcess, cpu_split
    from nni_sparsemask.run.steps import run_retrain, run_search, search_cost_term

    cfg = cfg or DemoConfig()
    # every config is built (and so checked) before the run directory is written
    data = DataConfig(image_size=cfg.image_size, train_scenes=cfg.train_scenes, val_scenes=cfg.val_scenes,
                      seed=cfg.seed)
    model = ModelConfig(decoder_channels=cfg.decoder_channels)
    train = TrainConfig(epochs=cfg.retrain_epochs, learning_rate=cfg.learning_rate, seed=cfg.seed)
    legacy = {k: SEARCH_LEGACY[k] for k in SEARCH_LEGACY if k in {f.name for f in dataclasses.fields(DemoConfig)}}
    step = _Steps(log)
    if cfg.cost is not None:
        # first: a latency table is timed on an idle machine (right after pre-training, the encoder was once timed
        # 1.7x slower than alone), and a target no decoder reaches is refused before anything is trained or written
        step("cost table", lambda: search_cost_term(cfg.search_config(), data, model, accelerator, log))
    run = RunDir(out, {"command": "demo", **dataclasses.asdict(cfg)}, overwrite=overwrite, resume=resume,
                 legacy={"": legacy}, changeable=("baselines",))
    if run.changed:  # only the baselines may change: the new ones are trained, the finished steps are kept
        log(f"resuming {run.path} with the baselines {', '.join(cfg.baselines)}: finished networks are kept, "
            f"missing ones are trained")
    common = dict(resume=resume, progress=progress, log=log, accelerator=accelerator)
    weights = step("pretrain", lambda: resolve_backbone_weights(
        model, data, log, {"num_scenes": cfg.pretrain_scenes, "epochs": cfg.pretrain_epochs, "seed": cfg.seed}, progress))
    model = dataclasses.replace(model, backbone_weights=weights)  # every later step loads this very file
    threads = torch.get_num_threads()
    split = cpu_split(threads, accelerator, torch.cuda.is_available()) if split_cpu else None
    nets = _networks(run, cfg)
    searched, others = nets[0][1], nets[1:]
    retrain = {sub: dict(out=run.file(sub), data=data, model=model, train=train, fps_size=cfg.fps_size,
                         fps_alone=split is None, **which, **common) for _, sub, which in nets}
    side = None
    if split is not None:
        log(f"[demo] {', '.join(sub for _, sub, _ in others)} retrain in a second process beside the search, "
            f"{split[1]} thread(s) there and {split[0]} here (log: {run.file('retrain.log')})")
        side = SideProcess([(sub, retrain[sub]) for _, sub, _ in others], split[1], run.file("retrain.log")).start()
        torch.set_num_threads(split[0])
    results = {}
    try:
        search = step("search", lambda: run_search(
            run.file("search"), "sparsemask", {"lambda_sparse": cfg.lambda_sparse, "threshold": cfg.threshold,
                                               "seed": cfg.seed}, data, model, cfg.search_config(),
            cost_threads=threads, **common))
        heatmap = run.file("search") / "w_heatmap.png"
        if heatmap.is_file():
            shutil.copyfile(heatmap, run.file("w_heatmap.png"))
        if side is not None and side.done():  # it finished first: its threads are free again
            torch.set_num_threads(threads)
        results[searched] = step(f"retrain {searched}", lambda: run_retrain(**retrain[searched]))
        if side is not None:
            for sub, seconds in side.finish(log).items():
                step.seconds[f"retrain {sub} (second process)"] = seconds
            for _, sub, _ in others:  # finished there: read back, nothing trained again
                results[sub] = run_retrain(**dict(retrain[sub], resume=True, log=lambda _: None))
        else:
            for _, sub, _ in others:
                results[sub] = step(f"retrain {sub}", lambda sub=sub: run_retrain(**retrain[sub]))
    finally:
        if side is not None:
            side.stop()
            torch.set_num_threads(threads)
    fps_runs = {sub: run.file(sub) for _, sub, _ in nets}
    side_fps = step("FPS", lambda: fps_side_by_side(fps_runs, cfg.fps_size, device=_fps_device(accelerator)))
    rows = _rows(run, nets, results, side_fps)
    step.seconds["total"] = round(time.time() - step.start, 1)
    note = _note(cfg, side_fps, results["fdn"].get("fps_form", AS_GIVEN))
    return _finish(run, rows, note, search, side_fps, step.seconds, log)
