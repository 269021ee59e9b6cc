"""Seeding, the one definition every layer uses (it imports nothing of this package).

A run is reproducible when python's ``random``, numpy and torch are seeded before the network is built (its
initial weights) and again at the start of every epoch from ``(seed, epoch)``: an interrupted run that resumes
at epoch k then draws exactly what an uninterrupted run drew in epoch k (batch order, augmentation, noise).
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "epoch_seed", "seed_epoch", "EpochShuffle"]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy (mod 2**32) and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(int(seed) % 2 ** 32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed``: ``(seed * 1000003 + epoch) mod 2**32``."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2 ** 32)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed everything for epoch ``epoch`` (call it at the start of the epoch, also after a resume)."""
    seed_everything(epoch_seed(seed, epoch))


class EpochShuffle(torch.utils.data.Sampler):
    """A random order of ``range(n)`` that depends only on ``(seed, epoch)``.

    A ``DataLoader(shuffle=True)`` draws its order from torch's global RNG when its iterator is made, and
    Lightning makes the first iterator of a fit (also of a resumed fit) before ``on_train_epoch_start``, so
    reseeding in that hook cannot fix the order of a resumed epoch. Lightning calls :meth:`set_epoch` on a
    loader's sampler before each epoch (``_set_sampler_epoch``), and the order is drawn lazily, at the first batch.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"EpochShuffle needs the data set's length (an int >= 0), got {n!r}")
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())

