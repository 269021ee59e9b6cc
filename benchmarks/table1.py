"""Table 1 of the paper in form: decoder parameters and FPS of the hand-designed decoders, the dense FDN and the
paper's searched decoder, on one backbone, timed together.

Setting (Table 1's): MobileNetV2 width 1.0 encoder with random weights (timing and size depend on the
architecture only), batch 1, ``--size`` x ``--size`` input (512 as the paper), C_dec 64, 21 classes (VOC). Rows,
in the paper's order:

* FCN, U-Net, SparseACN, the dense FDN: the FDN-space decoders of ``nni_sparsemask.run.registry``;
* DeepLab-V3: the mobile head (``baselines/deeplab.py``: dilated MobileNetV2 at output stride 16, ASPP's 1x1 and
  image-pooling branches, 256 channels);
* Ours: the paper's searched decoder, imported from the official code's mask
  (``Connectivity.from_official_mask``; ``--mask``, default ``tests/data/mask_thres_0.001.npy``).

Columns: decoder parameters (``measure.params.count_parameters``: everything but ``model.encoder``), FPS of each
network (its best pass) and FPS / dense FDN as the median (min-max) of the ratio taken within each round-robin
pass (``run.demo.time_side_by_side`` and ``ratio_over_passes``: paired, so that a slow phase of the machine
cancels out). Every network is timed in the deployment form (BN folded, channels_last), as ``evaluate`` and the
demo time it. The paper's own numbers (Titan Xp, 512x512) are printed beside them for comparison, not as a goal:
the machine differs.

    python benchmarks/table1.py --out table1.json                       # 512x512, 5 passes of 1 s each
    python benchmarks/table1.py --device cuda --passes 10 --out table1_gpu.json
    python benchmarks/table1.py --quick                                 # smoke run: 64x64, 1 pass, 0.05 s
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MASK = ROOT / "tests" / "data" / "mask_thres_0.001.npy"
BACKBONE = "mobilenet_v2"

#: row key -> label, in Table 1's order
ROWS = {"fcn": "FCN", "deeplabv3": "DeepLab-V3 (mobile)", "unet": "U-Net", "sparseacn": "SparseACN",
        "fdn": "FDN (dense)", "paper": "Ours (paper's searched decoder)"}

#: Table 1 of the paper (MobileNetV2, VOC 2012 val; FPS on a Titan Xp at 512x512): decoder parameters in M (the
#: part after "2.22+") and FPS. The dense FDN is the "FDN (Ltask)" row.
PAPER = {"fcn": (0.03, 156), "deeplabv3": (0.67, 50), "unet": (0.16, 97), "sparseacn": (0.72, 74),
         "fdn": (1.93, 37), "paper": (0.56, 98)}

QUICK = {"size": 64, "passes": 1, "seconds": 0.05}
FULL = {"size": 512, "passes": 5, "seconds": 1.0}


def build_networks(mask: str | Path, decoder_channels: int = 64, num_classes: int = 21) -> dict[str, torch.nn.Module]:
    """The networks of :data:`ROWS` on MobileNetV2 1.0 with random weights, in that order."""
    from nni_sparsemask.fdn.connectivity import Connectivity
    from nni_sparsemask.fdn.pruned import build_pruned
    from nni_sparsemask.run.registry import build_decoder

    nets = {}
    for key in ROWS:
        if key == "paper":
            conn = Connectivity.from_official_mask(mask, backbone=BACKBONE)
            nets[key] = build_pruned(conn, num_classes, decoder_channels)
        elif key == "deeplabv3":  # its own head, 256 channels (the registry's default for it)
            nets[key] = build_decoder(key, BACKBONE, num_classes)
        else:
            nets[key] = build_decoder(key, BACKBONE, num_classes, decoder_channels)
    return nets


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on: the CPU model, torch's threads, torch's version, the timing device."""
    from nni_sparsemask.measure.latency import device_name

    from nni_sparsemask import malloc

    return {"cpu": device_name("cpu").split(":", 1)[1], "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device_name(device),
            "malloc": malloc.state()}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| network | decoder params | FPS | FPS / dense FDN | paper: decoder params | paper: FPS | "
             "paper: FPS / FDN |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lo, hi = r["ratio_range"]
        lines.append(f"| {r['label']} | {r['decoder_params'] / 1e6:.2f}M | {r['fps']:.1f} | {r['ratio']:.2f}x "
                     f"({lo:.2f}-{hi:.2f}) | {r['paper_decoder_params_m']:.2f}M | {r['paper_fps']} | "
                     f"{r['paper_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from nni_sparsemask import malloc
    from nni_sparsemask.measure.params import count_parameters
    from nni_sparsemask.run.demo import ratio_over_passes, time_side_by_side
    from nni_sparsemask.run.pipeline import default_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, help=f"input side (default {FULL['size']}, the paper's)")
    ap.add_argument("--passes", type=int, help=f"round-robin passes over the networks (default {FULL['passes']})")
    ap.add_argument("--seconds", type=float, help=f"timed seconds per network and pass (default {FULL['seconds']})")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--mask", default=str(DEFAULT_MASK), help="the official code's mask of the paper's decoder "
                    "(default: tests/data/mask_thres_0.001.npy)")
    ap.add_argument("--decoder-channels", type=int, default=64, help="C_dec of the FDN-space decoders (default 64)")
    ap.add_argument("--out", help="also write the results here as JSON (an existing file is refused)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: size {QUICK['size']}, {QUICK['passes']} pass, {QUICK['seconds']} s (unless given)")
    args = ap.parse_args(argv)
    malloc.tune()  # as the sparsemask commands time networks (NNI_SPARSEMASK_MALLOC=default: glibc's)
    base = QUICK if args.quick else FULL
    size, passes, seconds = (base[k] if getattr(args, k) is None else getattr(args, k) for k in base)
    if size < 32 or passes < 1 or seconds <= 0:
        raise SystemExit(f"--size must be >= 32 (MobileNetV2 reduces by 32), --passes >= 1 and --seconds > 0; got "
                         f"{size}, {passes}, {seconds}")
    if args.out and Path(args.out).exists():
        raise SystemExit(f"{args.out} exists: pass another --out path (results are never overwritten)")
    device = args.device or default_device()

    torch.manual_seed(0)
    nets = build_networks(args.mask, args.decoder_channels)
    params = {key: count_parameters(net) for key, net in nets.items()}
    side = time_side_by_side(nets, size, passes, seconds, device)
    rows = []
    for key, label in ROWS.items():
        ratio, lo, hi = ratio_over_passes(side["rounds"], key, "fdn")
        paper_params, paper_fps = PAPER[key]
        rows.append({"network": key, "label": label, "encoder_params": params[key].encoder,
                     "decoder_params": params[key].decoder, "fps": side["fps"][key], "ratio": ratio,
                     "ratio_range": [lo, hi], "paper_decoder_params_m": paper_params, "paper_fps": paper_fps,
                     "paper_ratio": paper_fps / PAPER["fdn"][1]})
    where = machine(device)
    print(f"Table 1 in form: MobileNetV2 1.0 (random weights, encoder {params['fdn'].encoder / 1e6:.2f}M), "
          f"{size}x{size}, batch 1, C_dec {args.decoder_channels}, 21 classes, deployment form (BN folded, "
          f"channels_last); {passes} round-robin pass(es) of {seconds:g} s per network: FPS of the best pass, "
          f"FPS / dense FDN the median (min-max) of the ratio within each pass. Paper: Titan Xp, 512x512.")
    print(f"machine: timing device {where['device']}; CPU {where['cpu']} ({where['cpu_count']} CPUs), {where['threads']} torch "
          f"threads, torch {where['torch']}, malloc {where['malloc']}")
    print(table(rows))
    result = {"setting": {"backbone": BACKBONE, "width_mult": 1.0, "size": size, "batch": 1,
                          "decoder_channels": args.decoder_channels, "num_classes": 21, "passes": passes,
                          "seconds": seconds, "form": "BN folded, channels_last", "mask": str(args.mask)},
              "machine": where, "rows": rows, "passes": side["rounds"]}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
