"""The parts of the official SparseMask search recipe that reach into the evaluator: w in the evaluator's own
optimizer (``arc_optimizer='shared'``) and nearly frozen BatchNorm (``freeze_bn``).

Shared optimizer
----------------
The official code trains the backbone, the decoder and w with ONE SGD optimizer (momentum 0.9, weight decay
4e-5, poly decay); w belongs to the decoder and so gets the decoder's learning rate, 10x the backbone's. Here
the evaluator's optimizer (whatever its class: SGD, Adam, ...) receives w as one more parameter group,
:data:`ARCH_GROUP`, built by :func:`add_arch_group`:

* every hyper-parameter of the group is copied from a *reference* group of that optimizer (momentum, betas,
  nesterov, the keys schedulers add, ...), except ``weight_decay``, which is ``arc_weight_decay``;
* the reference group is the one named ``"decoder"`` when there is one (the project's ``SegmentationModule``
  names its groups ``encoder`` / ``decoder``), else the first group;
* the base learning rate of w is ``arc_learning_rate`` when given; else the decoder group's own; else
  ``arc_lr_mult`` (default 10, the paper's decoder / backbone ratio) times the first group's;
* schedule: the evaluator's schedulers were built before w's group existed, and torch's schedulers refuse an
  optimizer whose number of groups changed; so they are stepped with the group hidden
  (:func:`arch_group_hidden`), after which :func:`sync_arch_lr` sets ``lr(w) = base(w) * lr(ref) / base(ref)``:
  w follows the reference group's schedule (poly, cosine, step, ...), whatever the scheduler.

Frozen BN
---------
:func:`freeze_batchnorm` sets every BatchNorm of the model to ``momentum=bn_momentum`` (3e-4 in the official
recipe: the running statistics move very slowly; 0 keeps them exactly) and ``requires_grad=False`` on its affine
parameters (an optimizer skips a parameter without a gradient, weight decay included); training forwards still
normalise with the batch statistics. :func:`restore_batchnorm` undoes it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["ARCH_GROUP", "optimizers_in", "the_weight_optimizer", "add_arch_group", "sync_arch_lr",
           "arch_group_hidden", "freeze_batchnorm", "restore_batchnorm"]

#: the ``name`` of w's parameter group in the shared optimizer
ARCH_GROUP = "sparsemask_arch"


def optimizers_in(conf: Any) -> Iterator[torch.optim.Optimizer]:
    """Every optimizer in a Lightning ``configure_optimizers`` return value (any of its six forms)."""
    if isinstance(conf, torch.optim.Optimizer):
        yield conf
    elif isinstance(conf, dict):
        if isinstance(conf.get("optimizer"), torch.optim.Optimizer):
            yield conf["optimizer"]
    elif isinstance(conf, (list, tuple)):
        for item in conf:
            if isinstance(item, (torch.optim.Optimizer, dict)) or (
                    isinstance(item, (list, tuple)) and all(isinstance(o, torch.optim.Optimizer) for o in item)):
                yield from optimizers_in(item)


def the_weight_optimizer(conf: Any) -> torch.optim.Optimizer:
    """The one optimizer of the evaluator (NNI's one-shot strategies allow one); ``ValueError`` otherwise."""
    found = list(dict.fromkeys(optimizers_in(conf)))
    if len(found) != 1:
        raise ValueError(f"arc_optimizer='shared' puts w into the evaluator's optimizer, but its configure_optimizers "
                         f"returned {len(found)} optimizers; return one, or use arc_optimizer='sgd' or 'adam' "
                         "(w then has an optimizer of its own)")
    return found[0]


def _reference(optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
    groups = [(i, g) for i, g in enumerate(optimizer.param_groups) if g.get("name") != ARCH_GROUP]
    if not groups:
        raise ValueError("the evaluator's optimizer has no parameter group to share with w")
    return next(((i, g) for i, g in groups if g.get("name") == "decoder"), groups[0])


def _base_lr(group: dict[str, Any]) -> float:
    """The group's learning rate before any schedule (``initial_lr``, which torch's schedulers set, or ``lr``)."""
    return float(group.get("initial_lr", group["lr"]))


def add_arch_group(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], learning_rate: float | None,
                   lr_mult: float, weight_decay: float) -> dict[str, Any]:
    """Add w (``params``) to ``optimizer`` as the group :data:`ARCH_GROUP` (see the module docstring); return it.

    The group carries ``ref_group`` (index of the reference group), ``ref_base_lr`` and ``initial_lr`` (the base
    learning rate of w), which :func:`sync_arch_lr` uses.
    """
    if any(g.get("name") == ARCH_GROUP for g in optimizer.param_groups):
        raise ValueError(f"the optimizer already has a {ARCH_GROUP!r} group")
    index, ref = _reference(optimizer)
    ref_base = _base_lr(ref)
    if learning_rate is not None:
        base = float(learning_rate)
    elif ref.get("name") == "decoder":
        base = ref_base
    else:
        base = float(lr_mult) * ref_base
    group = {k: v for k, v in ref.items() if k != "params"}
    group.update(params=list(params), name=ARCH_GROUP, weight_decay=float(weight_decay), initial_lr=base,
                 ref_group=index, ref_base_lr=ref_base)
    optimizer.add_param_group(group)
    sync_arch_lr(optimizer)
    return optimizer.param_groups[-1]


def sync_arch_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """Set w's learning rate to ``base(w) * lr(ref) / base(ref)``; return it (``None`` without the group)."""
    for group in optimizer.param_groups:
        if group.get("name") == ARCH_GROUP:
            ref = optimizer.param_groups[group["ref_group"]]
            ratio = ref["lr"] / group["ref_base_lr"] if group["ref_base_lr"] > 0 else 1.0
            group["lr"] = group["initial_lr"] * ratio
            return group["lr"]
    return None


@contextmanager
def arch_group_hidden(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Take w's group out of ``optimizer.param_groups`` for the duration (to step the evaluator's schedulers),
    then put it back last and :func:`sync_arch_lr`."""
    groups = optimizer.param_groups
    hidden = [g for g in groups if g.get("name") == ARCH_GROUP]
    groups[:] = [g for g in groups if g.get("name") != ARCH_GROUP]
    try:
        yield
    finally:
        groups.extend(hidden)
        sync_arch_lr(optimizer)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module, momentum: float) -> list[tuple[nn.Module, Any, list[bool]]]:
    """Every BatchNorm of ``model``: running-statistics ``momentum`` set, affine parameters not trained.

    Returns what :func:`restore_batchnorm` needs to undo it.
    """
    saved = []
    for m in _batchnorms(model):
        params = [p for p in (m.weight, m.bias) if p is not None]
        saved.append((m, m.momentum, [p.requires_grad for p in params]))
        m.momentum = float(momentum)
        for p in params:
            p.requires_grad_(False)
    return saved


def restore_batchnorm(saved: list[tuple[nn.Module, Any, list[bool]]]) -> None:
    """Undo :func:`freeze_batchnorm`."""
    for m, momentum, flags in saved:
        m.momentum = momentum
        for p, flag in zip([p for p in (m.weight, m.bias) if p is not None], flags):
            p.requires_grad_(flag)
