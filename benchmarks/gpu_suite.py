"""Every GPU number of this project's benchmarks in ONE command (at most 8 minutes on one GPU), appended to
``benchmarks/RESULTS.md`` as a dated section with the device and torch version (other sections are never touched).

* Table 1 in form (``benchmarks/table1.py``'s networks: FCN, mobile DeepLab-V3, U-Net, SparseACN, the dense FDN
  and the paper's searched decoder from ``tests/data/mask_thres_0.001.npy``, on MobileNetV2 1.0 with random
  weights, 21 classes, C_dec 64) plus the peer decoders of segmentation_models_pytorch (``smp-*``, smp's widths,
  on the same encoder): FPS at 512x512, batch 1, every network in eval mode with BN folded
  (``measure.deploy.inference_form``), in six forms: fp32 NCHW, fp32 channels_last, AMP fp16 (autocast) NCHW and
  channels_last, ``torch.compile`` (inductor) of the AMP channels_last form, and ONNX Runtime's CUDA provider
  (fp32, a static 512x512 export of the same form for every network, input and output bound on the GPU) when
  onnxruntime-gpu is installed. FPS = 1 / median time of one synchronised forward over the timed seconds.
* Table 2 in form: training-phase memory at 512x512, batch 1, of the dense FDN (encoder trained too), efficient
  (Eq. 4) vs naive (upsample -> concat -> conv) fusion, on MobileNetV2 1.0 and ResNet-101
  (``benchmarks/fusion.py`` ``training_memory``): parameters, features (what autograd keeps for the backward
  pass) and the CUDA peak during the step.
* Search cost: one epoch of the SparseMask search vs the dense FDN vs NNI's DARTS (``benchmarks/search_cost.py``)
  on DigitScenes 128x128, MobileNetV2 1.0, C_dec 64, batch 16.

``torch.compile`` and ONNX Runtime cells run last, while time is left (the eager forms, Table 2 and the search come
first, so that every section has numbers); a cell that did not fit says "skipped (time)".

    python benchmarks/gpu_suite.py                         # on a GPU: appends to benchmarks/RESULTS.md
    python benchmarks/gpu_suite.py --quick --out /tmp/s.md # CPU smoke run: 64x64, tiny widths, seconds
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
FORMS = ("fp32", "fp32 CL", "AMP", "AMP CL", "compile", "ORT")

#: the GPU run: 8 minutes at most; compile / ORT cells start only before their cut-off (seconds since the start)
FULL = dict(size=512, seconds=0.5, warmup=10, compile_backend="inductor", compile_nets=None, ort_nets=None,
            compile_cutoff=300.0, ort_cutoff=400.0, memory_size=512, memory_channels=64,
            memory=[("mobilenet_v2", {}, "MobileNetV2 1.0"), ("resnet101", {}, "ResNet-101")],
            search=["--device", "cuda", "--size", "128", "--scenes", "512", "--batch", "16", "--epochs", "3",
                    "--backbone", "mobilenet_v2", "--backbone-kwargs", "{}", "--channels", "64"])
#: the CPU smoke run: every code path, tiny (compile with the eager backend, one network compiled and exported)
QUICK = dict(size=64, seconds=0.01, warmup=1, compile_backend="eager", compile_nets=1, ort_nets=1,
             compile_cutoff=1e9, ort_cutoff=1e9, memory_size=64, memory_channels=16,
             memory=[("mobilenet_v2", {"width_mult": 0.35}, "MobileNetV2 0.35"), ("resnet18", {}, "ResNet-18")],
             search=["--size", "32", "--scenes", "32", "--batch", "8", "--epochs", "2", "--backbone", "convnet",
                     "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}', "--channels", "8", "--threads", "1"])


def sibling(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def time_ms(fn: Callable[[], Any], sync: Callable[[], None], seconds: float, warmup: int) -> float:
    """Median milliseconds of one synchronised call of ``fn`` over ``seconds`` (3 calls at least), after warm-up."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


# ------------------------------------------------------------------------------------------------ Table 1
def build_networks(num_classes: int = 21) -> tuple[dict[str, tuple[str, torch.nn.Module]], str]:
    """Table 1's networks (``table1.build_networks``) then the smp peers: ``{key: (label, net)}`` and a note."""
    from nni_sparsemask.run.registry import DECODERS, build_decoder

    table1 = sibling("table1")
    nets = {k: (table1.ROWS[k], n) for k, n in table1.build_networks(table1.DEFAULT_MASK, 64, num_classes).items()}
    try:
        from nni_sparsemask.baselines.smp_peers import LABELS, require_smp
        require_smp()
    except ImportError as err:
        return nets, f"smp peers left out: {err}"
    for name in (n for n in DECODERS if n.startswith("smp-")):
        nets[name] = (LABELS[name[4:]], build_decoder(name, table1.BACKBONE, num_classes))
    return nets, ""


def _export_onnx(form: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """``form`` (on the CPU) as ONNX at the fixed shape of ``x``."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(form, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                        verbose=False)
        program.save(str(path), external_data=False)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def ort_runner(net: torch.nn.Module, size: int, device: torch.device, tmp: Path, key: str):
    """``(fn, sync)`` running ``net``'s deployment form in ONNX Runtime (CUDA provider on a GPU, the CPU's in the
    smoke run), or a string saying why not."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return "n/a (onnxruntime not installed)"
    from nni_sparsemask.measure.deploy import inference_form

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return f"n/a (no {provider}: pip install onnxruntime-gpu)"
    path = tmp / f"{key}.onnx"
    x = torch.randn(1, 3, size, size)
    _export_onnx(inference_form(net, channels_last=False), x, path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[provider])
    name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    if device.type != "cuda":
        xn = x.numpy()
        return (lambda: session.run(None, {name: xn})), (lambda: None)
    xg = x.to(device)
    out = torch.empty(tuple(session.get_outputs()[0].shape), device=device)
    binding = session.io_binding()
    binding.bind_input(name, "cuda", 0, np.float32, tuple(xg.shape), xg.data_ptr())
    binding.bind_output(out_name, "cuda", 0, np.float32, tuple(out.shape), out.data_ptr())
    return (lambda: session.run_with_iobinding(binding)), torch.cuda.synchronize


def table1_cells(nets: dict[str, tuple[str, torch.nn.Module]], cfg: dict, device: torch.device,
                 log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], dict[str, torch.nn.Module], Any]:
    """FPS (or a string saying why not) of every network in the eager forms of :data:`FORMS`, the channels_last
    deployment form of each (for ``torch.compile``) and the autocast dtype (fp16 on CUDA, bf16 on the CPU)."""
    from nni_sparsemask.measure.deploy import inference_form

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    size, cells, forms = cfg["size"], {}, {}
    x = torch.randn(1, 3, size, size, device=device)
    xcl = x.contiguous(memory_format=torch.channels_last)

    def fps(fn) -> float:
        return 1e3 / time_ms(fn, sync, cfg["seconds"], cfg["warmup"])

    def cell(key: str, form: str, make: Callable[[], Any]) -> None:
        try:
            with torch.no_grad():
                value = make()
        except Exception as err:  # one failing cell must not cost the rest of the run
            value = f"error: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
        cells[key][form] = value
        log(f"[table 1] {key} {form}: {_fmt(value)}")

    for key, (_, net) in nets.items():  # the eager forms first
        cells[key] = {}
        plain = inference_form(net, channels_last=False).to(device)
        last = inference_form(net, channels_last=True).to(device)
        forms[key] = last

        def amp():
            return torch.autocast(device.type, dtype=amp_dtype)

        cell(key, "fp32", lambda: fps(lambda: plain(x)))
        cell(key, "fp32 CL", lambda: fps(lambda: last(xcl)))
        cell(key, "AMP", lambda: fps(lambda: _in(amp, plain, x)))
        cell(key, "AMP CL", lambda: fps(lambda: _in(amp, last, xcl)))
    return cells, forms, amp_dtype


def _in(ctx: Callable, module: torch.nn.Module, x: torch.Tensor):
    with ctx():
        return module(x)


def late_cells(cells: dict, forms: dict, nets: dict, cfg: dict, device: torch.device, amp_dtype, clock: Callable,
               log: Callable[[str], None]) -> None:
    """The ``torch.compile`` and ONNX Runtime cells, while time is left (their cut-offs in ``cfg``)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    xcl = torch.randn(1, 3, cfg["size"], cfg["size"], device=device).contiguous(memory_format=torch.channels_last)
    for i, key in enumerate(nets):
        if cfg["compile_nets"] is not None and i >= cfg["compile_nets"]:
            cells[key]["compile"] = "skipped (--quick)"
            continue
        if clock() > cfg["compile_cutoff"]:
            cells[key]["compile"] = "skipped (time)"
            continue
        try:
            torch._dynamo.reset()
            compiled = torch.compile(forms[key], backend=cfg["compile_backend"])
            with torch.no_grad():
                t = time.perf_counter()
                _in(lambda: torch.autocast(device.type, dtype=amp_dtype), compiled, xcl)  # compiles
                sync()
                build = time.perf_counter() - t
                ms = time_ms(lambda: _in(lambda: torch.autocast(device.type, dtype=amp_dtype), compiled, xcl), sync,
                             cfg["seconds"], cfg["warmup"])
            cells[key]["compile"] = 1e3 / ms
            cells[key]["compile_seconds"] = build
        except Exception as err:
            cells[key]["compile"] = f"error: {type(err).__name__}"
        log(f"[table 1] {key} compile: {_fmt(cells[key]['compile'])}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, (_, net)) in enumerate(nets.items()):
            if cfg["ort_nets"] is not None and i >= cfg["ort_nets"]:
                cells[key]["ORT"] = "skipped (--quick)"
                continue
            if clock() > cfg["ort_cutoff"]:
                cells[key]["ORT"] = "skipped (time)"
                continue
            try:
                runner = ort_runner(net, cfg["size"], device, Path(tmp), key.replace("/", "_"))
                cells[key]["ORT"] = runner if isinstance(runner, str) else \
                    1e3 / time_ms(runner[0], runner[1], cfg["seconds"], cfg["warmup"])
            except Exception as err:
                cells[key]["ORT"] = f"error: {type(err).__name__}"
            log(f"[table 1] {key} ORT: {_fmt(cells[key]['ORT'])}")
            if isinstance(cells[key]["ORT"], str) and cells[key]["ORT"].startswith("n/a"):
                for rest in list(nets)[i + 1:]:
                    cells[rest]["ORT"] = cells[key]["ORT"]
                break


def _fmt(value: Any) -> str:
    """A cell: FPS with one decimal, or the string saying why there is none."""
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table1_markdown(nets: dict, cells: dict, params: dict, device: torch.device, amp_dtype) -> str:
    table1 = sibling("table1")
    amp = "fp16" if amp_dtype == torch.float16 else "bf16"
    ort = "ORT CUDA" if device.type == "cuda" else "ORT CPU"
    lines = [f"| network | decoder params | fp32 | fp32 CL | AMP {amp} | AMP {amp} CL | torch.compile ({amp} CL) | "
             f"{ort} (fp32) | paper FPS (Titan Xp) |", "| --- |" + " ---: |" * 8]
    for key, (label, _) in nets.items():
        paper = table1.PAPER.get(key, (None, "-"))[1]
        lines.append(f"| {label} | {params[key] / 1e6:.2f}M | "
                     + " | ".join(_fmt(cells[key].get(f, "-")) for f in FORMS) + f" | {paper} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ Table 2, search
def memory_rows(cfg: dict, device: torch.device, log: Callable[[str], None]) -> list[dict[str, Any]]:
    fusion = sibling("fusion")
    rows = []
    for backbone, kwargs, label in cfg["memory"]:
        for form in ("efficient", "naive"):
            r = fusion.training_memory(form, backbone, kwargs, size=cfg["memory_size"], batch=1,
                                       channels=cfg["memory_channels"], device=str(device))
            rows.append({**r, "label": label})
            log(f"[table 2] {label} {form}: features {r['feature_bytes'] / 2**20:.1f} MiB")
    return rows


def memory_markdown(rows: list[dict[str, Any]]) -> str:
    mib = 2 ** 20
    lines = ["| backbone | fusion | parameters MiB | features MiB | parameters + features MiB | CUDA peak MiB | "
             "step ms |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / mib:.1f}"
        lines.append(f"| {r['label']} | {r['form']} | {r['param_bytes'] / mib:.1f} | {r['feature_bytes'] / mib:.1f} "
                     f"| {(r['param_bytes'] + r['feature_bytes']) / mib:.1f} | {peak} | {r['median_ms']:.1f} |")
    ratios = []
    for label in dict.fromkeys(r["label"] for r in rows):
        eff, nai = (next(r for r in rows if r["label"] == label and r["form"] == f) for f in ("efficient", "naive"))
        ratios.append(f"{label} {eff['feature_bytes'] / nai['feature_bytes']:.3f}")
    return "\n".join(lines) + "\n\nFeatures, efficient / naive: " + ", ".join(ratios) + "."


def search_rows(cfg: dict, log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    search_cost = sibling("search_cost")
    args = search_cost.parse_args(cfg["search"])
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = search_cost.measure(args)
    finally:
        nni_logger.setLevel(level)
    log(f"[search] epochs: {result['median']}")
    return result, args


def search_markdown(result: dict[str, Any], args) -> str:
    med = result["median"]
    names = {"fdn": "dense FDN, L_task", "sparsemask": "SparseMask search", "darts": "NNI 3.0 DARTS (DartsFDN)"}
    lines = [f"{args.backbone} {args.backbone_kwargs}, C_dec {args.channels}, DigitScenes {args.size}x{args.size}, "
             f"batch {args.batch}, {args.scenes // args.batch} batches per epoch, median of the epochs after the "
             "first.", "", "| run | epoch s |", "| --- | ---: |"]
    lines += [f"| {names[k]} | {med[k]:.3f} |" for k in names]
    lines += ["", f"SparseMask / dense FDN = {med['sparsemask'] / med['fdn']:.3f} (goal <= 1.2), SparseMask / DARTS "
                  f"= {med['sparsemask'] / med['darts']:.3f} (goal <= 0.6)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return (f"{name}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}); TF32 in convolutions "
                f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, cudnn.benchmark on")
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: 64x64, tiny widths, seconds; needs --out")
    ap.add_argument("--out", help="the Markdown file the section is appended to (default benchmarks/RESULTS.md; "
                    "required with --quick)")
    args = ap.parse_args(argv)
    if args.quick and not args.out:
        raise SystemExit("gpu_suite: --quick writes its smoke numbers to --out FILE, never to RESULTS.md: pass --out")
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device here: pass --quick for a CPU smoke run, or run it on a GPU")
    cfg = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else RESULTS
    if not out.parent.is_dir():
        raise SystemExit(f"gpu_suite: no folder {out.parent} for --out")
    device = torch.device("cpu" if args.quick else "cuda")
    threads = torch.get_num_threads()
    if args.quick:
        torch.set_num_threads(1)
    else:
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    def log(msg: str) -> None:
        print(f"[{clock():6.1f} s] {msg}", flush=True)

    try:
        from nni_sparsemask.measure.params import count_parameters

        torch.manual_seed(0)
        nets, note = build_networks()
        params = {k: count_parameters(n).decoder for k, (_, n) in nets.items()}
        cells, forms, amp_dtype = table1_cells(nets, cfg, device, log)
        memory = memory_rows(cfg, device, log)
        search, search_args = search_rows(cfg, log)
        late_cells(cells, forms, nets, cfg, device, amp_dtype, clock, log)
        line = device_line(device)
    finally:
        torch.set_num_threads(threads)
    compiled = [c["compile_seconds"] for c in cells.values() if "compile_seconds" in c]
    size, msize = cfg["size"], cfg["memory_size"]
    title = "GPU suite --quick (CPU smoke run: tiny, not comparable)" if args.quick else "GPU suite"
    text = "\n\n".join([
        f"## {title}: Table 1 and Table 2 in form, search cost (`benchmarks/gpu_suite.py`, "
        f"{datetime.date.today().isoformat()})",
        f"`python benchmarks/gpu_suite.py{' --quick' if args.quick else ''}` on {line}; {clock():.0f} s in all.",
        f"### Table 1 in form: FPS at {size}x{size}, batch 1",
        "MobileNetV2 1.0 encoder (random weights), 21 classes, C_dec 64 for the FDN-space decoders, smp's widths for "
        "the smp peers; eval mode, BN folded; CL = channels_last weights and input; FPS = 1 / median time of one "
        f"synchronised forward over {cfg['seconds']:g} s after {cfg['warmup']} warm-up calls. torch.compile backend "
        f"{cfg['compile_backend']}" + (f", first call (compilation) {min(compiled):.0f}-{max(compiled):.0f} s"
                                       if compiled else "") + "; ONNX: a static export of the fp32 form."
        + (f" {note}." if note else ""),
        table1_markdown(nets, cells, params, device, amp_dtype),
        f"### Table 2 in form: training-phase memory at {msize}x{msize}, batch 1",
        f"The dense FDN (every edge, C_dec {cfg['memory_channels']}, no per-edge BN) with its encoder, one forward + "
        "backward: parameters, features (every tensor autograd keeps for the backward pass, each storage once) and, "
        "on CUDA, the peak allocated during the step above what was allocated before it.",
        memory_markdown(memory),
        "### Search cost: one epoch (`benchmarks/search_cost.py`)",
        search_markdown(search, search_args)]) + "\n"
    existing = out.read_text() if out.exists() else ""
    with open(out, "a") as f:
        f.write(("\n" if existing and not existing.endswith("\n\n") else "") + text)
    print(text)
    return {"cells": cells, "params": params, "memory": memory, "search": search, "text": text, "out": str(out)}


if __name__ == "__main__":
    main()
