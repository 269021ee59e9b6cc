"""The paper's transfer experiments (Tables 3, 5 and 6, and section 5.1's backbones) in form, on DigitScenes.

1. Search a connectivity with SparseMask on the segmentation view (or take ``--connectivity``, e.g. the demo's
   ``runs/demo/search/connectivity.json``).
2. Retrain it, FCN and the dense FDN on each task's view -- segmentation (mIoU), saliency (max F-beta, MAE) and
   edges (ODS / OIS / AP with BSDS's matching) -- with that task's loss and the same budget, as the paper
   transferred its VOC connectivity to MSRA-B / ECSSD / DUTS and BSDS500.
3. Transfer the connectivity to a second backbone (``--backbone``, default MobileNetV2 x0.5) by matching spatial
   reductions (``sparsemask transfer``), and retrain it there beside that backbone's FCN and dense FDN
   (segmentation), FPS timed side by side.

Writes ``OUT/transfer.md`` (the tables) and ``OUT/transfer.json``; every network is a run directory under
``OUT`` (``sparsemask report`` reads them per task). Interrupted, it resumes with ``--resume`` (finished runs are
kept). Run::

    python experiments/transfer_tasks.py --out runs/transfer
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

TASK_ROWS = {"segmentation": ("miou", "pixel_accuracy", "fg_iou"), "saliency": ("max_fbeta", "mae", "fg_iou"),
             "edges": ("ods", "ois", "ap")}
NAMES = {"miou": "mIoU", "pixel_accuracy": "PixAcc", "fg_iou": "fg IoU", "max_fbeta": "max F-beta", "mae": "MAE",
         "ods": "ODS", "ois": "OIS", "ap": "AP"}
SMOKE_DATA = {"image_size": 32, "batch_size": 8}
SMOKE_MODEL = {"backbone_kwargs": {"widths": [4, 8, 8, 8, 8]}, "backbone_weights": None, "decoder_channels": 8}
NETWORKS = (("SparseMask (transferred)", "sparsemask"), ("FDN (dense)", "fdn"), ("FCN", "fcn"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/transfer", help="run directory of the experiment")
    p.add_argument("--connectivity", default=None,
                   help="a searched connectivity.json on the default convnet (default: search one here)")
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--retrain-epochs", type=int, default=8)
    p.add_argument("--train-scenes", type=int, default=2000)
    p.add_argument("--val-scenes", type=int, default=500)
    p.add_argument("--tasks", nargs="+", default=list(TASK_ROWS), choices=list(TASK_ROWS))
    p.add_argument("--backbone", default="mobilenet_v2", help="the second backbone ('none': skip step 3)")
    p.add_argument("--backbone-kwargs", default='{"width_mult": 0.5}', help="its constructor arguments (JSON)")
    p.add_argument("--fps-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (finished runs are kept)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, to check the script runs: 32px scenes, a narrow convnet with random weights")
    args = p.parse_args(argv)
    for name in ("search_epochs", "retrain_epochs", "train_scenes", "val_scenes", "fps_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        args.backbone_kwargs = json.loads(args.backbone_kwargs)
    except json.JSONDecodeError as err:
        p.error(f"--backbone-kwargs is not JSON ({err})")
    if args.connectivity is not None and not Path(args.connectivity).is_file():
        p.error(f"--connectivity {args.connectivity} not found")
    return args


def _retrain(out: Path, data: Any, model: Any, train: Any, which: dict[str, Any], args: argparse.Namespace,
             log) -> dict[str, Any]:
    from nni_sparsemask.run.steps import run_retrain

    if (out / "metrics.json").is_file():  # finished before an interruption
        return json.loads((out / "metrics.json").read_text())
    return run_retrain(out, data, model, train, fps_size=args.fps_size, resume=args.resume and out.exists(),
                       progress=not args.no_progress, log=log, **which)


def _timed(runs: dict[str, Path], args: argparse.Namespace) -> tuple[dict[str, float], dict[str, tuple]]:
    """FPS of the trained networks of ``runs`` timed side by side on the CPU (best pass) and each one's FPS / dense
    FDN as the median (range) of the ratio within each pass."""
    from nni_sparsemask.run.demo import fps_side_by_side, ratio_over_passes

    side = fps_side_by_side(runs, args.fps_size, device="cpu", **({"rounds": 2, "seconds": 0.05} if args.smoke else {}))
    return side["fps"], {sub: ratio_over_passes(side["rounds"], sub, "fdn") for sub in runs}


def _table(task: str, results: dict[str, dict[str, Any]], ratios: dict[str, tuple]) -> str:
    keys = TASK_ROWS[task]
    head = "| network | " + " | ".join(NAMES[k] for k in keys) + " | decoder params | FPS | FPS / dense FDN |"
    lines = [head, "|" + " --- |" + " ---: |" * (len(keys) + 3)]
    for title, sub in NETWORKS:
        m = results[sub]
        cells = [f"{m[k]:.3f}" if k == "mae" else f"{100 * m[k]:.1f}" for k in keys]
        r = ratios[sub]
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {m['params_decoder'] / 1e3:.1f}K | {m['fps']:.1f} | "
                     f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.fdn.connectivity import Connectivity
    from nni_sparsemask.run.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
    from nni_sparsemask.run.pipeline import resolve_backbone_weights
    from nni_sparsemask.run.steps import run_search

    out = Path(args.out)
    if out.exists() and not args.resume:
        print(f"transfer_tasks: error: {out} exists; pass --resume to continue it or choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log = print
    t0 = time.time()
    base = DataConfig(train_scenes=args.train_scenes, val_scenes=args.val_scenes, seed=args.seed,
                      **(SMOKE_DATA if args.smoke else {}))
    model = ModelConfig(**(SMOKE_MODEL if args.smoke else {}))
    model = dataclasses.replace(model, backbone_weights=resolve_backbone_weights(model, base, log,
                                                                                 progress=not args.no_progress))
    train = TrainConfig(epochs=args.retrain_epochs, seed=args.seed)
    conn_path = Path(args.connectivity) if args.connectivity else out / "search" / "connectivity.json"
    if args.connectivity is None and not conn_path.is_file():
        run_search(out / "search", "sparsemask", {"seed": args.seed}, base, model,
                   SearchConfig(epochs=args.search_epochs), resume=args.resume and (out / "search").exists(),
                   progress=not args.no_progress, log=log)
    conn = Connectivity.from_json(conn_path)
    log(f"[transfer] connectivity {conn_path}: {conn.num_edges} edges")

    summary: dict[str, Any] = {"connectivity": str(conn_path), "edges": conn.num_edges, "tasks": {}}
    sections = [f"Connectivity searched on DigitScenes segmentation ({conn_path}, {conn.num_edges} edges), "
                f"retrained with each task's loss: {args.retrain_epochs} epochs on {args.train_scenes} scenes "
                f"({base.image_size}px), scored on {args.val_scenes} val scenes. FPS: the three networks of a table timed "
                f"side by side on the CPU at {args.fps_size}x{args.fps_size}, batch 1, deployment form (best pass; "
                "FPS / dense FDN: median and range of the ratio within each pass)."]
    for task in args.tasks:
        data = dataclasses.replace(base, task=task)
        results = {}
        for title, sub in NETWORKS:
            which = dict(connectivity=conn_path) if sub == "sparsemask" else dict(decoder=sub)
            log(f"\n[transfer] {task}: {title}")
            results[sub] = _retrain(out / task / sub, data, model, train, which, args, log)
        fps, ratios = _timed({sub: out / task / sub for _, sub in NETWORKS}, args)
        results = {sub: dict(results[sub], fps=fps[sub]) for sub in results}
        summary["tasks"][task] = {sub: {**{k: results[sub].get(k) for k in TASK_ROWS[task] + ("params_decoder", "fps")},
                                        "fps_ratio": ratios[sub][0]} for _, sub in NETWORKS}
        sections.append(f"### {task}\n\n{_table(task, results, ratios)}")

    if args.backbone != "none":
        other = ModelConfig(backbone=args.backbone, backbone_kwargs=args.backbone_kwargs,
                            **({k: v for k, v in SMOKE_MODEL.items() if k.startswith("backbone_w") or
                                k == "decoder_channels"} if args.smoke else {}))
        other = dataclasses.replace(other, backbone_weights=resolve_backbone_weights(other, base, log,
                                                                                     progress=not args.no_progress))
        info = build_backbone(args.backbone, **args.backbone_kwargs).feature_info
        moved = conn.transfer(args.backbone, info, args.backbone_kwargs)
        moved_path = out / f"connectivity_{args.backbone}.json"
        moved.to_json(moved_path, overwrite=True)
        mapping = conn.stage_mapping(info)
        results = {}
        for title, sub in NETWORKS:
            which = dict(connectivity=moved_path) if sub == "sparsemask" else dict(decoder=sub)
            log(f"\n[transfer] {args.backbone}: {title}")
            results[sub] = _retrain(out / args.backbone / sub, base, other, train, which, args, log)
        fps, ratios = _timed({sub: out / args.backbone / sub for _, sub in NETWORKS}, args)
        results = {sub: dict(results[sub], fps=fps[sub]) for sub in results}
        matched = ", ".join(f"E{i}->{'E' + str(j) if j else 'dropped'}" for i, j in mapping.items())
        sections.append(f"### backbone {args.backbone} {json.dumps(args.backbone_kwargs)}\n\n"
                        f"Stages matched by reduction: {matched}; {moved.num_edges} edges kept.\n\n"
                        + _table("segmentation", results, ratios))
        summary["backbone"] = {"name": args.backbone, "kwargs": args.backbone_kwargs, "edges": moved.num_edges,
                               "mapping": {str(k): v for k, v in mapping.items()},
                               "results": {sub: {k: results[sub].get(k) for k in TASK_ROWS["segmentation"]
                                                 + ("params_decoder", "fps")} for _, sub in NETWORKS},
                               "fps_ratio": {sub: ratios[sub][0] for _, sub in NETWORKS}}
    summary["seconds"] = round(time.time() - t0, 1)
    text = "\n\n".join(sections) + f"\n\nTotal {summary['seconds'] / 60:.0f} min.\n"
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps(summary, indent=1))
    log("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
