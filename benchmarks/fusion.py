"""Efficient Eq. 4 fusion vs the naive upsample -> concat -> conv, on the full FDN decoder (every edge on).

Both forms share the same weights (the FDN space with ``edge_bn=False``): the efficient one is the space's own
dense forward (1x1 conv at the source resolution, one upsample per source resolution); the naive one upsamples
every ReLU6'd input to the stage's resolution, concatenates and applies the concatenated 1x1 kernel. The encoder
runs once under ``no_grad`` and its features are shared, so peak memory and time are the DECODER's forward+backward.
Each form runs in its own subprocess so that CPU peak RSS is measured cleanly (on CUDA: max_memory_allocated).

    python benchmarks/fusion.py --size 512 --device cuda
    python benchmarks/fusion.py --size 256 --device cpu --threads 2

Prints both measurements and the efficient / naive ratios, with the device, input size and batch size.

:func:`training_memory` is Table 2's setting instead (``benchmarks/gpu_suite.py`` calls it): the WHOLE network
(encoder with gradients + every edge + the head) in one training step, its memory split into parameters and
features (the tensors autograd keeps for the backward pass), on any backbone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def naive_decoder(space, features, g):
    """Upsample every input to the stage resolution, concatenate, one 1x1 conv (no BN: the space has edge_bn=False)."""
    from nni_sparsemask.fdn.connectivity import candidate_names

    outs = {f"E{i}": f for i, f in enumerate(features, start=1)}
    outs["G"] = g
    for l in range(space.num_stages, 0, -1):
        label = f"D{l}"
        size = features[l - 1].shape[-2:]
        names = candidate_names(l, space.num_stages)
        ups = [F.interpolate(F.relu6(outs[n]), size=size, mode="bilinear", align_corners=False) for n in names]
        kernel = torch.cat([e.conv.weight for e in space.edges[label]], dim=1)
        bias = torch.stack([e.conv.bias for e in space.edges[label]]).sum(0)
        outs[label] = F.conv2d(torch.cat(ups, dim=1), kernel, bias)
    return outs["D1"]


def efficient_decoder(space, features, g):
    from nni_sparsemask.fdn.connectivity import candidate_names
    from nni_sparsemask.fdn.fusion import fuse

    outs = {f"E{i}": f for i, f in enumerate(features, start=1)}
    outs["G"] = g
    for l in range(space.num_stages, 0, -1):
        label = f"D{l}"
        names = candidate_names(l, space.num_stages)
        edges = space.edges[label]
        outs[label] = fuse([e(outs[n]) for e, n in zip(edges, names)], features[l - 1].shape[-2:])
    return outs["D1"]


def training_memory(form: str, backbone: str = "mobilenet_v2", backbone_kwargs: dict | None = None,
                    size: int = 512, batch: int = 1, channels: int = 64, device: str = "cpu",
                    repeats: int = 3) -> dict:
    """Training-phase memory of the dense FDN on ``backbone`` with ``form`` fusion (``"efficient"`` or
    ``"naive"``), encoder trained too: one forward + backward of ``batch`` images ``size`` x ``size``.

    ``param_bytes``: the network's parameters; ``feature_bytes``: every tensor autograd saves for the backward
    pass (each storage once, parameters not counted), the same on any device; on CUDA ``peak_bytes`` is the
    peak allocated during the step above what was allocated before it (features, gradients, workspace; None on
    the CPU). ``median_ms`` is the step's median time over ``repeats`` steps after a warm-up one.
    """
    from nni_sparsemask import FDNSpace

    torch.manual_seed(0)
    dev = torch.device(device)
    space = FDNSpace(backbone, num_classes=21, decoder_channels=channels, edge_bn=False,
                     backbone_kwargs=dict(backbone_kwargs or {})).to(dev).train()
    decoder = naive_decoder if form == "naive" else efficient_decoder
    x = torch.randn(batch, 3, size, size, device=dev)
    params = {p.untyped_storage().data_ptr() for p in space.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def step(count: bool) -> None:
        if count:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                features, g = space.encoder(x)
                out = space.head(decoder(space, features, g), [size, size])
        else:
            features, g = space.encoder(x)
            out = space.head(decoder(space, features, g), [size, size])
        out.float().square().mean().backward()
        space.zero_grad(set_to_none=False)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    step(False)  # warm-up: kernels, allocator, gradients allocated once
    sync()
    peak = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step(True)
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step(False)
        sync()
        times.append(time.perf_counter() - t)
    return {"form": form, "backbone": backbone, "backbone_kwargs": dict(backbone_kwargs or {}), "size": size,
            "batch": batch, "param_bytes": sum(p.numel() * p.element_size() for p in space.parameters()),
            "feature_bytes": sum(saved.values()), "peak_bytes": peak,
            "median_ms": 1e3 * sorted(times)[len(times) // 2] if times else None}


def run_one(form: str, args) -> dict:
    from nni_sparsemask import FDNSpace

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    space = FDNSpace(num_classes=21, decoder_channels=args.channels, edge_bn=False,
                     backbone_kwargs={"width_mult": args.width}).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        features, g = space.encoder(x)
    decoder = naive_decoder if form == "naive" else efficient_decoder

    def step():
        out = decoder(space, features, g)
        out.float().square().mean().backward()
        return out

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # CPU: ru_maxrss is a high-water mark, so the baseline is taken before the first decoder step.
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = step()  # warm-up (allocator, kernels)
    space.zero_grad(set_to_none=False)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = base_rss
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
        space.zero_grad(set_to_none=False)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times.sort()
    return {"form": form, "peak_bytes": int(peak), "median_s": times[len(times) // 2],
            "checksum": float(out.double().sum()), "device": torch.cuda.get_device_name(0) if device.type == "cuda"
            else f"CPU ({args.threads} threads)"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=64, help="decoder channels C_dec")
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--form", choices=["naive", "efficient"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.form:  # child process
        print(json.dumps(run_one(args.form, args)))
        return
    results = {}
    for form in ("efficient", "naive"):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--form", form]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{form} run failed:\n{proc.stderr[-2000:]}")
        results[form] = json.loads(proc.stdout.strip().splitlines()[-1])
    eff, nai = results["efficient"], results["naive"]
    print(f"FDN decoder forward+backward, MobileNetV2 x{args.width}, all 90 edges, C_dec={args.channels}, "
          f"input {args.size}x{args.size}, batch {args.batch}, device: {eff['device']}")
    print(f"{'form':<10} {'peak MiB':>10} {'median ms':>10}")
    for r in (eff, nai):
        print(f"{r['form']:<10} {r['peak_bytes'] / 2**20:>10.1f} {r['median_s'] * 1e3:>10.1f}")
    print(f"ratio efficient/naive: memory {eff['peak_bytes'] / max(nai['peak_bytes'], 1):.3f}, "
          f"time {eff['median_s'] / nai['median_s']:.3f}")
    rel = abs(eff["checksum"] - nai["checksum"]) / max(abs(nai["checksum"]), 1e-12)
    print(f"outputs agree: relative checksum difference {rel:.2e}")


if __name__ == "__main__":
    main()
