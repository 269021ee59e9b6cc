"""``sparsemask convert`` (the official code's masks) and ``sparsemask transfer`` (another backbone): the commands
that write a ``connectivity.json`` from another one, without training."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nni_sparsemask.cli.options import json_object, new_command as _command

__all__ = ["add_convert_command", "add_transfer_command"]


def _convert(args) -> int:
    from nni_sparsemask.fdn.connectivity import convert_official_mask

    conn = convert_official_mask(args.mask, args.out, backbone=args.backbone, overwrite=args.overwrite)
    print(f"[convert] {args.mask} -> {args.out}: {conn.num_edges} edges")
    for stage in conn.stages():
        print(f"  {stage} <- {', '.join(conn.inputs(stage))}")
    return 0


def _transfer(args) -> int:
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.fdn.connectivity import Connectivity
    from nni_sparsemask.run.config import default_backbone_kwargs

    source = Path(args.connectivity)
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: give a connectivity.json (of a search, or of "
                                "'sparsemask convert')")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    conn = Connectivity.from_json(source)
    kwargs = args.backbone_kwargs if args.backbone_kwargs is not None else default_backbone_kwargs(args.backbone)
    info = build_backbone(args.backbone, **kwargs).feature_info
    new = conn.transfer(args.backbone, info, kwargs)
    mapping = conn.stage_mapping(info)
    kept = set(new.stages())
    print(f"[transfer] {source} ({conn.backbone}, {len(conn.feature_info)} stages, {conn.num_edges} edges) -> "
          f"{args.backbone} ({len(info)} stages)")
    print(f"  {'stage':>6} {'reduction':>9}  {args.backbone} stage")
    for i, fi in enumerate(conn.feature_info, start=1):
        j = mapping[i]
        if j is None:
            where = f"dropped: {args.backbone} has no stage at {fi.reduction}x"
        else:
            where = f"E{j}/D{j} ({info[j - 1].channels} channels)"
            if f"D{j}" not in kept:
                where += ", no decoder stage left there (no inputs or no outputs after the matching)"
        print(f"  {f'E{i}/D{i}':>6} {f'{fi.reduction}x':>9}  {where}")
    new.to_json(out, overwrite=args.overwrite)
    print(f"[transfer] {out}: {new.num_edges} edges, output stage {new.output}")
    for stage in new.stages():
        print(f"  {stage} <- {', '.join(new.inputs(stage))}")
    return 0


def add_convert_command(sub: Any) -> None:
    p = _command(sub, "convert", "import a mask of the official SparseMask code (.npy) as a connectivity.json")
    p.add_argument("mask", help="bool array (L, L, 2) saved by the official code, e.g. mask_thres_0.001.npy")
    p.add_argument("--out", required=True, help="connectivity.json to write")
    p.add_argument("--backbone", default="mobilenet_v2", help="the backbone the mask was searched on")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def add_transfer_command(sub: Any) -> None:
    p = _command(sub, "transfer", "move a searched connectivity to another backbone by matching spatial reduction "
                                  "(paper section 5.1), printing which stages matched and which were dropped")
    p.add_argument("connectivity", help="connectivity.json of a search (or of 'sparsemask convert')")
    p.add_argument("--backbone", required=True, help="the new encoder: mobilenet_v2, resnet50, vgg16, convnet, ...")
    p.add_argument("--backbone-kwargs", type=json_object, default=None,
                   help="JSON constructor arguments of the new backbone (None: its defaults)")
    p.add_argument("--out", required=True, help="connectivity.json to write (retrain --connectivity takes it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_transfer)
