"""Inference speed: frames per second of a network on random input, as given or in the deployment form."""
from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from nni_sparsemask.measure.deploy import AS_GIVEN, as_measured

__all__ = ["FPSResult", "measure_fps", "time_forward"]


@dataclass(frozen=True)
class FPSResult:
    """Inference speed measured by :func:`measure_fps`: ``fps = batch_size / mean_seconds``."""

    fps: float
    mean_seconds: float
    median_seconds: float
    device: str
    batch_size: int
    input_size: tuple[int, int]
    num_threads: int
    num_runs: int
    form: str = AS_GIVEN

    def __str__(self) -> str:
        h, w = self.input_size
        return (f"{self.fps:.2f} FPS ({self.mean_seconds * 1e3:.2f} ms mean, {self.median_seconds * 1e3:.2f} ms "
                f"median per batch of {self.batch_size} at {h}x{w}, {self.num_runs} runs) on {self.device}, "
                f"{self.num_threads} threads, {self.form}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"{device.type}:{cpu}"


def _timing_device(model: nn.Module, device: Union[str, torch.device, None]) -> torch.device:
    """``device``, or the device of the model's parameters (CPU if it has none) when ``None``."""
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is CUDA but torch.cuda.is_available() is False; pass device='cpu'")
    return device


def _check_sizes(input_size: Union[int, tuple[int, int]], batch_size: int, warmup: int, min_run_time: float
                 ) -> tuple[int, int]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1 or batch_size < 1:
        raise ValueError(f"input_size and batch_size must be positive, got {input_size}, {batch_size}")
    if warmup < 0 or min_run_time <= 0:
        raise ValueError(f"warmup must be >= 0 and min_run_time > 0, got {warmup}, {min_run_time}")
    return h, w


def time_forward(forward: Callable[[], object], input_size: Union[int, tuple[int, int]], batch_size: int = 1,
                 device: Union[str, torch.device] = "cpu", warmup: int = 5, min_run_time: float = 2.0,
                 num_threads: Optional[int] = None, in_channels: int = 3, form: str = AS_GIVEN) -> FPSResult:
    """Frames per second of ``forward()``, a call that runs one batch of ``(batch_size, in_channels, H, W)``
    already bound to it (a PyTorch module on its input, an ONNX Runtime session on its feed, ...).

    ``warmup`` untimed calls, then blocks of calls (``torch.utils.benchmark.Timer.timeit``, which synchronises CUDA
    around each block: the whole device, so work another runtime queued on it is waited for too) until at least
    ``min_run_time`` seconds are timed. A block is about a tenth of ``min_run_time``, sized from one timed call.
    (``blocked_autorange`` sized blocks by its overhead estimate instead: a 7 ms network got one block of 1000
    calls, 7 s for a 1 s request.) ``fps = batch_size / mean seconds per call``. ``num_threads`` (default
    ``torch.get_num_threads()``) is PyTorch's thread count while timing and the count reported; a runtime with a
    thread pool of its own is given it by the caller. ``form`` names what is timed in the result.
    """
    from torch.utils import benchmark

    h, w = _check_sizes(input_size, batch_size, warmup, min_run_time)
    device = torch.device(device)
    threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    for _ in range(warmup):
        forward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads,
                            label="measure_fps", description=f"{batch_size}x{in_channels}x{h}x{w}")
    one = float(timer.timeit(1).times[0])
    number = max(1, int(min_run_time / 10 / max(one, 1e-9)))
    per_call: list[float] = []   # each block's mean seconds per call
    while len(per_call) * number * statistics.fmean(per_call or [one]) < min_run_time:
        per_call.append(float(timer.timeit(number).times[0]))
    mean = statistics.fmean(per_call)
    return FPSResult(fps=batch_size / mean, mean_seconds=mean, median_seconds=statistics.median(per_call),
                     device=_device_name(device), batch_size=batch_size, input_size=(h, w),
                     num_threads=threads, num_runs=number * len(per_call), form=form)


def measure_fps(model: nn.Module, input_size: Union[int, tuple[int, int]] = (512, 512), batch_size: int = 1,
                device: Union[str, torch.device, None] = None, warmup: int = 5, min_run_time: float = 2.0,
                num_threads: Optional[int] = None, in_channels: int = 3, inference: bool = False) -> FPSResult:
    """Frames per second of ``model`` on random input ``(batch_size, in_channels, H, W)``.

    Runs in eval mode under ``torch.no_grad()`` (the model's training flag is restored afterwards), does
    ``warmup`` untimed forward passes, then times with ``torch.utils.benchmark.Timer.blocked_autorange``
    (which synchronises CUDA around each block) for at least ``min_run_time`` seconds (:func:`time_forward`).
    ``fps = batch_size / mean seconds per forward``. ``device=None`` uses the device of the model's
    parameters; otherwise the model is **moved** to ``device``. ``num_threads`` defaults to
    ``torch.get_num_threads()`` (the Timer would otherwise use 1 thread).

    ``inference=True`` times the deployment form instead (:func:`nni_sparsemask.measure.deploy.inference_form`: a copy
    with BN folded and ``channels_last`` weights, fed ``channels_last`` input); ``model`` is left as it was.
    """
    h, w = _check_sizes(input_size, batch_size, warmup, min_run_time)
    device = _timing_device(model, device)
    model = model.to(device)
    model, x, form = as_measured(model, torch.randn(batch_size, in_channels, h, w, device=device), inference)
    was_training = model.training
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        model(x)

    try:
        return time_forward(forward, (h, w), batch_size, device, warmup, min_run_time, num_threads, in_channels, form)
    finally:
        model.train(was_training)
