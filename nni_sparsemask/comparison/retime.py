"""``sparsemask retime``: time a comparison's networks side by side, paired against one reference network.

Every comparison trial times its own network when it finishes (``fps`` in its ``metrics.json``). On a shared or
noisy machine those numbers are taken minutes apart and move by tens of percent between runs; the differences
between decoders are smaller. Fig. 4's speed axis is only fair when every network is timed in the same process,
in interleaved passes, against the same reference.

:func:`retime_runs` loads the trained network of every finished run under a root (``retrain`` run directories),
keeps one network per architecture (two runs whose parameters have the same names and shapes are the same
architecture: three seeds of the dense FDN are timed once), times them round-robin (``run.demo.time_side_by_side``:
batch 1, deployment form) and writes, per run, the ratio ``FPS / FPS(reference)`` taken within each pass: its median
and range over the passes. The reference is a run of ``reference`` (a method name, default ``fdn``, the dense FDN).

The file (default ``<root>/fps_paired.json``) names the run directories relative to its own folder; ``sparsemask
report`` reads it from the root it reports on (or ``--paired-fps FILE``) and then plots and tabulates the paired
ratio (:mod:`nni_sparsemask.analysis.results`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from nni_sparsemask.analysis.results import PAIRED_FPS_FILE

__all__ = ["PAIRED_FPS_FILE", "architecture_key", "retime_runs", "register_cli"]


def architecture_key(net: Any) -> str:
    """A digest of ``net``'s class and parameter and buffer names and shapes: equal for two networks of one
    architecture (their timing does not depend on the weights' values), different for two decoders."""
    h = hashlib.sha256(type(net).__name__.encode())
    for name, tensor in list(net.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


def _finished_runs(root: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from nni_sparsemask.analysis.results import load_results

    df = load_results(root)
    runs = []
    for _, row in df.iterrows():
        run_dir = Path(row["run_dir"])
        if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
            log(f"[retime] left out {run_dir}: no config.json or model.pt to rebuild its network from")
            continue
        config = row["config"] if isinstance(row["config"], str) and row["config"] != "{}" else ""
        runs.append({"run_dir": run_dir, "method": row["method"], "label": f"{row['family']} {config}".strip()})
    return runs


def _runs_fps_size(runs: list[dict[str, Any]]) -> Optional[int]:
    """The input side every run's own FPS was timed at (``fps_input`` of its metrics.json), when they agree."""
    sides = set()
    for r in runs:
        try:
            found = json.loads((r["run_dir"] / "metrics.json").read_text()).get("fps_input")
        except (OSError, ValueError):
            found = None
        sides.add(int(found[0]) if isinstance(found, list) and found and found[0] == found[-1] else None)
    return sides.pop() if len(sides) == 1 else None


def retime_runs(root: str | Path, out: Optional[str | Path] = None, reference: str = "fdn",
                size: Optional[int] = None,
                rounds: int = 5, seconds: float = 1.0, device: Optional[str] = None, overwrite: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every finished run under ``root`` side by side and write the paired ratios (module doc); returns
    what was written. ``size``: the input side (default: the one the runs' own FPS used, when they agree, else 256).

    Refuses (before timing anything) an existing ``out`` unless ``overwrite``, a root without runs that can be
    rebuilt, and a ``reference`` method that no run has (the error lists the methods found).
    """
    from nni_sparsemask.run.demo import ratio_over_passes, time_side_by_side
    from nni_sparsemask.run.steps import load_run_network

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: give the folder that holds the comparison's runs")
    if size is not None and size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if rounds < 1 or seconds <= 0:
        raise ValueError(f"rounds must be >= 1 and seconds > 0, got rounds={rounds}, seconds={seconds}")
    out = Path(out) if out is not None else root / PAIRED_FPS_FILE
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to time the runs again and replace it")
    runs = _finished_runs(root, log)
    if not runs:
        raise ValueError(f"no run under {root} has config.json and model.pt: retime needs finished retrain runs")
    if size is None:
        size = _runs_fps_size(runs) or 256
    methods = sorted({str(r["method"]) for r in runs})
    if reference not in methods:
        raise ValueError(f"no run of method {reference!r} under {root} to time against; methods found: "
                         f"{', '.join(methods)} (--reference METHOD)")

    nets: dict[str, Any] = {}
    for r in runs:
        net = load_run_network(r["run_dir"])[0]
        key = architecture_key(net)
        r["architecture"] = key
        nets.setdefault(key, net)
    ref_key = next(r["architecture"] for r in runs if r["method"] == reference)
    log(f"[retime] {len(runs)} runs, {len(nets)} architectures; {rounds} passes of {seconds:g} s each at "
        f"{size}x{size}, against {reference}")
    side = time_side_by_side(nets, size, rounds, seconds, device)
    ratios = {key: ratio_over_passes(side["rounds"], key, ref_key) for key in nets}
    base = out.parent.resolve()
    written = {
        "reference": reference, "size": size, "rounds": rounds, "seconds": seconds, "device": side["device"],
        "form": "deploy (BN folded, channels_last), batch 1",
        "runs": {os.path.relpath(r["run_dir"].resolve(), base): {
            "method": r["method"], "architecture": r["architecture"], "fps": side["fps"][r["architecture"]],
            "ratio": ratios[r["architecture"]][0], "ratio_min": ratios[r["architecture"]][1],
            "ratio_max": ratios[r["architecture"]][2]} for r in runs},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(written, indent=1) + "\n")
    os.replace(tmp, out)
    for key in sorted(nets, key=lambda k: -ratios[k][0]):
        names = sorted({str(r["label"]) for r in runs if r["architecture"] == key})
        med, lo, hi = ratios[key]
        log(f"[retime] {med:5.2f}x ({lo:.2f}-{hi:.2f})  {side['fps'][key]:7.1f} FPS  {', '.join(names)}")
    log(f"[retime] written: {out}")
    return written


def add_arguments(p: Any) -> Any:
    p.add_argument("root", help="folder of the comparison's run directories (the trials' --results)")
    p.add_argument("--out", default=None, help=f"file to write (default: ROOT/{PAIRED_FPS_FILE}, where `sparsemask "
                                               "report ROOT` finds it)")
    p.add_argument("--reference", default="fdn", help="method every ratio is taken against (default: fdn)")
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (default: the side the runs timed themselves at when they agree, else 256)")
    p.add_argument("--rounds", type=int, default=5, help="round-robin passes (default: 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per network per pass (default: 1.0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available, else the CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_command)
    return p


def register_cli(subparsers: Any) -> Any:
    """Add the ``retime`` subcommand to the ``sparsemask`` parser's ``subparsers``."""
    return add_arguments(subparsers.add_parser(
        "retime", help="time a comparison's networks side by side against the dense FDN (paired FPS ratios)",
        description=__doc__.split("\n\n")[0] + " Writes ROOT/fps_paired.json, which `sparsemask report` plots."))


def _command(args: Any) -> int:
    retime_runs(args.root, args.out, reference=args.reference, size=args.size, rounds=args.rounds,
                seconds=args.seconds, device=args.device, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import argparse
    parser = add_arguments(argparse.ArgumentParser(prog="python -m nni_sparsemask.comparison.retime"))
    args = parser.parse_args()
    try:
        sys.exit(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"retime: error: {err}", file=sys.stderr)
        sys.exit(2)
