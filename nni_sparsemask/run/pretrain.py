"""Backbone pre-training on DigitScenes' classification view: the stand-in for ImageNet weights.

No weights can be downloaded here, and a segmentation net trained from scratch on DigitScenes finds the digits
but not which digit they are (measured: mIoU 0.13 after 30 epochs). So, as the paper starts from an ImageNet classifier, the
encoder is first trained as a digit classifier: scenes with one digit each (``DigitScenes(task=
"classification")``, same photos, scales, contrast and train/val split as the segmentation scenes), a linear
classifier on the global-pool feature ``G``.

Recipe (chosen by measurement, see the README): AdamW, learning rate ``lr`` with a linear warm-up over the first
``warmup_epochs`` then cosine decay to 0, weight decay 1e-4, cross-entropy, batch 64, no augmentation beyond
the scenes' own randomness (digits are not flip-invariant).

The result is cached like downloaded weights would be: ``<cache>/backbones/<name>-<hash>.pt`` holds the
encoder's ``state_dict`` (loadable with ``build_backbone(name, weights=path, **kwargs)``) and a JSON side file
holds the config and the measured accuracy. :func:`pretrained_backbone` returns the cached file when its config
matches, and trains it otherwise; ``sparsemask pretrain`` reproduces it from its seed.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.run.config import PretrainConfig
from nni_sparsemask.data.digitscenes import DigitScenes, cache_root

__all__ = ["PretrainConfig", "PretrainResult", "pretrain_backbone", "pretrained_backbone", "backbone_cache_dir",
           "cached_weights_path"]


@dataclass
class PretrainResult:
    """Where the weights are and how good the classifier was (``val_accuracy`` per epoch in ``history``)."""

    weights: Path
    config: PretrainConfig
    val_accuracy: float
    train_seconds: float
    history: list[dict[str, float]]
    cached: bool = False


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_info[-1].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, g = self.encoder(x)
        return self.head(torch.flatten(g, 1))


def backbone_cache_dir() -> Path:
    """``$NNI_SPARSEMASK_CACHE_DIR/backbones``, else ``${XDG_CACHE_HOME:-~/.cache}/nni_sparsemask/backbones``."""
    return cache_root() / "backbones"


def cached_weights_path(config: PretrainConfig, cache_dir: Union[str, Path, None] = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else backbone_cache_dir()
    return root / f"{config.backbone}-{config.key()}.pt"


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / max(1, total)


def pretrain_backbone(config: PretrainConfig, out: Union[str, Path], *, progress: bool = True,
                      log: Callable[[str], None] = print, overwrite: bool = False) -> PretrainResult:
    """Train ``config.backbone`` as a digit classifier and save the encoder's ``state_dict`` to ``out``.

    ``out`` is never replaced unless ``overwrite``; the JSON side file ``out.with_suffix('.json')`` records the
    config, the per-epoch history and the final val accuracy.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to train it again")
    torch.manual_seed(config.seed)
    encoder = build_backbone(config.backbone, **config.backbone_kwargs)
    model = _Classifier(encoder, num_classes=10)
    data = dict(task="classification", image_size=config.image_size, seed=config.seed)
    train = DigitScenes(split="train", num_scenes=config.num_scenes, **data)
    val = DigitScenes(split="val", num_scenes=max(64, config.num_scenes // 4), **data)
    gen = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=gen)
    val_loader = DataLoader(val, batch_size=256)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch < 1:
        raise ValueError(f"num_scenes={config.num_scenes} gives no full batch of {config.batch_size}")
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.time()
    for epoch in range(config.epochs):
        model.train()
        loss_sum = 0.0
        bar = tqdm(train_loader, desc=f"pretrain {config.backbone} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        for x, y in bar:
            for g in optimizer.param_groups:
                g["lr"] = _lr_at(step, total, warmup, config.lr)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = _accuracy(model, val_loader)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch, "val_accuracy": acc,
                        "seconds": time.time() - t0})
        log(f"[pretrain] epoch {epoch + 1}/{config.epochs}: train loss {loss_sum / steps_per_epoch:.3f}, "
            f"val digit accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
    seconds = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(encoder.state_dict(), tmp)
    os.replace(tmp, out)
    side = {"config": config.to_dict(), "val_accuracy": history[-1]["val_accuracy"], "train_seconds": seconds,
            "history": history, "weights": out.name}
    tmp = out.with_name(f".{out.stem}.json.tmp")
    tmp.write_text(json.dumps(side, indent=1))
    os.replace(tmp, out.with_suffix(".json"))
    return PretrainResult(out, config, history[-1]["val_accuracy"], seconds, history)


def pretrained_backbone(config: Optional[PretrainConfig] = None, cache_dir: Union[str, Path, None] = None, *,
                        progress: bool = True, log: Callable[[str], None] = print) -> PretrainResult:
    """The cached pre-trained weights for ``config`` (trained first when missing or unreadable)."""
    config = config if config is not None else PretrainConfig()
    path = cached_weights_path(config, cache_dir)
    side = path.with_suffix(".json")
    if path.is_file() and side.is_file():
        try:
            meta = json.loads(side.read_text())
            if meta.get("config") == config.to_dict():
                torch.load(path, map_location="cpu", weights_only=True)  # readable?
                return PretrainResult(path, config, float(meta["val_accuracy"]), float(meta["train_seconds"]),
                                      list(meta["history"]), cached=True)
        except Exception as err:  # a corrupt cache entry is rebuilt, as a corrupt download would be
            log(f"[pretrain] cached weights {path} are unreadable ({err}); training them again")
    log(f"[pretrain] no cached {config.backbone} weights for this config; training them "
        f"({config.epochs} epochs on {config.num_scenes} one-digit scenes), saved to {path}")
    return pretrain_backbone(config, path, progress=progress, log=log, overwrite=True)
