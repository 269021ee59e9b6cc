"""Model size: parameters split into encoder (``model.encoder``, the backbone) and decoder (everything else), and
Table 1's ``"2.22+0.56M"`` form."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ParamCount", "count_parameters", "format_params"]


@dataclass(frozen=True)
class ParamCount:
    """Parameters of ``model.encoder`` and of everything else (the decoder, including the head)."""

    encoder: int
    decoder: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder

    def __str__(self) -> str:
        return format_params(self)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> ParamCount:
    """Count parameters split into encoder (``model.encoder``) and decoder (all other parameters).

    Shared (tied) parameters are counted once, buffers (BN running stats) are not counted. With
    ``trainable_only`` only parameters with ``requires_grad`` are counted.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `encoder` submodule; count_parameters splits "
                         "encoder (model.encoder, the backbone) from decoder (everything else)")
    enc_ids = {id(p) for p in encoder.parameters()}
    n_enc = n_dec = 0
    for p in model.parameters():  # nn.Module.parameters() already de-duplicates shared tensors
        if trainable_only and not p.requires_grad:
            continue
        if id(p) in enc_ids:
            n_enc += p.numel()
        else:
            n_dec += p.numel()
    return ParamCount(encoder=n_enc, decoder=n_dec)


def format_params(count: ParamCount, digits: int = 2) -> str:
    """Table 1's form: encoder+decoder in millions, e.g. ``"2.22+0.56M"``."""
    return f"{count.encoder / 1e6:.{digits}f}+{count.decoder / 1e6:.{digits}f}M"
