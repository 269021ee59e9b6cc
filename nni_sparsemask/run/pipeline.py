"""What ``sparsemask retrain`` / ``evaluate`` / ``demo`` do with a fixed network: data loaders, backbone weights,
building the network, training it (resumable) and evaluating it (mIoU, per-class IoU, params, FPS). The configs
they take are in :mod:`.config`.

A trained network's run directory holds::

    config.json        {"command", "method", "params", "seed", "data", "model", "train", "decoder"}
    connectivity.json  the decoder (FDN-space decoders; DeepLabV3 has none)
    checkpoints/last.ckpt  Lightning checkpoint after every validation epoch (what --resume continues)
    history.csv        one row per epoch: train_loss, val_loss, val_miou, val_pixacc, val_fg_iou, seconds
    model.pt           the trained network's state_dict
    metrics.json       final scores (the row ``sparsemask report`` reads; written last, marks the run finished)
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.run.config import (PAPER_DECODER_LR_MULT, PRETRAINED, DataConfig, EvalConfig, ModelConfig,
                                       TrainConfig)
from nni_sparsemask.run.rundir import RunDir
from nni_sparsemask.run.distributed import DEFAULT_DEVICES, DEFAULT_DIST_STRATEGY, ShardedEpochShuffle

__all__ = ["make_loaders", "check_inputs", "check_eval_device", "resolve_backbone_weights",
           "build_network", "train_network", "evaluate_network", "check_connectivity", "class_names",
           "history_callback", "default_device"]


# ------------------------------------------------------------------------------------------------ data
def class_names(data: DataConfig) -> list[str]:
    from nni_sparsemask.data.datasets import class_names as names
    return names(data.dataset, data.task)


def _splits(data: DataConfig) -> tuple[Optional[str], str]:
    """``(train, evaluation)`` split of ``data.dataset`` (train ``train_aug`` for VOC with SBD)."""
    from nni_sparsemask.data.datasets import dataset_entry
    entry = dataset_entry(data.dataset)
    train = "train_aug" if data.dataset == "voc" and data.sbd_root else entry.train_split
    return train, entry.eval_split


def _folder_dataset(data: DataConfig, split: str, transform: Any, **kwargs: Any) -> Any:
    """A traced data set read from ``data.root`` (checked first: a root laid out differently is one error)."""
    import nni
    from nni_sparsemask.data.datasets import build_dataset
    if data.sbd_root:
        kwargs["sbd_root"] = data.sbd_root
    build_dataset(data.dataset, data.root, split, data.task, **kwargs)  # the layout, now, in this process
    return nni.trace(build_dataset)(data.dataset, data.root, split, data.task, transform=transform, **kwargs)


def make_loaders(data: DataConfig, *, train: bool = True, progress: bool = True) -> tuple[Any, Any]:
    """``(train, val)`` traced data loaders (they pickle without the data, for NNI trials). ``train=False``
    builds the evaluation loader only (``(None, val)``): evaluation-only data sets (ECSSD) have no training split.
    ``progress=False``: no bar while DigitScenes generates scenes missing from its cache.

    DigitScenes: its ``task`` view, ``val`` scenes in batches of ``4 x batch_size``. The other data sets: the
    training split with the paper's augmentation cropped to ``image_size``; the evaluation split one image per
    batch, padded to ``image_size`` (bottom / right, targets 255). BSDS500's evaluation images also carry every
    annotator's boundary map (``(image, target, boundaries)``), which the evaluation matches."""
    from nni.nas.evaluator.pytorch.lightning import DataLoader

    if data.dataset == "digitscenes":
        from nni_sparsemask.run.lightning import DigitScenesLoader
        common = dict(task=data.task, image_size=data.image_size, seed=data.seed, progress=progress)
        val = DigitScenesLoader(batch_size=4 * data.batch_size, split="val", num_scenes=data.val_scenes, **common)
        if not train:
            return None, val
        train_loader = DigitScenesLoader(batch_size=data.batch_size, shuffle=True, drop_last=True, split="train",
                                         num_scenes=data.train_scenes, **common)
        return train_loader, val
    import nni
    from nni_sparsemask.data.transforms import eval_transform, train_transform
    train_split, eval_split = _splits(data)
    extra = {"with_boundaries": True} if data.dataset == "bsds500" else {}
    val_set = _folder_dataset(data, eval_split, nni.trace(eval_transform)(pad_to=data.image_size), **extra)
    val = DataLoader(val_set, batch_size=1, num_workers=2)
    if not train:
        return None, val
    if train_split is None:
        raise ValueError(f"dataset {data.dataset!r} is for evaluation only (no training split); train on another "
                         f"data set of task {data.task} and evaluate the run with --dataset {data.dataset}")
    train_set = _folder_dataset(data, train_split, nni.trace(train_transform)(crop_size=data.image_size))
    order = nni.trace(ShardedEpochShuffle)(len(train_set), data.seed)  # from (seed, epoch) only; shared out in DDP
    return (DataLoader(train_set, batch_size=data.batch_size, sampler=order, drop_last=True, num_workers=2), val)


def check_inputs(data: DataConfig, model: ModelConfig, decoder: Optional[str] = None) -> list[Any]:
    """What the configs alone cannot tell, checked before a command writes anything: the VOC (and SBD) layout and
    the files its splits list, the backbone with its weights file or torchvision weights (``pretrained`` is made
    later, by ``sparsemask pretrain``), that ``decoder`` takes the backbone, and that a training batch of one image
    can pass the backbone (batch norm in training needs more than one value per channel, so the deepest stage
    must be larger than 1x1; larger batches take any size). Returns the backbone's ``feature_info``."""
    if data.dataset != "digitscenes":
        from nni_sparsemask.data.datasets import build_dataset
        train_split, eval_split = _splits(data)
        extra = {"sbd_root": data.sbd_root} if data.sbd_root else {}
        for split in (train_split, eval_split):
            if split is not None:
                build_dataset(data.dataset, data.root, split, data.task, **extra)
    from nni_sparsemask.fdn.backbones import build_backbone
    weights = None if model.backbone_weights in (None, PRETRAINED) else model.backbone_weights
    info = build_backbone(model.backbone, weights=weights, **model.backbone_kwargs).feature_info
    if decoder is not None:  # a head of its own takes only some backbones (DeepLabV3, the smp peers)
        from nni_sparsemask.run.registry import check_decoder_backbone
        check_decoder_backbone(decoder, model.backbone, info)
    stride = max(f.reduction for f in info)
    if data.batch_size == 1 and data.image_size <= stride:
        raise ValueError(f"image_size must be > {stride} with batch size 1 (backbone {model.backbone} reduces "
                         f"{stride}x: its deepest stage would be 1x1, where training batch norm has one value per "
                         f"channel), got {data.image_size}; raise --image-size or --batch-size")
    return info


def check_eval_device(device: Optional[str]) -> None:
    """``device`` (None: :func:`default_device`) is a device of this machine."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError("no CUDA device here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"no CUDA device {dev.index} here ({count} device(s): cuda:0..cuda:{count - 1})")
    elif dev.type != "cpu":
        raise ValueError(f"unknown device {device!r}; use cpu or cuda (cuda:N)")


# ------------------------------------------------------------------------------------------------ network
def resolve_backbone_weights(model: ModelConfig, data: DataConfig, log: Callable[[str], None] = print,
                             pretrain_overrides: Optional[dict[str, Any]] = None, progress: bool = True
                             ) -> Optional[str]:
    """The weights file for ``model.backbone_weights`` (``"pretrained"`` -> the cached DigitScenes classifier,
    trained on first use with :class:`~.pretrain.PretrainConfig` defaults, or ``pretrain_overrides``)."""
    if model.backbone_weights != PRETRAINED:
        return model.backbone_weights
    from nni_sparsemask.run.pretrain import PretrainConfig, pretrained_backbone
    cfg = PretrainConfig(backbone=model.backbone, backbone_kwargs=model.backbone_kwargs,
                         image_size=data.image_size if data.dataset == "digitscenes" else 64,
                         **dict(pretrain_overrides or {}))
    result = pretrained_backbone(cfg, log=log, progress=progress)
    if result.cached:
        log(f"[pretrain] using cached {model.backbone} weights {result.weights} "
            f"(digit val accuracy {result.val_accuracy:.3f})")
    return str(result.weights)


def check_connectivity(conn: Connectivity, model: ModelConfig, num_classes: int, where: str) -> None:
    """Refuse a connectivity made for another backbone or other backbone arguments: its stages are that
    backbone's, and ``sparsemask transfer`` re-maps them. Another class count, task or data set is what the paper's
    transfer experiments do (section 5: a connectivity searched on VOC segmentation, retrained for ADE20K, saliency
    and edges): the classifier is built for the data, the connectivity is kept."""
    if conn.backbone != model.backbone or dict(conn.backbone_kwargs) != dict(model.backbone_kwargs):
        kwargs = f" --backbone-kwargs '{json.dumps(dict(model.backbone_kwargs))}'" if model.backbone_kwargs else ""
        raise ValueError(f"{where} was made for backbone {conn.backbone} {dict(conn.backbone_kwargs)}, not "
                         f"{model.backbone} {dict(model.backbone_kwargs)}; pass the same --backbone, or transfer it "
                         f"first: sparsemask transfer {where} --backbone {model.backbone}{kwargs} --out NEW.json")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def head_width(decoder: Optional[str], head_channels: Optional[int] = None) -> Optional[int]:
    """The width of ``decoder``'s head of its own (``head_channels``, else the registry's published default), or
    None for no decoder or one of the FDN space (whose width is C_dec); recorded in a retrain's config.json."""
    from nni_sparsemask.run.registry import DECODERS
    if decoder is None or DECODERS.get(decoder).in_fdn_space:
        return None
    return DECODERS.get(decoder).default_channels if head_channels is None else head_channels


def build_network(model: ModelConfig, num_classes: int, *, connectivity: Optional[Connectivity] = None,
                  decoder: Optional[str] = None, weights: Optional[str] = None,
                  head_channels: Optional[int] = None) -> nn.Module:
    """Encoder (with ``weights``) + the decoder given as a ``connectivity`` or a registered ``decoder`` name.

    ``model.decoder_channels`` is C_dec, the width of the FDN space's decoders. A decoder with a head of its own
    (``deeplabv3``, the ``smp-*`` peers) keeps its published width (:func:`head_width`) unless ``head_channels``
    is given: C_dec 32 read as smp U-Net's width left it 2 channels before its head at full resolution."""
    if (connectivity is None) == (decoder is None):
        raise ValueError("give exactly one of connectivity (--connectivity) and decoder (--decoder)")
    if decoder is not None:
        from nni_sparsemask.run.registry import DECODERS, build_decoder
        channels = model.decoder_channels if DECODERS.get(decoder).in_fdn_space else head_width(decoder, head_channels)
        return build_decoder(decoder, model.backbone, num_classes, decoder_channels=channels,
                             backbone_kwargs=model.backbone_kwargs, backbone_weights=weights)
    from nni_sparsemask.fdn.pruned import build_pruned
    return build_pruned(connectivity, num_classes, model.decoder_channels, backbone_weights=weights,
                        backbone_kwargs=model.backbone_kwargs)


# ------------------------------------------------------------------------------------------------ training
def history_callback(run: RunDir, t0: float):
    """A Lightning callback writing one row per validation epoch into ``history.csv`` (its rows are kept in
    checkpoints, so a resume continues the file; under DDP rank 0 writes it and hands its rows back). Made here so
    that importing this module does not import Lightning."""
    return _history_class()(run.path, t0)


_HISTORY: list[type] = []


def _history_class() -> type:
    """``HistoryCallback``, a module attribute (``spawn`` pickles the Trainer's callbacks) made on first use."""
    if _HISTORY:
        return _HISTORY[0]
    import pytorch_lightning as pl

    class HistoryCallback(pl.Callback):
        #: ``history.csv`` is written as a run directory writes it (uses ``self.path`` only)
        write_history = RunDir.write_history

        def __init__(self, path: Path, t0: float) -> None:
            self.path, self.t0 = Path(path), t0
            self.rows: list[dict[str, Any]] = []
            #: training seconds of the epochs a resumed run restored (its clock continues from there)
            self.seconds_before = 0.0
            self.world_size = 1
            self._seconds: Optional[float] = None  # the processes' time, handed back after a DDP fit

        @property
        def state_key(self) -> str:  # the key of the local class it used to be: older checkpoints keep their rows
            return "history_callback.<locals>._History"

        def elapsed(self) -> float:
            return self._seconds if self._seconds is not None else self.seconds_before + time.time() - self.t0

        def setup(self, trainer, module, stage: str) -> None:
            self.world_size = trainer.world_size

        def on_train_epoch_start(self, trainer, module) -> None:
            self._losses: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self._losses.append(float(loss.detach()))

        def on_validation_end(self, trainer, module) -> None:
            # (not on_validation_epoch_end: callbacks run before the module's hook that sets last_scores)
            if trainer.sanity_checking:
                return
            losses = getattr(self, "_losses", [])
            train_loss = sum(losses) / len(losses) if losses else math.nan
            if trainer.world_size > 1:  # the mean over every process's batches (each process calls this)
                train_loss = float(trainer.strategy.reduce(torch.tensor(train_loss, dtype=torch.float64,
                                                                        device=module.device), reduce_op="mean"))
            row = {"epoch": trainer.current_epoch + 1, "train_loss": train_loss, **module.last_scores,
                   "seconds": round(self.elapsed(), 2)}
            self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
            if trainer.is_global_zero:
                self.write_history(self.rows)

        def state_dict(self) -> dict[str, Any]:
            return {"rows": self.rows, "world_size": self.world_size}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.rows = list(state.get("rows", []))
            # the restored epochs' time; the part of an epoch that a kill cut short is not counted
            self.seconds_before = float(self.rows[-1]["seconds"]) if self.rows else 0.0

        def main_process_state(self) -> dict[str, Any]:
            return {"rows": self.rows, "seconds": self.elapsed()}

        def load_main_process_state(self, state: dict[str, Any]) -> None:
            self.rows, self._seconds = list(state["rows"]), float(state["seconds"])

    HistoryCallback.__module__, HistoryCallback.__qualname__ = __name__, "HistoryCallback"
    _HISTORY.append(HistoryCallback)
    return HistoryCallback


def __getattr__(name: str) -> Any:  # HistoryCallback, for pickle (spawn)
    if name == "HistoryCallback":
        return _history_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_resume_world(ckpt: Path, world_size: int) -> None:
    """Refuse to resume a retraining on another number of processes than wrote ``ckpt`` (its poly schedule counts
    steps of that many batches); checkpoints without the number were written by one process."""
    from nni_sparsemask.run.checkpoints import load_checkpoint
    from nni_sparsemask.run.distributed import checkpoint_world_size

    state = load_checkpoint(ckpt, map_location="cpu", weights_only=True).get("callbacks", {})
    written = checkpoint_world_size(state.get("history_callback.<locals>._History"))
    if written != world_size:
        raise ValueError(f"{ckpt} was written by a retraining on {written} process(es), this one runs {world_size}: "
                         f"resume it with --devices {written}")


def train_network(net: nn.Module, run: RunDir, train: TrainConfig, data: DataConfig, *, resume: bool = False,
                  progress: bool = True, accelerator: str = "auto", report_to_nni: bool = False,
                  devices: int = DEFAULT_DEVICES, dist_strategy: str = DEFAULT_DIST_STRATEGY
                  ) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """Train ``net`` with L_task (SGD, poly decay, decoder lr x ``train.decoder_lr_mult``; None: the paper's 10,
    :func:`~nni_sparsemask.run.steps.run_retrain` sets a decoder's own first); checkpoint every epoch into ``run``.

    With ``resume`` and a ``checkpoints/last.ckpt`` in ``run``, training continues from it; ``report_to_nni``
    sends every epoch's val mIoU to NNI (an ``nnictl`` trial) as intermediate results. ``devices`` /
    ``dist_strategy``: several processes (:mod:`.distributed`); rank 0 writes the files and its weights come back
    into ``net``. Returns the trained network, the history rows and the training seconds (a resumed run's include
    those of its restored epochs).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nni_sparsemask.run.checkpoints import AtomicCheckpointIO, check_checkpoint
    from nni_sparsemask.run.distributed import trainer_options
    from nni_sparsemask.run.lightning import SegmentationModule

    last = run.checkpoints / "last.ckpt"
    resume_from = check_checkpoint(last) if resume and last.is_file() else None  # a broken one: one line, now
    module = SegmentationModule(num_classes=data.num_classes, task=data.task, learning_rate=train.learning_rate,
                                decoder_lr_mult=PAPER_DECODER_LR_MULT if train.decoder_lr_mult is None
                                else train.decoder_lr_mult, weight_decay=train.weight_decay,
                                seed=train.seed)
    module.set_model(net)
    module.report_to_nni = report_to_nni
    train_loader, val_loader = make_loaders(data, progress=progress)
    t0 = time.time()
    history = history_callback(run, t0)
    ckpt = ModelCheckpoint(dirpath=run.checkpoints, filename="epoch{epoch}", save_last=True, save_top_k=0,
                           auto_insert_metric_name=False)
    trainer = pl.Trainer(max_epochs=train.epochs, accelerator=accelerator, logger=False,
                         callbacks=[history, ckpt], enable_progress_bar=progress, num_sanity_val_steps=0,
                         enable_model_summary=False, default_root_dir=str(run.path),
                         plugins=[AtomicCheckpointIO()],  # a kill never leaves a half last.ckpt
                         **trainer_options(devices, dist_strategy, accelerator))
    if resume_from is not None:
        _check_resume_world(resume_from, trainer.world_size)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
    return net, history.rows, history.elapsed()


# ------------------------------------------------------------------------------------------------ evaluation
def default_device() -> str:
    """Where networks are evaluated and timed when no device is given: CUDA when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def evaluate_network(net: nn.Module, data: DataConfig, *, fps_size: int = EvalConfig.fps_size,
                     fps_batch: int = EvalConfig.fps_batch, device: Optional[str] = None,
                     fps_seconds: float = EvalConfig.fps_seconds, progress: bool = True, edge_nms: bool = False
                     ) -> dict[str, Any]:
    """The task's scores on the evaluation split (:class:`.tasks.TaskMetrics`: mIoU, pixel accuracy, foreground IoU
    and per-class IoU for every task; Score for segmentation; max F-beta and MAE for saliency; ODS / OIS / AP at
    BSDS's 99 thresholds for edges), with ``task`` and ``main`` (the name of its main score); params (encoder + decoder);
    FPS at ``fps_size`` x ``fps_size`` (batch ``fps_batch``) on ``device``, of the deployment form (BN folded,
    channels_last: ``deploy.inference_form``); and, for the same input and form, what no machine changes
    (:mod:`.cost`): FLOPs, operator calls and bytes written per forward. ``edge_nms``: edge maps are thinned by
    non-maximum suppression before ODS / OIS / AP (HED's and RCF's protocol; ``edge_nms`` in the result)."""
    from tqdm.auto import tqdm

    from nni_sparsemask.measure.cost import inference_cost
    from nni_sparsemask.measure.metrics import count_parameters, format_params, measure_fps
    from nni_sparsemask.run.tasks import TaskMetrics, task_info

    device = device or default_device()
    net = net.to(device).eval()
    _, val_loader = make_loaders(data, train=False, progress=progress)
    metrics = TaskMetrics(data.task, data.num_classes, edge_nms=edge_nms)
    for batch in tqdm(val_loader, desc="evaluate", disable=not progress, leave=False):
        x, y, *rest = batch
        metrics.update(net(x.to(device)), y.to(device), boundaries=list(rest[0]) if rest else None)
    scores = metrics.compute()
    per_class = metrics.confusion.compute().as_dict(class_names(data))["iou"]
    params = count_parameters(net)
    fps = measure_fps(net, input_size=(fps_size, fps_size), batch_size=fps_batch, device=device,
                      min_run_time=fps_seconds, inference=True)
    cost = inference_cost(net, (fps_size, fps_size), batch_size=fps_batch, inference=True)
    return {"task": data.task, "main": task_info(data.task).main, **scores,
            "iou": per_class, "params_encoder": params.encoder, "params_decoder": params.decoder,
            "params_text": format_params(params), "fps": fps.fps, "fps_device": fps.device,
            "fps_input": [fps_size, fps_size], "fps_batch": fps_batch, "fps_threads": torch.get_num_threads(),
            "fps_form": fps.form, "flops": cost.flops, "ops": cost.ops, "bytes_written": cost.bytes_written,
            **({"edge_nms": True} if edge_nms else {})}


def save_weights(net: nn.Module, path: Union[str, Path]) -> None:
    """``torch.save(net.state_dict())`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)


def load_weights(net: nn.Module, path: Union[str, Path]) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished training (retrain it, or --resume)")
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the network described by the run's config.json / "
                         f"connectivity.json: {str(err).splitlines()[0]}") from None
    return net
