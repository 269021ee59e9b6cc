"""The ``sparsemask`` command. Today: ``demo`` (a short end-to-end search on DigitScenes) and ``report``.

``sparsemask demo`` runs SparseMask on the FDN space over the ``convnet`` backbone on the built-in DigitScenes
data (no download): search under ``NasExperiment`` -> prune at sigma -> ``build_pruned`` -> decoder parameters
and CPU FPS of the searched decoder beside the dense FDN, plus the Fig. 5 heatmap of the final w. The pretrain /
retrain / evaluate steps of the full pipeline are not wired in yet (see the open pipeline issue).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _demo(args) -> int:
    import torch
    from nni.nas.experiment import NasExperiment

    from .metrics import count_parameters, format_params, measure_fps
    from .model import build_pruned
    from .rundir import RunDir
    from .space import FDNSpace
    from .strategy import SparseMask
    from .train import DigitScenesLoader, Segmentation

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    config = {"command": "demo", "method": "sparsemask", "params": {"lambda_sparse": args.lambda_sparse,
              "threshold": args.threshold}, "seed": args.seed, "epochs": args.epochs, "image_size": args.image_size,
              "scenes": args.scenes}
    run = RunDir(args.out, config, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    widths = (16, 32, 48, 64, 96)
    space = FDNSpace("convnet", num_classes=11, decoder_channels=32, backbone_kwargs={"widths": widths})
    data = dict(image_size=args.image_size, seed=args.seed)
    evaluator = Segmentation(
        num_classes=11, learning_rate=0.01,
        train_dataloaders=DigitScenesLoader(batch_size=16, shuffle=True, drop_last=True, split="train",
                                            num_scenes=args.scenes, **data),
        val_dataloaders=DigitScenesLoader(batch_size=32, split="val", num_scenes=max(args.scenes // 4, 32), **data),
        max_epochs=args.epochs, accelerator="cpu", enable_checkpointing=False, logger=False,
    )
    strategy = SparseMask(lambda_sparse=args.lambda_sparse, threshold=args.threshold, arc_learning_rate=0.02,
                          seed=args.seed, run_dir=run.file("search"))
    print(f"[demo] SparseMask search: {args.epochs} epochs, {args.scenes} DigitScenes {args.image_size}px, run dir {run.path}")
    t0 = time.time()
    NasExperiment(space, evaluator, strategy).run()
    search_s = time.time() - t0
    conn = strategy.connectivity()
    conn.to_json(run.file("connectivity.json"), overwrite=True)
    dense = space.dense_connectivity()
    rows = []
    for name, c in (("FDN (dense)", dense), ("SparseMask", conn)):
        net = build_pruned(c, num_classes=11, decoder_channels=32, backbone_kwargs={"widths": widths})
        p = count_parameters(net)
        fps = measure_fps(net, input_size=(args.image_size * 4, args.image_size * 4), device="cpu", min_run_time=1.0)
        rows.append({"method": name, "edges": c.num_edges, "stages": len(c.stages()),
                     "params": format_params(p), "params_decoder": p.decoder, "fps": fps.fps})
    gap = strategy.binarization()["overall"]
    print(f"\n{'method':<12} {'edges':>5} {'stages':>6} {'params enc+dec':>15} {'CPU FPS':>8}")
    for r in rows:
        print(f"{r['method']:<12} {r['edges']:>5} {r['stages']:>6} {r['params']:>15} {r['fps']:>8.1f}")
    print(f"FPS at {args.image_size * 4}x{args.image_size * 4}, batch 1, {torch.get_num_threads()} CPU threads; "
          f"search took {search_s:.0f} s; binarisation: {gap}")
    try:
        from .analysis import plot_w_heatmaps, save_figure
        save_figure(plot_w_heatmaps({"SparseMask": conn}), run.file("w_heatmap.png"))
        print(f"heatmap of the final w: {run.file('w_heatmap.png')}")
    except Exception as err:  # the figure is a convenience; the numbers above are the result
        print(f"(heatmap not written: {err})")
    run.write_json("metrics.json", {"method": "sparsemask", "params": config["params"], "seed": args.seed,
                                    "rows": rows, "search_seconds": search_s, "binarization": gap})
    return 0


def _report(args) -> int:
    from .analysis import write_report

    path = write_report(args.source, args.out, overwrite=args.overwrite)
    print(f"report written: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsemask", description="SparseMask connectivity search on NNI")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="short end-to-end SparseMask search on the built-in DigitScenes data")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--scenes", type=int, default=1000)
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--lambda-sparse", type=float, default=0.01)
    demo.add_argument("--threshold", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    demo.set_defaults(func=_demo)
    rep = sub.add_parser("report", help="Table 1, Fig. 4, Fig. 5 from run directories or an NNI experiment id")
    rep.add_argument("source")
    rep.add_argument("--out", required=True)
    rep.add_argument("--overwrite", action="store_true")
    rep.set_defaults(func=_report)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"sparsemask {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
