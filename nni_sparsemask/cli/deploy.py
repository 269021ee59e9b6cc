"""``sparsemask profile`` (the per-edge cost table of a cost-aware search) and ``sparsemask export`` (a trained
network for deployment): the commands that measure or ship a network without training it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nni_sparsemask.cli.options import add_data, add_model, configs, data_config, model_config, new_command as _command

__all__ = ["add_profile_command", "add_export_command"]


def _profile(args) -> int:
    from nni_sparsemask.run.costaware import profile_model
    from nni_sparsemask.run.pipeline import check_eval_device, default_device

    check_eval_device(args.device)
    device = args.device or default_device()
    table, path, predicted = profile_model(model_config(args), data_config(args).num_classes, args.kind, args.size,
                                           device, args.out, overwrite=args.overwrite, refresh=args.refresh)
    unit = table.costs.unit
    print(f"[profile] {args.kind} of {len(table.costs.labels())} decoder stages at {args.size}px"
          f"{' on ' + table.key.device if table.key.device else ''}: {path}")
    for name in ("dense", "fcn"):
        label = {"dense": "dense FDN", "fcn": "FCN"}[name]
        extra = f" = {1 / predicted[name]:.1f} FPS" if args.kind == "latency" else ""
        print(f"[profile] {label}: {predicted[name]:.4g} {unit} (encoder + head {predicted['base']:.4g}){extra}")
    return 0


def add_profile_command(sub: Any) -> None:
    p = _command(sub, "profile", "measure the per-edge cost table a cost-aware search (search --cost) uses")
    p.add_argument("--kind", default="latency", choices=["latency", "bytes", "flops", "ops"],
                   help="latency (timed on --device) or counted bytes written / FLOPs / operator calls")
    p.add_argument("--size", type=int, default=configs().SearchConfig.cost_size, help="input side")
    p.add_argument("--device", default=None, help="cpu or cuda (None: CUDA when there is one)")
    p.add_argument("--out", default=None, help="table file (None: the cache search --cost reads)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.add_argument("--refresh", action="store_true", help="profile again into the cache")
    add_data(p)
    add_model(p)
    p.set_defaults(func=_profile)


def _trained_run(run: str) -> Path:
    """``run`` if it is a finished retrain run directory (config.json of a retrain, model.pt), else the error that
    names the command making one."""
    from nni_sparsemask.run.rundir import read_json

    path, make = Path(run), "make one with 'sparsemask retrain --connectivity FILE | --decoder NAME --out RUN'"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); export takes a retrain run: {make}")
    config = read_json(path / "config.json", "config.json of the run")
    command = config.get("command") if isinstance(config, dict) else None
    if command != "retrain":
        raise ValueError(f"{path} is a {command!r} run, not a retrain run, and holds no trained network: {make}")
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(f"{path} has no trained network (no model.pt): its retrain has not finished; "
                                f"finish it with 'sparsemask retrain ... --out {path} --resume'")
    return path


def _export(args) -> int:
    from nni_sparsemask.measure.export import check_format, check_target, export_network, smallest_side
    from nni_sparsemask.run.steps import load_run_network

    check_format(args.format)
    check_target(args.out, args.overwrite)
    net, _, _ = load_run_network(_trained_run(args.run))
    path = export_network(net, args.format, args.out, overwrite=args.overwrite)
    sides = f"H, W >= {smallest_side(net)}" if args.format == "exported-program" else "any H, W"
    print(f"[export] {args.run} -> {path} ({args.format}, BN folded): image (1, 3, H, W) -> logits (1, "
          f"{net.num_classes}, H, W), {sides}")
    return 0


def add_export_command(sub: Any) -> None:
    from nni_sparsemask.measure.export import FORMATS, SUFFIXES

    p = _command(sub, "export", "write the trained network of a retrain run for deployment (BN folded, any H x W)")
    p.add_argument("run", help="a finished retrain run directory")
    p.add_argument("--format", required=True, help=f"{' | '.join(FORMATS)} (usual suffix: "
                   f"{', '.join(SUFFIXES[f] for f in FORMATS)})")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_export)
