"""Export a trained network in its deployment form (BN folded, :mod:`.deploy`) for batch 1 at ANY height and width:
ONNX, TorchScript or a ``torch.export`` ExportedProgram.

Which forward is exported: a network whose forward reads no spatial size as a number says so with a class
attribute ``symbolic_sizes = True`` and is exported as it is (BN folded). :class:`~nni_sparsemask.fdn.pruned.PrunedFDN`
is one: its stages group their sources by encoder reduction, not by shape, and take every target size from a
tensor's shape (:func:`~nni_sparsemask.fdn.fusion.fuse` with keys; :func:`~nni_sparsemask.fdn.fusion.resize_to`
always bilinear while traced); the smp peers (``baselines/smp_peers.py``) are another. An ``int(x.shape[-2])`` or
a comparison of sizes would be a constant of the example input to tracing, and ``torch.export`` specialises a
dynamic height / width to it ("marked h as dynamic but your code specialized it to be a constant"). DeepLabV3
reads its input size with ``int()``, so :func:`export_form` wraps its modules (encoder, ASPP, classifier) in a
forward that takes the final size from the input's symbolic shape. Tests compare the exports with the eager
network at two input sizes, one of them not square.

The exported network takes ``image`` (1, 3, H, W) and returns ``logits`` (1, classes, H, W); H and W are
symbolic (ONNX: every ``Resize`` size computed from the input's ``Shape``, e.g. ``(H - 1) // 4 + 1``;
``torch.export``: ``Dim.DYNAMIC``, with guards that keep the deepest map above 1x1, :func:`smallest_side`). ONNX
goes through ``torch.onnx.export(dynamo=True)`` (needs onnxscript). The weights are NCHW: ``channels_last`` is a
layout a runtime chooses (``.to(memory_format=torch.channels_last)`` on the loaded module).

What ONNX Runtime makes of the decoder (:func:`onnx_op_counts`, CPU): at ``ORT_ENABLE_EXTENDED`` a convolution
followed by its activation becomes one ``FusedConv`` (the encoder's), but the decoder's ReLU6 (``Clip``) comes
BEFORE each edge's 1x1 convolution and stays a node; ``Resize`` is never fused. ``ORT_ENABLE_ALL`` moves every
convolution to the blocked NCHWc layout and folds an ``Add`` into the convolution before it where it can, but the
NCHW ``Resize`` / ``Add`` / ``Clip`` between them add a ``ReorderOutput`` (NCHWc -> NCHW) after most of them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nni_sparsemask.measure.deploy import inference_form

__all__ = ["FORMATS", "SUFFIXES", "check_format", "check_target", "export_form", "export_network", "load_exported",
           "onnx_op_counts", "onnxruntime_session", "smallest_side"]

#: the export formats, each with the file suffix it is usually given
FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return fmt


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` if an export may be written there: a file name in an existing folder, not replaced without
    ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give --out a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of {path} does not exist; create it first")
    return path


def _resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the (symbolic) spatial size of ``ref``."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class SymbolicEncoderHead(nn.Module):
    """Networks laid out as ``encoder`` -> ``aspp`` -> ``classifier`` -> bilinear to the input size (DeepLabV3),
    with the final size taken from the input's shape."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.encoder, self.aspp, self.classifier = net.encoder, net.aspp, net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _ = self.encoder(x)
        return _resize_like(self.classifier(self.aspp(features[-1])), x)


def export_form(net: nn.Module) -> nn.Module:
    """The deployment form of ``net`` (eval mode, BN folded; ``net`` left untouched) in a forward whose sizes stay
    symbolic under tracing and ``torch.export``."""
    folded = inference_form(net, channels_last=False)
    if getattr(folded, "symbolic_sizes", False) is True:  # its forward reads no size (PrunedFDN, the smp peers)
        return folded
    if all(isinstance(getattr(folded, n, None), nn.Module) for n in ("encoder", "aspp", "classifier")):
        return SymbolicEncoderHead(folded).eval()
    raise ValueError(f"cannot export a {type(net).__name__} with a dynamic input size: export takes the networks of "
                     f"retrain runs (an FDN-space decoder from --connectivity / --decoder, deeplabv3 or an smp peer)")


def _dynamic_shapes() -> dict[str, dict[int, object]]:
    """Height and width dynamic; ``torch.export`` raises if the forward specialises either. Their range is what
    the program's guards need: every stage of the encoder at least 2 px (see :func:`smallest_side`)."""
    from torch.export import Dim
    return {"x": {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}


def smallest_side(net: nn.Module) -> int:
    """The smallest height / width an exported program takes: one more than the encoder's largest reduction (32x
    -> 33 px). Below it the deepest feature map is 1x1, which ``torch.export``'s guards keep apart (the
    ExportedProgram refuses such an input; ONNX and TorchScript have no guards)."""
    encoder = getattr(net, "encoder", None)
    info = getattr(encoder, "feature_info", None) or []
    return max([f.reduction for f in info], default=1) + 1


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx / torch.export / torch.jit narrate and warn (TracerWarning, deprecations) on every export."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _write(form: nn.Module, fmt: str, x: torch.Tensor, path: Path) -> None:
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch.onnx.export's dynamo exporter needs it)
        except ImportError:
            raise ValueError("ONNX export needs the packages onnx and onnxscript: pip install "
                             "'nni-sparsemask[export]'") from None
        program = torch.onnx.export(form, (x,), dynamo=True, dynamic_shapes=_dynamic_shapes(), input_names=["image"],
                                    output_names=["logits"], verbose=False)
        program.save(str(path), external_data=False)
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.trace(form, x, check_trace=False), str(path))
    else:
        torch.export.save(torch.export.export(form, (x,), dynamic_shapes=_dynamic_shapes()), str(path))


def export_network(net: nn.Module, fmt: str, path: str | os.PathLike, *,
                   example_size: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write ``net`` in its deployment form (:func:`export_form`) as ``fmt`` (:data:`FORMATS`) to ``path``.

    Batch 1, height and width symbolic, traced at ``example_size`` (None: twice the encoder's largest reduction, so
    that the deepest feature map is not 1x1, :func:`smallest_side`). The file is written next to ``path`` and
    renamed into place: a failed export leaves nothing; an existing ``path`` is refused unless ``overwrite``.
    """
    check_format(fmt)
    path = check_target(path, overwrite)
    smallest = smallest_side(net)
    h, w = (int(s) for s in example_size) if example_size is not None else (2 * (smallest - 1),) * 2
    if min(h, w) < smallest:
        raise ValueError(f"example_size must be at least {smallest}x{smallest} (the deepest feature map more than "
                         f"1x1), got {h}x{w}")
    form = export_form(net)
    x = torch.randn(1, 3, h, w, device=next(form.parameters()).device)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.part.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), _quiet():
            _write(form, fmt, x, Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_exported(fmt: str, path: str | os.PathLike):
    """The exported network as a callable ``f(image) -> logits`` (NumPy for ONNX, via ONNX Runtime on the CPU)."""
    check_format(fmt)
    if fmt == "torchscript":
        return torch.jit.load(str(path)).eval()
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()
    session, _ = onnxruntime_session(path)
    return lambda image: session.run(None, {session.get_inputs()[0].name: image})[0]


def onnxruntime_session(path: str | os.PathLike, device: str = "cpu", num_threads: int | None = None):
    """An ONNX Runtime session of the ONNX file ``path`` and the provider it runs on: ``(session, provider)``.

    ``device`` ``"cuda"`` (or ``"cuda:N"``) takes ``CUDAExecutionProvider`` when this ONNX Runtime has it (the
    onnxruntime-gpu build), else the CPU's; ``num_threads`` sets the CPU provider's intra-op threads (default: ONNX
    Runtime's, one per physical core). Graph optimisations at ONNX Runtime's default level (``ORT_ENABLE_ALL``).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("running an ONNX file needs onnxruntime: pip install 'nni-sparsemask[export]'") from None
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N] for ONNX Runtime, got {device!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the warning that an NCHWc graph is specific to this CPU
    if num_threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = int(num_threads), 1
    provider = "CPUExecutionProvider"
    providers: list = [provider]
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        provider = "CUDAExecutionProvider"
        providers = [(provider, {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers), provider


def onnx_op_counts(path: str | os.PathLike, optimized_path: str | os.PathLike | None = None,
                   level: str = "ORT_ENABLE_ALL") -> tuple[dict[str, int], dict[str, int]]:
    """Node op types of an ONNX file before and after ONNX Runtime's graph optimisations at ``level`` (a name of
    ``onnxruntime.GraphOptimizationLevel``) on the CPU: ``(before, after)``, each ``{op_type: count}``, an op of
    another domain than ONNX's own as ``domain:op_type`` (``com.microsoft.nchwc:Conv``). The optimised graph is
    written to ``optimized_path`` (a temporary file when None)."""
    import onnx
    import onnxruntime as ort

    def counts(model_path: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in onnx.load(model_path).graph.node:
            name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))

    with tempfile.TemporaryDirectory() as tmp:
        target = str(optimized_path or Path(tmp) / "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.optimized_model_filepath = target
        options.log_severity_level = 3  # the warning that an NCHWc graph is specific to this CPU
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return counts(str(path)), counts(target)
