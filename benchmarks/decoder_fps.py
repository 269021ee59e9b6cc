"""FPS of pruned decoders against the dense FDN and FCN, in the as-built form and in the deployment form.

Timing depends on the architecture only, so the networks are built with random weights from connectivity files
(``connectivity.json`` of a search, or of a ``retrain``); the dense FDN and FCN of the same backbone are added.
Every network is timed in two forms:

* ``as built``: the ``nn.Module`` that ``build_pruned`` returns, NCHW, BN as separate modules;
* ``deploy``: ``nni_sparsemask.deploy.inference_form`` (BN folded into the convolutions, channels_last weights
  and input), the form ``evaluate_network`` and the demo time.

The networks are interleaved round-robin ``--rounds`` times and the best pass of each is kept (the least disturbed
one on a shared machine). Printed: ms per forward, FPS, and FPS / dense FDN within each form, all from this run.

    python benchmarks/decoder_fps.py runs/search/connectivity.json --size 256
    python benchmarks/decoder_fps.py a/connectivity.json b/connectivity.json --decoder-channels 64 --device cuda
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def build_networks(paths: list[str], decoder_channels: int, num_classes: int) -> dict[str, torch.nn.Module]:
    from nni_sparsemask.baselines.registry import decoder_connectivity
    from nni_sparsemask.connectivity import Connectivity
    from nni_sparsemask.model import build_pruned

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
    return nets


def main(argv=None) -> dict:
    from nni_sparsemask.metrics import measure_fps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("connectivity", nargs="+", help="connectivity.json files (or run directories holding one)")
    ap.add_argument("--size", type=int, default=256, help="input side (default 256, the demo's)")
    ap.add_argument("--decoder-channels", type=int, default=32, help="C_dec (default 32, the demo's)")
    ap.add_argument("--num-classes", type=int, default=11)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per network and pass")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    nets = build_networks(args.connectivity, args.decoder_channels, args.num_classes)
    forms = {"as built": False, "deploy": True}
    best = {(n, f): None for n in nets for f in forms}
    for _ in range(args.rounds):
        for name, net in nets.items():
            for form, inference in forms.items():
                r = measure_fps(net, input_size=args.size, device=args.device, min_run_time=args.seconds,
                                inference=inference)
                if best[(name, form)] is None or r.fps > best[(name, form)].fps:
                    best[(name, form)] = r
    any_r = next(iter(best.values()))
    print(f"{any_r.device}, {args.size}x{args.size}, batch 1, {any_r.num_threads} threads, C_dec "
          f"{args.decoder_channels}; best of {args.rounds} round-robin passes")
    print(f"| network | form | ms | FPS | FPS / dense FDN |\n| --- | --- | ---: | ---: | ---: |")
    rows = []
    for form in forms:
        dense = best[("fdn", form)].fps
        for name in nets:
            r = best[(name, form)]
            rows.append({"network": name, "form": form, "ms": 1e3 / r.fps, "fps": r.fps, "ratio": r.fps / dense})
            print(f"| {name} | {form} | {1e3 / r.fps:.2f} | {r.fps:.1f} | {r.fps / dense:.2f}x |")
    result = {"device": any_r.device, "size": args.size, "threads": any_r.num_threads,
              "decoder_channels": args.decoder_channels, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
