"""Does the per-edge cost table predict how fast a whole pruned network runs? Spearman rank correlation.

Networks: the hand-designed decoders of the FDN space (fcn, unet, sparseacn, and the dense fdn) and ``--random``
decoders from ``baselines.samplers.random_connectivity`` with densities spread over 0.05-0.95 (a search visits
that whole range). For each: the latency the table predicts (``measure.latency.profile_space(kind="latency")``:
every operation of ``fuse`` timed on its own, plus the encoder and head), the bytes it predicts (counted), and the
latency measured on the whole ``build_pruned`` network (``measure_fps(inference=True)``; ``--rounds`` interleaved
passes, the least disturbed pass of each network kept). Printed: the machine, each network's numbers, the
Spearman correlation of measured latency with each prediction (random weights: timing depends on the
architecture only), and the noise ceiling: the correlation of the odd passes' best with the even passes' best.

    python benchmarks/cost_predictor.py                       # the demo: convnet 16-96, C_dec 32, 256x256
    python benchmarks/cost_predictor.py --paper               # MobileNetV2 1.0, C_dec 64, 512x512, 21 classes
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

DEMO = {"backbone": "convnet", "backbone_kwargs": '{"widths": [16, 32, 48, 64, 96]}', "size": 256,
        "decoder_channels": 32, "num_classes": 11}
PAPER = {"backbone": "mobilenet_v2", "backbone_kwargs": "{}", "size": 512, "decoder_channels": 64, "num_classes": 21}
DECODERS = ("fcn", "unet", "sparseacn", "fdn")


def spearman(a, b) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (ties get their mean rank)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def networks(backbone, kwargs, n_random, seed):
    from nni_sparsemask.baselines.samplers import random_connectivity
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.run.registry import decoder_connectivity

    info = build_backbone(backbone, **kwargs).feature_info
    conns = {name: decoder_connectivity(name, backbone, info, kwargs) for name in DECODERS}
    seen = {frozenset((e.target, e.source) for e in c.edges) for c in conns.values()}
    i = 0
    while sum(name.startswith("random") for name in conns) < n_random:
        density = 0.05 + 0.9 * (i % max(n_random, 2)) / max(n_random - 1, 1)
        conn = random_connectivity(backbone, info, density=min(density, 1.0), seed=seed + i, backbone_kwargs=kwargs)
        i += 1
        edges = frozenset((e.target, e.source) for e in conn.edges)
        if edges not in seen:
            seen.add(edges)
            conns[f"random d={density:.2f} s={seed + i - 1}"] = conn
    return conns


def main(argv=None) -> dict:
    from nni_sparsemask.fdn.pruned import build_pruned
    from nni_sparsemask.measure.fps import measure_fps
    from nni_sparsemask.measure.latency import profile_space

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=DEMO["backbone"])
    ap.add_argument("--backbone-kwargs", default=DEMO["backbone_kwargs"], help="JSON")
    ap.add_argument("--size", type=int, default=DEMO["size"])
    ap.add_argument("--decoder-channels", type=int, default=DEMO["decoder_channels"])
    ap.add_argument("--num-classes", type=int, default=DEMO["num_classes"])
    ap.add_argument("--paper", action="store_true", help="the paper's setting (overrides the five above)")
    ap.add_argument("--random", type=int, default=20, help="random decoders besides the four hand-designed ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved passes over the networks")
    ap.add_argument("--seconds", type=float, default=0.3, help="timed seconds per network and pass")
    ap.add_argument("--op-seconds", type=float, default=0.2, help="timed seconds per operation of the table")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every timing (default 1: on a shared, oversubscribed CPU, two OpenMP "
                         "threads made every network up to 50x slower and erratic)")
    ap.add_argument("--json", help="also write the results here (an existing file is refused)")
    args = ap.parse_args(argv)
    if args.json and Path(args.json).exists():
        raise SystemExit(f"{args.json} exists: pass another --json path (results are never overwritten)")
    if args.paper:
        for k, v in PAPER.items():
            setattr(args, k, v)
    kwargs = json.loads(args.backbone_kwargs)

    from nni_sparsemask import malloc

    allocator = malloc.tune()  # as the sparsemask commands time networks (NNI_SPARSEMASK_MALLOC=default: glibc's)
    torch.manual_seed(0)
    started = time.time()
    conns = networks(args.backbone, kwargs, args.random, args.seed)
    nets = {name: build_pruned(c, args.num_classes, args.decoder_channels) for name, c in conns.items()}
    space = dict(backbone=args.backbone, backbone_kwargs=kwargs, decoder_channels=args.decoder_channels,
                 num_classes=args.num_classes)
    info = conns["fdn"].feature_info
    latency = profile_space(info, "latency", args.size, device=args.device, min_run_time=args.op_seconds,
                            num_threads=args.threads, **space)
    counted = profile_space(info, "bytes", args.size, **space)
    profiled = time.time() - started
    passes = {name: [] for name in nets}
    for _ in range(args.rounds):
        for name, net in nets.items():
            r = measure_fps(net, input_size=args.size, device=args.device, min_run_time=args.seconds,
                            inference=True, warmup=2, num_threads=args.threads)
            passes[name].append(r.median_seconds)
    best = {name: min(p) for name, p in passes.items()}
    rows = [{"name": name, "edges": conns[name].num_edges, "measured_s": best[name],
             "predicted_s": latency.predict(conns[name]), "bytes": counted.predict(conns[name])} for name in nets]
    measured = [r["measured_s"] for r in rows]
    rho = {"latency": spearman(measured, [r["predicted_s"] for r in rows]),
           "bytes": spearman(measured, [r["bytes"] for r in rows])}
    if args.rounds >= 2:  # the noise ceiling: how well one half of the passes ranks the networks like the other
        rho["repeat"] = spearman([min(passes[n][0::2]) for n in nets], [min(passes[n][1::2]) for n in nets])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{latency.key.device}, {latency.key.threads} threads, torch {torch.__version__}, malloc {allocator}"
          + (f", load average {load[0]:.1f} at the end" if load else ""))
    print(f"{args.backbone} {kwargs}, C_dec {args.decoder_channels}, {args.num_classes} classes, {args.size}x"
          f"{args.size}, batch 1, deployment form; table: {args.op_seconds}s per operation ({profiled:.0f}s with "
          f"building); networks: best of {args.rounds} interleaved passes of {args.seconds}s (median per pass)")
    print("| network | edges | measured ms | predicted ms | predicted / measured | predicted MB written |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: r["measured_s"]):
        print(f"| {r['name']} | {r['edges']} | {r['measured_s'] * 1e3:.2f} | {r['predicted_s'] * 1e3:.2f} | "
              f"{r['predicted_s'] / r['measured_s']:.2f} | {r['bytes'] / 2**20:.1f} |")
    print(f"Spearman rho, measured latency vs predicted latency: {rho['latency']:.3f}; vs predicted bytes: "
          f"{rho['bytes']:.3f} ({len(rows)} networks, {time.time() - started:.0f}s in all)")
    if "repeat" in rho:
        print(f"Noise ceiling, the best of the odd passes vs the best of the even passes: {rho['repeat']:.3f}")
    result = {"device": latency.key.device, "threads": latency.key.threads, "torch": torch.__version__,
              "malloc": allocator,
              "setting": {**space, "size": args.size}, "rounds": args.rounds, "seconds": args.seconds, "passes_s": passes,
              "op_seconds": args.op_seconds, "rows": rows, "spearman": rho, "load_average": load,
              "table_primitives": latency.primitives}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
