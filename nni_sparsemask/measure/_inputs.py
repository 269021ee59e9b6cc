"""Checks shared by the probability-map metrics (:mod:`.saliency`, :mod:`.edges`)."""
from __future__ import annotations

from torch import Tensor

__all__ = ["check_prob_pair"]


def check_prob_pair(pred: Tensor, gt: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if pred.dim() == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if gt.dim() == 4 and gt.shape[1] == 1:
        gt = gt[:, 0]
    if pred.dim() != 3 or pred.shape != gt.shape:
        raise ValueError(f"{what}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (N, H, W) "
                         "(or (H, W) / (N, 1, H, W)) of the same size")
    pred = pred.detach().float()
    if pred.numel() and (float(pred.min()) < 0.0 or float(pred.max()) > 1.0):
        raise ValueError(f"{what}: predictions must be probabilities in [0, 1] (apply sigmoid first); "
                         f"found range [{float(pred.min()):.3g}, {float(pred.max()):.3g}]")
    return pred, gt.detach().to(pred.device).float() > 0.5
