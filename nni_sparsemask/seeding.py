"""Seeding, the one definition every layer uses (it imports nothing of this package).

A run is reproducible when python's ``random``, numpy and torch are seeded before the network is built (its
initial weights) and again at the start of every epoch from ``(seed, epoch)``: an interrupted run that resumes
at epoch k then draws exactly what an uninterrupted run drew in epoch k (batch order, augmentation, noise).
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "epoch_seed", "seed_epoch"]


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
