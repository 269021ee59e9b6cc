"""Ablation of the search recipe on the demo's search (DigitScenes, the demo's convnet and settings).

Each row searches the FDN space with SparseMask under one way of training w (``SearchConfig``: optimizer, lr,
noise, weight decay, frozen BN), prunes at sigma, retrains the searched decoder with the demo's budget and
evaluates it; the dense FDN is retrained once with the same budget as the reference. Columns: the undecided
fraction of w at the end of the search (w in (sigma, 0.999)), the kept edges, mIoU after retraining, and the FPS
ratio to the dense FDN (all networks timed side by side, paired median over the passes, deployment form).

Every search and retraining is seeded (the demo's seed), so a row is one measurement, not a mean over seeds.
Each step is a run directory under ``--out``; a second invocation resumes and keeps finished steps.

    python benchmarks/search_ablation_demo.py --out runs/ablation            # every row (~30 min on 2 cores)
    python benchmarks/search_ablation_demo.py --out runs/ablation --rows old recipe
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from nni_sparsemask.run.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
from nni_sparsemask.run.demo import DemoConfig, ratio_over_passes, time_side_by_side

RECIPE = dict(arc_optimizer="shared", arc_learning_rate=None, arc_noise=0.05, arc_weight_decay=4e-5)
#: row name -> (description, SearchConfig fields other than the schedule)
ROWS: dict[str, tuple[str, dict]] = {
    "old": ("Adam 0.1 on w, no noise, no wd (the demo until now)",
            dict(arc_optimizer="adam", arc_learning_rate=0.1, arc_noise=0.0, arc_weight_decay=0.0)),
    "recipe": ("official recipe: w in the network's SGD (decoder lr), noise 0.05, wd 4e-5",
               dict(arc_optimizer="shared", arc_learning_rate=None, arc_noise=0.05, arc_weight_decay=4e-5)),
    "recipe_no_noise": ("recipe without noise",
                        dict(arc_optimizer="shared", arc_learning_rate=None, arc_noise=0.0, arc_weight_decay=4e-5)),
    "recipe_no_wd": ("recipe without weight decay on w",
                     dict(arc_optimizer="shared", arc_learning_rate=None, arc_noise=0.05, arc_weight_decay=0.0)),
    "cost_latency_0.3": ("recipe + cost-aware: decoder latency <= 0.3 x the dense decoder's (table timed here)",
                         dict(RECIPE, cost="latency", budget=0.3)),
    "cost_latency_0.15": ("recipe + cost-aware: decoder latency <= 0.15 x the dense decoder's",
                          dict(RECIPE, cost="latency", budget=0.15)),
    "cost_latency_0.3_mu0.3": ("recipe + latency <= 0.3 x dense decoder, cost weight mu 0.3 (default 1)",
                               dict(RECIPE, cost="latency", budget=0.3, cost_weight=0.3)),
    "cost_latency_0.3_mu3": ("recipe + latency <= 0.3 x dense decoder, cost weight mu 3 (default 1)",
                             dict(RECIPE, cost="latency", budget=0.3, cost_weight=3.0)),
    "cost_bytes_0.3": ("recipe + cost-aware: decoder bytes written <= 0.3 x the dense decoder's",
                       dict(RECIPE, cost="bytes", budget=0.3)),
    "recipe_freeze_bn": ("recipe + frozen BN (the official code's BN)",
                         dict(arc_optimizer="shared", arc_learning_rate=None, arc_noise=0.05, arc_weight_decay=4e-5,
                              freeze_bn=True)),
}

#: the rows of benchmarks/RESULTS.md's ablation table; the others (a tighter budget, the cost weight, frozen BN) on demand
DEFAULT_ROWS = ("old", "recipe", "recipe_no_noise", "recipe_no_wd", "cost_bytes_0.3", "cost_latency_0.3")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder of the run directories (resumed when it exists)")
    p.add_argument("--rows", nargs="*", default=list(DEFAULT_ROWS), choices=list(ROWS))
    p.add_argument("--search-epochs", type=int, default=DemoConfig.search_epochs)
    p.add_argument("--retrain-epochs", type=int, default=DemoConfig.retrain_epochs)
    p.add_argument("--train-scenes", type=int, default=DemoConfig.train_scenes)
    p.add_argument("--decoder-channels", type=int, default=DemoConfig.decoder_channels)
    p.add_argument("--fps-rounds", type=int, default=5)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from nni_sparsemask.run.pipeline import resolve_backbone_weights
    from nni_sparsemask.run.steps import load_run_network, run_retrain, run_search

    demo = DemoConfig(search_epochs=args.search_epochs, retrain_epochs=args.retrain_epochs,
                      train_scenes=args.train_scenes, decoder_channels=args.decoder_channels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig(image_size=demo.image_size, train_scenes=demo.train_scenes, val_scenes=demo.val_scenes,
                      seed=demo.seed)
    model = ModelConfig(decoder_channels=demo.decoder_channels)
    train = TrainConfig(epochs=demo.retrain_epochs, learning_rate=demo.learning_rate, seed=demo.seed)
    log = print
    progress = not args.no_progress
    weights = resolve_backbone_weights(model, data, log, progress=progress)
    model = ModelConfig(decoder_channels=demo.decoder_channels, backbone_weights=weights)
    common = dict(resume=True, progress=progress, log=log, accelerator="cpu")

    t0 = time.time()
    rows, nets = {}, {}
    dense = run_retrain(out / "fdn", data, model, train, decoder="fdn", fps_size=demo.fps_size, **common)
    nets["fdn"] = load_run_network(out / "fdn")[0]
    for name in args.rows:
        desc, arc = ROWS[name]
        sized = {"cost_size": demo.fps_size} if arc.get("cost") else {}  # costs taken at the FPS side
        schedule = SearchConfig(epochs=demo.search_epochs, learning_rate=demo.learning_rate, **sized, **arc)
        s0 = time.time()
        search = run_search(out / name / "search", "sparsemask",
                            {"lambda_sparse": demo.lambda_sparse, "threshold": demo.threshold, "seed": demo.seed},
                            data, model, schedule, **common)
        metrics = run_retrain(out / name / "retrain", data, model, train,
                              connectivity=out / name / "search" / "connectivity.json", fps_size=demo.fps_size,
                              **common)
        nets[name] = load_run_network(out / name / "retrain")[0]
        rows[name] = {"description": desc, "search": dict(arc), "undecided": search["binarization"].get("undecided_fraction"),
                      "edges": search["edges"], "stages": search["stages"], "miou": metrics["miou"],
                      "search_seconds": search.get("search_seconds"), "seconds": round(time.time() - s0, 1),
                      "cost": search.get("cost")}
    side = time_side_by_side(nets, demo.fps_size, rounds=args.fps_rounds, device="cpu")
    for name, row in rows.items():
        row["fps_ratio"] = ratio_over_passes(side["rounds"], name, "fdn")
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "fps_device": side["device"], "dense_fdn_miou": dense["miou"],
              "settings": {"search_epochs": demo.search_epochs, "retrain_epochs": demo.retrain_epochs,
                           "train_scenes": demo.train_scenes, "image_size": demo.image_size,
                           "fps_size": demo.fps_size, "seed": demo.seed, "decoder_channels": demo.decoder_channels},
              "rows": rows, "seconds": round(time.time() - t0, 1)}
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    print(f"\nmachine: {result['machine']}; dense FDN mIoU {100 * dense['miou']:.1f}; {result['settings']}")
    print("| row | undecided | edges (stages) | mIoU | FPS / dense FDN (range) | search s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        med, lo, hi = r["fps_ratio"]
        und = "-" if r["undecided"] is None else f"{100 * r['undecided']:.1f}%"
        print(f"| {name}: {r['description']} | {und} | {r['edges']} ({r['stages']}) | {100 * r['miou']:.1f} | "
              f"{med:.2f}x ({lo:.2f}-{hi:.2f}) | {r['search_seconds']:.0f} |")
    for name, r in rows.items():
        c = r.get("cost")
        if c:
            pred = c["predicted"]
            line = (f"{name}: {c['cost']} budget {c['budget_fraction']:.2f} x dense decoder; predicted whole network "
                    f"{c['searched']:.4g} {c['unit']} (dense FDN {pred['dense']:.4g}, FCN {pred['fcn']:.4g})")
            if c["cost"] == "latency":
                line += (f" = {c['searched_fps']:.1f} FPS (dense {1 / pred['dense']:.1f}, FCN {1 / pred['fcn']:.1f}); "
                         f"predicted / dense FPS {pred['dense'] / c['searched']:.2f}x")
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
