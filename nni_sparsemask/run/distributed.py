"""Several processes for the search and the retraining: Lightning's DDP (``--devices N --dist-strategy ddp``).

How the processes start
-----------------------
:func:`trainer_options` gives the Trainer's ``devices`` and ``strategy``. With ``devices > 1`` the strategy is
Lightning's ``DDPStrategy`` started inside ``trainer.fit``: by ``fork`` (``'ddp'``, ``'ddp_fork'``: Lightning's
``ddp_fork``) or by ``spawn`` (``'ddp_spawn'``). Everything before and after ``fit`` (the run directory and its
lock, NNI's ``NasExperiment`` with its in-process engine, the files written at the end) runs once, in the calling
process. Lightning's own ``strategy='ddp'`` is not offered: it starts every other process as a new ``python`` of
the same command line, which would run the whole command (run directory, experiment) once per process. ``fork`` is
the default: nothing is pickled and each process starts at once, but each computes on one CPU thread (a forked
child of a process that already ran OpenMP threads hangs in its first parallel region: :func:`_one_thread`), and it
needs CUDA untouched in the calling process (Lightning refuses otherwise). ``spawn`` starts fresh interpreters
(seconds each; the command needs its ``if __name__ == "__main__"`` guard, as ``sparsemask`` has) that pickle the
Trainer, the module and the loaders, and use Lightning's threads per process. On CPU the processes talk through
gloo.

What comes back to the calling process: rank 0's weights (Lightning loads its state dict there), the trainer state,
and what each object with ``main_process_state()`` / ``load_main_process_state(state)`` hands over (the search
loop: the w history; the retraining's history callback: its rows and time); see :class:`_Launcher`.

Gradients, w, BatchNorm
-----------------------
NNI's one-shot module optimises by hand (``automatic_optimization`` is False): its ``training_step`` runs inside
DDP's forward and each ``manual_backward`` goes through Lightning's ``DDPStrategy.pre_backward``, which prepares
DDP's reducer, so every backward (two per step in ``'bilevel'``) all-reduces (averages) the gradient of every
parameter that required one when the module was wrapped. w (the ``_arch_w`` of each ``SparseMixedInput``) is one of
them, so every process steps w with the same averaged gradient and the same optimizer state and clamps it the same
way: w stays identical on every rank (the test checks it bitwise). ``find_unused_parameters=True``: w is frozen in
warm-up epochs, ``freeze_bn`` freezes BatchNorm after the module was wrapped, MaskConnect leaves the edges it did
not pick unused. BatchNorm: ``SyncBatchNorm`` (statistics over the batches of all processes) on CUDA; on CPU torch
refuses it (``SyncBatchNorm expected input tensor to be on GPU``), so each process normalises with its own batch,
and the running statistics are rank 0's (DDP broadcasts rank 0's buffers at every training forward; rank 0's
checkpoint and weights are what is kept).

Data
----
Each process takes its share of every epoch's order: :class:`ShardedEpochShuffle` (the train loaders). The
validation loaders keep their sequential sampler, which Lightning replaces by a ``DistributedSampler``. A process
trains on ``batch_size`` images per step, so a step of N processes sees ``N * batch_size`` images and an epoch has
1/N of the steps.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import torch
from torch.utils.data import DistributedSampler

from nni_sparsemask.seeding import EpochShuffle

__all__ = ["DIST_STRATEGIES", "DEFAULT_DEVICES", "DEFAULT_DIST_STRATEGY", "check_dist", "trainer_options",
           "rank_and_world", "ShardedEpochShuffle", "checkpoint_world_size"]

#: ``--dist-strategy`` values: 'auto' (one process for 1 device, else 'ddp'), 'ddp' (= 'ddp_fork'), 'ddp_spawn'
DIST_STRATEGIES = ("auto", "ddp", "ddp_fork", "ddp_spawn")
DEFAULT_DEVICES = 1
DEFAULT_DIST_STRATEGY = "auto"
_START = {"ddp": "fork", "ddp_fork": "fork", "ddp_spawn": "spawn"}


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_dist(devices: int, dist_strategy: str, accelerator: str = "auto") -> None:
    """Refuse settings that cannot run, before a command writes anything (``ValueError``)."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"--devices must be an integer >= 1, got {devices!r}")
    if dist_strategy not in DIST_STRATEGIES:
        raise ValueError(f"unknown --dist-strategy {dist_strategy!r}; use one of {', '.join(DIST_STRATEGIES)} "
                         "(Lightning's 'ddp' re-running the command line is not offered: see run/distributed.py)")
    if devices > 1 and _uses_cuda(accelerator):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if devices > count:
            raise ValueError(f"--devices {devices} but this machine has {count} CUDA device(s); use --devices "
                             f"{max(count, 1)}")


def trainer_options(devices: int = DEFAULT_DEVICES, dist_strategy: str = DEFAULT_DIST_STRATEGY,
                    accelerator: str = "auto", find_unused_parameters: bool = True) -> dict[str, Any]:
    """The Trainer's ``devices``, ``strategy`` and ``sync_batchnorm`` for ``devices`` processes (module docstring)."""
    check_dist(devices, dist_strategy, accelerator)
    if devices == 1 and dist_strategy == "auto":
        return {"devices": 1}
    strategy = _classes()["ProcessDDPStrategy"](start_method=_START.get(dist_strategy, "fork"),
                                                find_unused_parameters=find_unused_parameters)
    return {"devices": devices, "strategy": strategy, "sync_batchnorm": _uses_cuda(accelerator)}


# ------------------------------------------------------------------------------------------------ data
class ShardedEpochShuffle(DistributedSampler):
    """:class:`~nni_sparsemask.seeding.EpochShuffle`'s order of ``range(n)`` for ``(seed, epoch)``, dealt out to the
    processes: rank r takes positions r, r + N, r + 2N, ... of it, the order padded (from its start) to a multiple
    of N so that every process takes as many batches (DDP needs the same number of steps everywhere). One process
    (no process group): exactly ``EpochShuffle``'s order. The world is read when the order is drawn, not when the
    loader is built (before the processes exist). A ``DistributedSampler``, so Lightning keeps it (it would wrap
    another sampler in a ``DistributedSamplerWrapper``, whose ``set_epoch`` does not reach the sampler inside: every
    epoch would repeat the first one's order); Lightning calls :meth:`set_epoch` before every epoch, a resumed run's
    too.
    """

    def __init__(self, n: int, seed: int = 0) -> None:  # no DistributedSampler.__init__: it asks for the world now
        self._order = EpochShuffle(n, seed)
        self.seed, self.epoch, self.shuffle, self.drop_last = int(seed), 0, True, False

    @property
    def n(self) -> int:
        return self._order.n

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return rank_and_world()[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return rank_and_world()[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._order.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        order = list(self._order)
        if world == 1:
            return iter(order)
        total = math.ceil(len(order) / world) * world
        while order and len(order) < total:
            order += order[: total - len(order)]
        return iter(order[rank:total:world])


def checkpoint_world_size(state: Any) -> int:
    """The number of processes recorded under ``"world_size"`` in a checkpoint's state (1 when absent: written
    before DDP, by one process)."""
    return int(state.get("world_size", 1)) if isinstance(state, dict) else 1


# ------------------------------------------------------------------------------------------------ Lightning
def _collect(trainer: Any) -> dict[str, Any]:
    """What the objects of a fit hand over to the calling process (``main_process_state()``), by position."""
    out: dict[str, Any] = {}
    module = trainer.lightning_module
    if hasattr(module, "main_process_state"):
        out["module"] = module.main_process_state()
    for i, cb in enumerate(trainer.callbacks):
        if hasattr(cb, "main_process_state"):
            out[f"callback{i}"] = (type(cb).__qualname__, cb.main_process_state())
    return out


def _restore(trainer: Any, state: dict[str, Any]) -> None:
    module = trainer.lightning_module
    if "module" in state and hasattr(module, "load_main_process_state"):
        module.load_main_process_state(state["module"])
    for i, cb in enumerate(trainer.callbacks):
        name_state = state.get(f"callback{i}")
        if name_state is not None and name_state[0] == type(cb).__qualname__:
            cb.load_main_process_state(name_state[1])


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    """The Lightning classes, made on first use (importing this module does not import Lightning); module
    attributes, so that ``spawn`` can pickle them."""
    if _CLASSES:
        return _CLASSES
    from pytorch_lightning.strategies import DDPStrategy
    from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    class _Launcher(_MultiProcessingLauncher):
        """Lightning's fork / spawn launcher, handing ``main_process_state()`` of rank 0 back as well; a forked
        process computes on one thread (see :func:`_one_thread`)."""

        def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
            if self._start_method == "fork":
                _one_thread()
            return super()._wrapping_function(*args, **kwargs)

        def get_extra_results(self, trainer: Any) -> dict[str, Any]:
            return dict(super().get_extra_results(trainer), sparsemask=_collect(trainer))

        def update_main_process_results(self, trainer: Any, extra: dict[str, Any]) -> None:
            super().update_main_process_results(trainer, extra)
            _restore(trainer, extra.get("sparsemask", {}))

    class ProcessDDPStrategy(DDPStrategy):
        """``DDPStrategy`` with processes started inside ``fit`` (fork or spawn) by :class:`_Launcher`."""

        def _configure_launcher(self) -> None:
            self._launcher = _Launcher(self, start_method=self._start_method)

    for cls in (_Launcher, ProcessDDPStrategy):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _CLASSES[cls.__name__] = cls
    return _CLASSES


def __getattr__(name: str) -> Any:  # the Lightning classes, for pickle (spawn)
    if name in ("_Launcher", "ProcessDDPStrategy"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_thread() -> None:
    """One compute thread in a forked process: torch's CPU kernels run on OpenMP, and a forked child of a process
    whose OpenMP threads already ran hangs in its first parallel region (GNU libgomp keeps the parent's thread pool,
    whose threads the child does not have). With one thread no parallel region starts. ``OMP_NUM_THREADS`` too, so
    that Lightning does not raise it again (``_set_num_threads_if_needed``)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
