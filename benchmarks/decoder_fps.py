"""FPS of pruned decoders against the dense FDN and FCN, in the as-built form and in the deployment form.

Timing depends on the architecture only, so the networks are built with random weights from connectivity files
(``connectivity.json`` of a search, or of a ``retrain``); the dense FDN and FCN of the same backbone are added.
Every network is timed in two forms:

* ``as built``: the ``nn.Module`` that ``build_pruned`` returns, NCHW, BN as separate modules;
* ``deploy``: ``nni_sparsemask.measure.deploy.inference_form`` (BN folded into the convolutions, channels_last weights
  and input), the form ``evaluate_network`` and the demo time.

The networks are interleaved round-robin ``--rounds`` times. Printed, all from this run: ms per forward and FPS of
each network's best pass (the least disturbed one on a shared machine), and FPS / dense FDN as the median and range
of the ratio within each pass (paired, so that a slow phase of the machine cancels out). Then, for the deployment
form, what no machine changes (``nni_sparsemask.measure.cost``): operator calls, FLOPs and bytes written per forward,
which bound the FPS ratio in the launch-bound (GPU at batch 1), compute-bound and memory-bound regimes.

    python benchmarks/decoder_fps.py runs/search/connectivity.json --size 256
    python benchmarks/decoder_fps.py a/connectivity.json b/connectivity.json --decoder-channels 64 --device cuda
    python benchmarks/decoder_fps.py runs/search --peers     # + the smp peer decoders (extra: peers) as rows

``--peers`` adds the peer decoders of segmentation_models_pytorch (``smp-unet``, ``smp-fpn``, ``smp-deeplabv3plus``,
``smp-pan``, ``smp-linknet``; ``baselines/smp_peers.py``) on the same backbone at smp's default widths.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch


def build_networks(paths: list[str], decoder_channels: int, num_classes: int, peers: bool = False
                   ) -> dict[str, torch.nn.Module]:
    from nni_sparsemask.run.registry import DECODERS, build_decoder, decoder_connectivity
    from nni_sparsemask.fdn.connectivity import Connectivity
    from nni_sparsemask.fdn.pruned import build_pruned

    conns = {}
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "connectivity.json"
        if not path.is_file():
            raise SystemExit(f"no connectivity file at {path}: pass a connectivity.json or a run directory holding one")
        conns[f"{path.parent.name}/{path.name}"] = Connectivity.from_json(path)
    first = next(iter(conns.values()))
    for name, conn in conns.items():
        if conn.backbone != first.backbone or conn.backbone_kwargs != first.backbone_kwargs:
            raise SystemExit(f"{name} is for {conn.backbone} {conn.backbone_kwargs}, the first file for "
                             f"{first.backbone} {first.backbone_kwargs}: compare connectivities of one backbone")
    info = first.feature_info
    kwargs = dict(first.backbone_kwargs or {})
    nets = {}
    for name in ("fdn", "fcn"):
        conn = decoder_connectivity(name, first.backbone, info, kwargs)
        nets[name] = build_pruned(conn, num_classes, decoder_channels)
    for name, conn in conns.items():
        nets[f"{name} ({len(conn.edges)} edges)"] = build_pruned(conn, num_classes, decoder_channels)
    for name in (n for n in DECODERS if peers and n.startswith("smp-")):  # smp's own widths
        nets[name] = build_decoder(name, first.backbone, num_classes, backbone_kwargs=kwargs)
    return nets


def main(argv=None) -> dict:
    from nni_sparsemask.measure.cost import inference_cost
    from nni_sparsemask.run.demo import ratio_over_passes
    from nni_sparsemask.measure.fps import measure_fps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("connectivity", nargs="+", help="connectivity.json files (or run directories holding one)")
    ap.add_argument("--size", type=int, default=256, help="input side (default 256, the demo's)")
    ap.add_argument("--decoder-channels", type=int, default=32, help="C_dec (default 32, the demo's)")
    ap.add_argument("--num-classes", type=int, default=11)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per network and pass")
    ap.add_argument("--json", help="also write the results here (an existing file is refused)")
    ap.add_argument("--peers", action="store_true", help="also time the smp peer decoders (extra: peers)")
    args = ap.parse_args(argv)
    if args.json and Path(args.json).exists():
        raise SystemExit(f"{args.json} exists: pass another --json path (results are never overwritten)")

    torch.manual_seed(0)
    nets = build_networks(args.connectivity, args.decoder_channels, args.num_classes, args.peers)
    forms = {"as built": False, "deploy": True}
    passes = {form: [] for form in forms}
    best = {}
    for _ in range(args.rounds):
        this = {form: {} for form in forms}
        for name, net in nets.items():
            for form, inference in forms.items():
                r = measure_fps(net, input_size=args.size, device=args.device, min_run_time=args.seconds,
                                inference=inference)
                this[form][name] = r.fps
                if (name, form) not in best or r.fps > best[(name, form)].fps:
                    best[(name, form)] = r
        for form in forms:
            passes[form].append(this[form])
    any_r = next(iter(best.values()))
    print(f"{any_r.device}, {args.size}x{args.size}, batch 1, {any_r.num_threads} threads, C_dec "
          f"{args.decoder_channels}; {args.rounds} round-robin passes: ms and FPS of the best pass, FPS / dense FDN "
          f"the median (range) of the ratio within each pass")
    print("| network | form | ms | FPS | FPS / dense FDN |\n| --- | --- | ---: | ---: | ---: |")
    rows = []
    for form in forms:
        for name in nets:
            r = best[(name, form)]
            ratio, lo, hi = ratio_over_passes(passes[form], name, "fdn")
            rows.append({"network": name, "form": form, "ms": 1e3 / r.fps, "fps": r.fps, "ratio": ratio,
                         "ratio_range": [lo, hi]})
            print(f"| {name} | {form} | {1e3 / r.fps:.2f} | {r.fps:.1f} | {ratio:.2f}x ({lo:.2f}-{hi:.2f}) |")
    costs = {name: inference_cost(net, args.size, inference=True) for name, net in nets.items()}
    print("\nDeployment form, counted (not timed): operator calls, FLOPs, bytes written per forward, and how many "
          "times the dense FDN's count each is")
    print("| network | ops | GFLOP | MB written | dense / ops | dense / FLOP | dense / bytes |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cost_rows = []
    for name, cost in costs.items():
        q = cost.ratio(costs["fdn"])
        cost_rows.append({"network": name, **dataclasses.asdict(cost), "dense_over": q})
        print(f"| {name} | {cost.ops} | {cost.flops / 1e9:.3f} | {cost.bytes_written / 2**20:.1f} | "
              f"{q['ops']:.2f}x | {q['flops']:.2f}x | {q['bytes_written']:.2f}x |")
    result = {"device": any_r.device, "size": args.size, "threads": any_r.num_threads,
              "decoder_channels": args.decoder_channels, "rows": rows, "passes": passes, "costs": cost_rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
