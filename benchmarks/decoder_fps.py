"""FPS of pruned decoders against the dense FDN and FCN, as built, in the deployment form and in ONNX Runtime.

Timing depends on the architecture only, so the networks are built with random weights from connectivity files
(``connectivity.json`` of a search, or of a ``retrain``); the dense FDN and FCN of the same backbone are added.
Every network is timed in up to three forms (``--forms``, default all that are installed):

* ``as built`` (``as-built``): the ``nn.Module`` that ``build_pruned`` returns, NCHW, BN as separate modules;
* ``deploy``: ``nni_sparsemask.measure.deploy.inference_form`` (BN folded into the convolutions, channels_last weights
  and input), the form ``evaluate_network`` and the demo time;
* ``onnxruntime``: the deployment form as ``sparsemask export --format onnx`` writes it
  (``nni_sparsemask.measure.export``: BN folded, any H x W), exported to a temporary file and run by an ONNX Runtime
  session (default graph optimisations, ``ORT_ENABLE_ALL``) with as many threads as PyTorch's; the CPU provider, or
  ``CUDAExecutionProvider`` with ``--device cuda`` where that ONNX Runtime has it (input and output bound on the
  GPU). Needs the ``export`` extra (onnx, onnxscript, onnxruntime); without it the form is left out, with one
  line saying so. The largest difference between ONNX Runtime's logits and PyTorch's on one input is printed for
  each network.

The networks are interleaved round-robin ``--rounds`` times, every form of a network one after the other (all
timed by ``nni_sparsemask.measure.fps``). Printed, all from this run: ms per forward and FPS of each network's best
pass (the least disturbed one on a shared machine), and FPS / dense FDN of each form as the median and range of the
ratio within each pass (paired, so that a slow phase of the machine cancels out). Then, for the deployment form,
what no machine changes (``nni_sparsemask.measure.cost``): operator calls, FLOPs and bytes written per forward,
which bound the FPS ratio in the launch-bound (GPU at batch 1), compute-bound and memory-bound regimes.
``--ort-graph`` also prints the node types of each exported graph before and after ONNX Runtime's optimisations on
the CPU (``nni_sparsemask.measure.export.onnx_op_counts``): what it fuses of "1x1 convolutions at their source
resolution + bilinear upsampling + sum".

    python benchmarks/decoder_fps.py runs/search/connectivity.json --size 256
    python benchmarks/decoder_fps.py a/connectivity.json b/connectivity.json --decoder-channels 64 --device cuda
    python benchmarks/decoder_fps.py runs/search --peers     # + the smp peer decoders (extra: peers) as rows
    python benchmarks/decoder_fps.py runs/search --forms deploy,onnxruntime --ort-graph

``--peers`` adds the peer decoders of segmentation_models_pytorch (``smp-unet``, ``smp-fpn``, ``smp-deeplabv3plus``,
``smp-pan``, ``smp-linknet``; ``baselines/smp_peers.py``) on the same backbone at smp's default widths.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

#: --forms value -> the form's name in the rows
FORMS = {"as-built": "as built", "deploy": "deploy", "onnxruntime": "onnxruntime"}
#: what the onnxruntime form needs (the export extra)
ORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ORT_INSTALL = "pip install 'nni-sparsemask[export]'"


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


def parse_forms(text: str | None) -> list[str]:
    """The row names of the ``--forms`` value (comma-separated :data:`FORMS` keys), in the order given; None: all."""
    if text is None:
        return list(FORMS.values())
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FORMS]
    if unknown or not keys:
        raise SystemExit(f"--forms {text!r}: {'unknown form ' + repr(unknown[0]) if unknown else 'no form given'}; "
                         f"give a comma-separated list of {', '.join(FORMS)}")
    return list(dict.fromkeys(FORMS[k] for k in keys))


def missing_ort_packages() -> list[str]:
    return [m for m in ORT_PACKAGES if importlib.util.find_spec(m) is None]


class OrtNetwork(NamedTuple):
    """One network's exported ONNX file in an ONNX Runtime session, with its input bound: ``forward()`` runs it."""

    path: Path
    provider: str
    forward: Callable[[], Any]
    max_abs_diff: float


def onnxruntime_networks(nets: dict[str, torch.nn.Module], size: int, device: str, threads: int, folder: Path
                         ) -> dict[str, OrtNetwork]:
    """Export each network (deployment form, ``export_network``) to ``folder``, open it in ONNX Runtime and compare
    its logits with PyTorch's (CPU, eval mode) on one random ``size`` x ``size`` input."""
    import numpy as np
    from nni_sparsemask.measure.export import export_network, onnxruntime_session

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for i, (name, net) in enumerate(nets.items()):
        net = net.cpu()
        was_training = net.training
        with torch.no_grad():
            ref = net.eval()(x).numpy()
        net.train(was_training)
        path = export_network(net, "onnx", folder / f"net{i}.onnx")
        session, provider = onnxruntime_session(path, device, threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        diff = float(np.abs(session.run(None, feed)[0] - ref).max())
        if provider == "CUDAExecutionProvider":  # input and output stay on the GPU: no copies timed
            import onnxruntime as ort

            binding = session.io_binding()
            index = torch.device(device).index or 0
            binding.bind_ortvalue_input(session.get_inputs()[0].name,
                                        ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", index))
            binding.bind_output(session.get_outputs()[0].name, "cuda", index)
            forward = lambda s=session, b=binding: s.run_with_iobinding(b)  # noqa: E731
        else:
            forward = lambda s=session, f=feed: s.run(None, f)  # noqa: E731
        out[name] = OrtNetwork(path, provider, forward, diff)
    return out


def time_forms(nets: dict[str, torch.nn.Module], ort_nets: dict[str, OrtNetwork], forms: list[str], size: int,
               device: str, rounds: int, seconds: float) -> tuple[dict[str, list[dict[str, float]]], dict]:
    """Round-robin timing: every pass times each network in every form, one after the other. Returns ``passes``
    (form -> one {network: FPS} per pass) and ``best`` ((network, form) -> the fastest FPSResult)."""
    from nni_sparsemask.measure.fps import measure_fps, time_forward

    passes = {form: [] for form in forms}
    best = {}
    for _ in range(rounds):
        this = {form: {} for form in forms}
        for name, net in nets.items():
            for form in forms:
                if form == FORMS["onnxruntime"]:
                    o = ort_nets[name]
                    r = time_forward(o.forward, size, device=device if o.provider.startswith("CUDA") else "cpu",
                                     min_run_time=seconds, form=f"onnxruntime ({o.provider})")
                else:
                    r = measure_fps(net, input_size=size, device=device, min_run_time=seconds,
                                    inference=form == FORMS["deploy"])
                this[form][name] = r.fps
                if (name, form) not in best or r.fps > best[(name, form)].fps:
                    best[(name, form)] = r
        for form in forms:
            passes[form].append(this[form])
    return passes, best


#: the node types ``--ort-graph`` gives a column, with their column names (the rest are summed under "other")
GRAPH_OPS = {"Conv": "Conv", "com.microsoft:FusedConv": "FusedConv", "com.microsoft.nchwc:Conv": "nchwc Conv",
             "Resize": "Resize", "Add": "Add", "Clip": "Clip", "com.microsoft.nchwc:ReorderInput": "ReorderInput",
             "com.microsoft.nchwc:ReorderOutput": "ReorderOutput"}


def ort_graphs(ort_nets: dict[str, OrtNetwork]) -> dict[str, dict[str, dict[str, int]]]:
    from nni_sparsemask.measure.export import onnx_op_counts

    out = {}
    for name, o in ort_nets.items():
        before, after = onnx_op_counts(o.path)
        out[name] = {"before": before, "after": after}
    return out


def graph_row(g: dict[str, dict[str, int]]) -> str:
    def cell(op: str | None) -> str:
        b, a = ((sum(v for k, v in c.items() if k not in GRAPH_OPS) if op is None else c.get(op, 0))
                for c in (g["before"], g["after"]))
        return f"{b} -> {a}" if a != b else f"{b}"
    total = f"{sum(g['before'].values())} -> {sum(g['after'].values())}"
    return " | ".join([total] + [cell(op) for op in GRAPH_OPS] + [cell(None)])


def main(argv=None) -> dict:
    from nni_sparsemask.measure.cost import inference_cost
    from nni_sparsemask.run.demo import ratio_over_passes

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
    ap.add_argument("--forms", help=f"comma-separated forms to time, of {', '.join(FORMS)} (default: all; "
                                    f"onnxruntime needs the export extra: {ORT_INSTALL})")
    ap.add_argument("--ort-graph", action="store_true",
                    help="print each exported graph's node types before and after ONNX Runtime's CPU optimisations")
    args = ap.parse_args(argv)
    from nni_sparsemask import malloc

    print(f"malloc: {malloc.tune()}")  # as the sparsemask commands time networks (NNI_SPARSEMASK_MALLOC=default)
    if args.json and Path(args.json).exists():
        raise SystemExit(f"{args.json} exists: pass another --json path (results are never overwritten)")
    for flag, value in (("--size", args.size), ("--rounds", args.rounds), ("--decoder-channels", args.decoder_channels),
                        ("--num-classes", args.num_classes)):
        if value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    if not args.seconds > 0:
        raise SystemExit(f"--seconds must be positive, got {args.seconds}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device {args.device!r} is not a device: use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False: use --device cpu")
    forms = parse_forms(args.forms)
    if device.type not in ("cpu", "cuda") and (FORMS["onnxruntime"] in forms or args.ort_graph):
        if args.forms is not None or args.ort_graph:
            raise SystemExit(f"ONNX Runtime runs here on cpu or cuda, not --device {args.device}: leave onnxruntime "
                             f"out of --forms and --ort-graph out")
        forms.remove(FORMS["onnxruntime"])
        print(f"onnxruntime form left out: ONNX Runtime runs here on cpu or cuda, not {args.device}")
    missing = missing_ort_packages()
    if missing and args.ort_graph:
        raise SystemExit(f"--ort-graph needs {', '.join(missing)} (the export extra): {ORT_INSTALL}")
    if missing and FORMS["onnxruntime"] in forms:
        forms.remove(FORMS["onnxruntime"])
        print(f"onnxruntime form left out: {', '.join(missing)} not installed ({ORT_INSTALL})")
        if not forms:
            raise SystemExit(f"no form left to time: install the export extra ({ORT_INSTALL}) or pick another --forms")

    torch.manual_seed(0)
    nets = build_networks(args.connectivity, args.decoder_channels, args.num_classes, args.peers)
    with tempfile.TemporaryDirectory(prefix="decoder_fps.") as tmp:
        ort_nets = {}
        if FORMS["onnxruntime"] in forms or args.ort_graph:
            ort_nets = onnxruntime_networks(nets, args.size, args.device, torch.get_num_threads(), Path(tmp))
        graphs = ort_graphs(ort_nets) if args.ort_graph else {}
        passes, best = time_forms(nets, ort_nets, forms, args.size, args.device, args.rounds, args.seconds)
    any_r = next(iter(best.values()))
    print(f"{any_r.device}, {args.size}x{args.size}, batch 1, {any_r.num_threads} threads, C_dec "
          f"{args.decoder_channels}; {args.rounds} round-robin passes: ms and FPS of the best pass, FPS / dense FDN "
          f"the median (range) of the ratio within each pass, per form")
    provider = next(iter(ort_nets.values())).provider if ort_nets else None
    if FORMS["onnxruntime"] in forms:
        note = " (no CUDAExecutionProvider in this onnxruntime: timed on the CPU)" \
            if str(args.device).startswith("cuda") and provider != "CUDAExecutionProvider" else ""
        print(f"onnxruntime: {provider}{note}, the exported deployment form (BN folded, NCHW), ORT_ENABLE_ALL")
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
    agreement = {name: o.max_abs_diff for name, o in ort_nets.items()}
    if agreement:
        print(f"\nONNX Runtime ({provider}) vs PyTorch (eager, CPU), one {args.size}x{args.size} input\n"
              "| network | max abs diff of the logits |\n| --- | ---: |")
        for name, diff in agreement.items():
            print(f"| {name} | {diff:.2e} |")
    if graphs:
        print("\nONNX Runtime's CPU graph optimisations (ORT_ENABLE_ALL) of each exported graph: nodes before -> after "
              "(FusedConv: com.microsoft's conv + activation; nchwc: com.microsoft.nchwc's blocked layout, "
              "ReorderInput / ReorderOutput its layout changes)")
        print("| network | nodes | " + " | ".join(GRAPH_OPS.values()) + " | other |\n| --- | ---: |"
              + " ---: |" * (len(GRAPH_OPS) + 1))
        for name, g in graphs.items():
            print(f"| {name} | {graph_row(g)} |")
    result = {"device": any_r.device, "size": args.size, "threads": any_r.num_threads,
              "malloc": malloc.state(),
              "decoder_channels": args.decoder_channels, "forms": forms, "rows": rows, "passes": passes,
              "costs": cost_rows, "onnxruntime": {"provider": provider, "max_abs_diff": agreement} if ort_nets else None,
              "ort_graph": graphs or None}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
