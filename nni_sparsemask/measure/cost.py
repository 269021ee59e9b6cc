"""Machine-independent inference cost of a network: operator calls, FLOPs and bytes written per forward pass.

FPS is what a user cares about, but it is a property of the machine as much as of the network. Three counts
bound it from the three regimes a forward pass can be in:

* ``ops``: ATen operator calls that compute something (views such as ``expand`` are left out). Batch-1 inference
  on a GPU is launch-bound (each call is at least one kernel launch of a few microseconds), so there the time
  follows this count;
* ``flops``: as ``torch.utils.flop_counter`` counts them (2 x multiply-adds of convolutions and matrix products;
  element-wise operations count 0), what a compute-bound device pays;
* ``bytes_written``: the sum of the sizes of every operator's output, what a memory-bound device (a small CPU
  with slow memory) pays at least once.

Counted on one forward pass of random input, under ``torch.no_grad`` and in eval mode; ``inference=True`` counts
the deployment form (:func:`nni_sparsemask.measure.deploy.inference_form`), the form ``measure_fps(inference=True)`` times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from nni_sparsemask.measure.deploy import as_measured

__all__ = ["InferenceCost", "inference_cost"]


@dataclass(frozen=True)
class InferenceCost:
    """Per forward pass: operator calls, FLOPs (2 x MACs), bytes of the outputs of those calls."""

    ops: int
    flops: int
    bytes_written: int

    def ratio(self, other: "InferenceCost") -> dict[str, float]:
        """``other / self`` per count: how many times cheaper ``self`` is than ``other`` in each regime."""
        return {"ops": other.ops / max(self.ops, 1), "flops": other.flops / max(self.flops, 1),
                "bytes_written": other.bytes_written / max(self.bytes_written, 1)}


#: allocations: they write nothing (BN's eval kernel asks for one of size 0)
_ALLOCATIONS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty"}


class _OpCounter(TorchDispatchMode):
    """Counts the operator calls that write something (not views, not allocations) and the bytes they write."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func._schema.name not in _ALLOCATIONS:
            written = sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            if written:
                self.ops += 1
                self.bytes += written
        return out


def inference_cost(model: nn.Module, input_size: int | tuple[int, int] = (512, 512), batch_size: int = 1,
                   in_channels: int = 3, inference: bool = False) -> InferenceCost:
    """Count :class:`InferenceCost` of one forward pass of ``model`` on ``(batch_size, in_channels, H, W)``.

    The model's training flag is restored afterwards; ``inference=True`` counts a deployment-form copy instead
    (``model`` is left as it was).
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1 or batch_size < 1 or in_channels < 1:
        raise ValueError(f"input_size, batch_size and in_channels must be positive, got {input_size}, "
                         f"{batch_size}, {in_channels}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    model, x, _ = as_measured(model, torch.randn(batch_size, in_channels, h, w, device=device), inference)
    was_training = model.training
    model.eval()
    counter = _OpCounter()
    flops = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flops, counter:
            model(x)
    finally:
        model.train(was_training)
    return InferenceCost(ops=counter.ops, flops=int(flops.get_total_flops()), bytes_written=counter.bytes)
