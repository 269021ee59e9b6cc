"""The flag groups the ``sparsemask`` commands share (data, model, run directory, schedule, w training, cost) and
their conversion into the run layer's typed configs; every default is read from :mod:`nni_sparsemask.run.config`
(or the demo's :class:`~nni_sparsemask.run.demo.DemoConfig`)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Optional

__all__ = ["configs", "Help", "add_data", "add_model", "add_run", "add_schedule", "add_arc", "add_cost", "add_fps",
           "add_dist", "arc_settings", "cost_settings", "dist_settings", "data_config", "model_config",
           "backbone_kwargs"]


def configs():
    from nni_sparsemask.run import config
    return config


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Prints each option's default, as read from the configs."""


def new_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A ``sparsemask NAME`` subcommand whose ``--help`` prints every option's default."""
    return sub.add_parser(name, help=help, formatter_class=Help)


# ------------------------------------------------------------------------------------------------ arguments
def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width_mult\": 0.5}}', got {text!r}")
    return value


def add_data(p: argparse.ArgumentParser) -> None:
    d = configs().DataConfig
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="digitscenes (built in), or one read from its root folder: voc, ade20k, msrab, duts, ecssd, bsds500")
    g.add_argument("--data-root", default=d.root,
                   help="the data set's folder as its archive extracts (VOC: the one holding VOCdevkit/VOC2012)")
    g.add_argument("--sbd-root", default=d.sbd_root, help="VOC: SBD benchmark_RELEASE folder, for train_aug")
    g.add_argument("--task", default=d.task,
                   help="segmentation, saliency or edges: the loss and the scores (DigitScenes has all three views)")
    g.add_argument("--image-size", type=int, default=d.image_size, help="DigitScenes side / training crop")
    g.add_argument("--train-scenes", type=int, default=d.train_scenes, help="DigitScenes training scenes")
    g.add_argument("--val-scenes", type=int, default=d.val_scenes, help="DigitScenes val scenes")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size (evaluation: 4x)")


def add_model(p: argparse.ArgumentParser) -> None:
    c = configs()
    m = c.ModelConfig
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=m.backbone, help="encoder: convnet, mobilenet_v2, resnet18, ...")
    g.add_argument("--backbone-kwargs", type=json_object, default=None,
                   help="JSON constructor arguments of the backbone (None: "
                        f"{json.dumps(c.DEFAULT_BACKBONE_KWARGS)} by backbone, others none)")
    g.add_argument("--backbone-weights", default=m.backbone_weights,
                   help="'pretrained' (cached DigitScenes classifier, see `sparsemask pretrain`), a state_dict "
                        "file, a torchvision weights name, or 'none'")
    g.add_argument("--decoder-channels", type=int, default=m.decoder_channels, help="C_dec of the decoder stages")


def add_run(p: argparse.ArgumentParser, resume: bool = True) -> None:
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_schedule(p: argparse.ArgumentParser, schedule: Any, lr_help: str = "encoder learning rate (decoder x10)"
                 ) -> None:
    """``--epochs``, ``--lr`` and ``--seed`` with the defaults of ``schedule`` (SearchConfig or TrainConfig)."""
    p.add_argument("--epochs", type=int, default=schedule.epochs, help="passes over the training set")
    p.add_argument("--lr", type=float, default=schedule.learning_rate, help=lr_help)
    p.add_argument("--seed", type=int, default=configs().TrainConfig.seed,
                   help="seeds the data, the initial weights and every epoch")


def add_arc(p: argparse.ArgumentParser, defaults: Any) -> None:
    """How the search trains w: ``--arc-optimizer``, ``--arc-lr``, ``--arc-noise``, ``--arc-weight-decay``,
    ``--freeze-bn``, with the defaults of ``defaults`` (SearchConfig or DemoConfig)."""
    c = configs()
    p.add_argument("--arc-optimizer", choices=sorted(c.DEFAULT_ARC_LR), default=defaults.arc_optimizer,
                   help="shared: w is a parameter group of the network's SGD (momentum, poly schedule, the decoder's "
                        "lr; the official recipe); adam / sgd: an optimizer of w's own")
    p.add_argument("--arc-lr", type=float, default=None,
                   help="learning rate of w (None: " + ", ".join(f"{k} {'the decoder lr' if v is None else v}"
                                                                 for k, v in c.DEFAULT_ARC_LR.items())
                        + (f"; here {defaults.arc_learning_rate}" if defaults.arc_learning_rate is not None
                           and defaults.arc_learning_rate != c.DEFAULT_ARC_LR.get(defaults.arc_optimizer) else "")
                        + ")")
    p.add_argument("--arc-noise", type=float, default=defaults.arc_noise,
                   help="std of the noise on w in training forwards (0: off)")
    p.add_argument("--arc-weight-decay", type=float, default=defaults.arc_weight_decay, help="weight decay on w")
    p.add_argument("--freeze-bn", action="store_true", default=defaults.freeze_bn,
                   help="nearly freeze BatchNorm during the search (the official code)")
    p.add_argument("--arc-warmup-epochs", type=int, default=defaults.arc_warmup_epochs,
                   help="first epochs train only the network's weights, w held at its start (0: none, the official "
                        "code)")


def add_cost(p: argparse.ArgumentParser, defaults: Any, size: bool = True) -> None:
    """The cost-aware search: ``--cost``, ``--target-fps``, ``--budget``, ``--speedup``, ``--cost-weight`` (and
    ``--cost-size``, ``--cost-table`` when ``size``)."""
    c = configs()
    p.add_argument("--cost", choices=c.COSTS, default=defaults.cost,
                   help="cost-aware search: latency (timed here), bytes or flops (counted); None: the paper's loss")
    p.add_argument("--target-fps", type=float, default=defaults.target_fps,
                   help="latency cost only: the whole network's target FPS (at the cost size)")
    p.add_argument("--budget", type=float, default=defaults.budget,
                   help="decoder cost budget as a fraction of the dense decoder's (instead of a target FPS)")
    p.add_argument("--speedup", type=float, default=defaults.speedup,
                   help="whole-network target as a multiple of the dense FDN's predicted speed, e.g. 2.2 (instead "
                        "of a target FPS or a budget)")
    p.add_argument("--cost-weight", type=float, default=defaults.cost_weight,
                   help="mu of the cost term mu * max(0, E[cost] / budget - 1)")
    if size:
        p.add_argument("--cost-size", type=int, default=defaults.cost_size, help="input side the costs are taken at")
        p.add_argument("--cost-table", default=defaults.cost_table,
                       help="a cost table file (sparsemask profile) instead of profiling")


def cost_settings(args) -> dict[str, Any]:
    out = {"cost": args.cost, "target_fps": args.target_fps, "budget": args.budget, "speedup": args.speedup,
           "cost_weight": args.cost_weight}
    if hasattr(args, "cost_size"):
        out.update(cost_size=args.cost_size, cost_table=args.cost_table)
    return out


def arc_settings(args, defaults: Any = None) -> dict[str, Any]:
    """The w settings of the parsed ``_add_arc`` flags; an unset ``--arc-lr`` is ``defaults``' value when the
    optimizer is ``defaults``' own, else that optimizer's default."""
    lr = args.arc_lr
    if lr is None:
        same = defaults is not None and defaults.arc_optimizer == args.arc_optimizer
        lr = defaults.arc_learning_rate if same else configs().DEFAULT_ARC_LR[args.arc_optimizer]
    return {"arc_optimizer": args.arc_optimizer, "arc_learning_rate": lr, "arc_noise": args.arc_noise,
            "arc_weight_decay": args.arc_weight_decay, "freeze_bn": args.freeze_bn,
            "arc_warmup_epochs": args.arc_warmup_epochs}


def add_dist(p: argparse.ArgumentParser, search: bool = False) -> None:
    """``--devices`` and ``--dist-strategy``: the training on several processes (Lightning's DDP)."""
    from nni_sparsemask.run import distributed as d
    g = p.add_argument_group("processes")
    g.add_argument("--devices", type=int, default=d.DEFAULT_DEVICES,
                   help="processes (CPU) or GPUs that train together (Lightning DDP); each takes --batch-size images "
                        "per step, so a step sees devices x batch-size")
    g.add_argument("--dist-strategy", choices=d.DIST_STRATEGIES, default=d.DEFAULT_DIST_STRATEGY,
                   help=("Lightning's strategy for --devices (not the search --strategy): " if search else
                         "Lightning's strategy for --devices: ")
                   + "auto = one process for 1 device, else ddp; ddp / ddp_fork: the processes are forked when "
                     "training starts (CPU: gloo); ddp_spawn: started afresh (CUDA already used before training)")


def dist_settings(args) -> dict[str, Any]:
    return {"devices": args.devices, "dist_strategy": args.dist_strategy}


def add_fps(p: argparse.ArgumentParser, default: Optional[int] = None) -> None:
    e = configs().EvalConfig
    p.add_argument("--fps-size", type=int, default=default or e.fps_size, help="FPS input side")
    p.add_argument("--fps-batch", type=int, default=e.fps_batch, help="FPS batch size")


def data_config(args):
    return configs().DataConfig(dataset=args.dataset, root=args.data_root, sbd_root=args.sbd_root,
                                 image_size=args.image_size, train_scenes=args.train_scenes,
                                 val_scenes=args.val_scenes, batch_size=args.batch_size, task=args.task,
                                 seed=getattr(args, "seed", 0) or 0)


def backbone_kwargs(args) -> dict[str, Any]:
    return args.backbone_kwargs if args.backbone_kwargs is not None else \
        configs().default_backbone_kwargs(args.backbone)


def model_config(args):
    weights = None if str(args.backbone_weights).lower() == "none" else args.backbone_weights
    return configs().ModelConfig(backbone=args.backbone, backbone_kwargs=backbone_kwargs(args),
                                  backbone_weights=weights, decoder_channels=args.decoder_channels)


# ------------------------------------------------------------------------------------------------ commands
