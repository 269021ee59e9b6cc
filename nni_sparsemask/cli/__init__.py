"""The ``sparsemask`` command: ``pretrain | search | prune | retrain | evaluate | demo | report | convert | profile |
export``.

Argument parsing only; the work is in :mod:`.workflow` (search, prune, retrain, evaluate), :mod:`.demo` and
:mod:`.pretrain`. Every command writes a run directory (``--out``) that is never overwritten without
``--overwrite``; ``search``, ``retrain`` and ``demo`` continue an interrupted run with ``--resume``. Bad input ends
with one line ``sparsemask CMD: error: ...`` and exit status 2, before anything is written; Ctrl-C with one line
``sparsemask CMD: interrupted`` (naming ``--resume`` where the command has it) and exit status 130.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from nni_sparsemask.cli.connectivity import add_convert_command, add_transfer_command
from nni_sparsemask.cli.deploy import add_export_command, add_profile_command
from nni_sparsemask.cli.options import (add_arc, add_cost, add_data, add_dist, add_fps, add_model, add_run,
                                        add_schedule, arc_settings, backbone_kwargs, configs, cost_settings,
                                        data_config, dist_settings, model_config, new_command)

# Every default is read from the typed configs (nni_sparsemask.run.config, .pretrain, .demo), the one place
# defaults live; --help prints them (ArgumentDefaultsHelpFormatter) and a test compares the two.

def _pretrain(args) -> int:
    from nni_sparsemask.run.config import PretrainConfig
    from nni_sparsemask.run.pretrain import cached_weights_path, pretrain_backbone

    cfg = PretrainConfig(backbone=args.backbone, backbone_kwargs=backbone_kwargs(args), image_size=args.image_size,
                         num_scenes=args.scenes, epochs=args.epochs, lr=args.lr, seed=args.seed)
    out = args.out or cached_weights_path(cfg)
    result = pretrain_backbone(cfg, out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"[pretrain] {cfg.backbone}: digit val accuracy {result.val_accuracy:.3f} after {cfg.epochs} epochs "
          f"({result.train_seconds:.0f} s); weights {result.weights}")
    return 0


def _search(args) -> int:
    from nni_sparsemask.run.steps import run_search

    strategy_args = {"lambda_sparse": args.lambda_sparse, "threshold": args.threshold, "k": args.k,
                     "samples": args.samples, "density": args.density, "seed": args.seed}
    schedule = configs().SearchConfig(epochs=args.epochs, learning_rate=args.lr, **arc_settings(args),
                                       **cost_settings(args))
    summary = run_search(args.out, args.strategy, strategy_args, data_config(args), model_config(args), schedule,
                         overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                         **dist_settings(args))
    edges = summary.get("edges")
    from nni_sparsemask.nas.binarization import describe_binarization
    gap = describe_binarization(summary.get("binarization"))
    print(f"[search] {args.strategy}: kept edges {edges}; binarisation {gap}; {args.out}/connectivity.json")
    return 0


def _prune(args) -> int:
    from nni_sparsemask.run.steps import run_prune

    run_prune(args.search_dir, args.out, args.threshold, overwrite=args.overwrite)
    return 0


def _print_metrics(title: str, m: dict) -> None:
    from nni_sparsemask.measure.deploy import AS_GIVEN
    from nni_sparsemask.run.steps import format_iou

    from nni_sparsemask.run.tasks import task_info
    info = task_info(m.get("task", "segmentation"))  # runs of earlier releases: segmentation
    named = {"miou": "mIoU", "pixel_accuracy": "PixAcc", "fg_iou": "fg IoU", "score": "Score", "max_fbeta": "maxF",
             "mae": "MAE", "ods": "ODS", "ois": "OIS", "ap": "AP"}
    shown = [k for k in info.scores if k != "fg_iou" and m.get(k) is not None]
    print(f"{title}: {', '.join(f'{named[k]} {m[k]:.3f}' for k in shown)}, params {m['params_text']}, "
          f"{m['fps']:.1f} FPS ({m['fps_device']}, {m['fps_input'][0]}px, batch {m['fps_batch']}, "
          f"{m.get('fps_form', AS_GIVEN)})")
    if m.get("flops") is not None:  # runs evaluated before the counts existed have none
        print(f"  per forward at that size: {m['flops'] / 1e9:.3f} GFLOP, {m['ops']} operator calls, "
              f"{m['bytes_written'] / 2**20:.1f} MB written")
    print(f"  per-class IoU: {format_iou(m['iou'])}")


def _retrain(args) -> int:
    from nni_sparsemask.run.steps import run_retrain

    train = configs().TrainConfig(epochs=args.epochs, learning_rate=args.lr, decoder_lr_mult=args.decoder_lr_mult,
                                  seed=args.seed)
    m = run_retrain(args.out, data_config(args), model_config(args), train, connectivity=args.connectivity,
                    decoder=args.decoder, head_channels=args.head_channels, fps_size=args.fps_size,
                    fps_batch=args.fps_batch, overwrite=args.overwrite, resume=args.resume,
                    progress=not args.no_progress, **dist_settings(args))
    _print_metrics(f"[retrain] {m['method']}", m)
    return 0


def _evaluate(args) -> int:
    from nni_sparsemask.run.steps import run_evaluate

    m = run_evaluate(args.run, fps_size=args.fps_size, fps_batch=args.fps_batch, device=args.device,
                     overwrite=args.overwrite, progress=not args.no_progress, task=args.task,
                     dataset=args.dataset, data_root=args.data_root, edge_nms=args.edge_nms)
    _print_metrics(f"[evaluate] {args.run}", m)
    return 0


def _demo(args) -> int:
    from nni_sparsemask.run.demo import DemoConfig, run_demo

    cfg = DemoConfig(search_epochs=args.search_epochs, retrain_epochs=args.retrain_epochs,
                     train_scenes=args.train_scenes, image_size=args.image_size, lambda_sparse=args.lambda_sparse,
                     **arc_settings(args, DemoConfig), **cost_settings(args), decoder_channels=args.decoder_channels, threshold=args.threshold,
                     seed=args.seed, baselines=tuple(args.baselines),
                     pretrain_scenes=args.pretrain_scenes, pretrain_epochs=args.pretrain_epochs,
                     fps_size=args.fps_size)
    run_demo(args.out, cfg, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
             split_cpu=args.split_cpu)
    return 0


def _report(args) -> int:
    from nni_sparsemask.analysis import write_report

    path = write_report(args.source, args.out, overwrite=args.overwrite, task=args.task, paired_fps=args.paired_fps)
    print(f"report written: {path}")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _strategy_param(strategy: str, arg: str) -> Any:
    from nni_sparsemask.run.registry import STRATEGIES
    return STRATEGIES.get(strategy).params[arg]


def _strategy_default(strategy: str, arg: str) -> Any:
    return _strategy_param(strategy, arg).default


_command = new_command


def _add_pretrain_command(sub: Any) -> None:
    pre = configs().PretrainConfig
    p = _command(sub, "pretrain", "pre-train a backbone as a DigitScenes digit classifier (cached)")
    add_model(p)
    p.add_argument("--image-size", type=int, default=pre.image_size, help="side of the one-digit scenes")
    p.add_argument("--scenes", type=int, default=pre.num_scenes, help="one-digit training scenes")
    p.add_argument("--epochs", type=int, default=pre.epochs, help="pre-training epochs")
    p.add_argument("--lr", type=float, default=pre.lr, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=pre.seed, help="seeds weights, scenes and batch order")
    p.add_argument("--out", default=None, help="weights file (None: the cache that 'pretrained' reads)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pretrain)


def _add_search_command(sub: Any) -> None:
    c = configs()
    p = _command(sub, "search", "search a decoder: sparsemask, l1, maskconnect, random or rand_rule")
    p.add_argument("--strategy", default="sparsemask", help="sparsemask, l1, maskconnect, random or rand_rule")
    p.add_argument("--lambda-sparse", "--lambda", dest="lambda_sparse", type=float, default=None,
                   help="sparsemask / l1: loss strength (None: the strategy's own, "
                        f"{_strategy_default('sparsemask', 'lambda_sparse')} / {_strategy_default('l1', 'lambda_sparse')})")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"sparsemask / l1: sigma (None: {_strategy_default('sparsemask', 'threshold')})")
    k = _strategy_param("maskconnect", "k")
    p.add_argument("--k", type=int, default=None, help=f"maskconnect: inputs per stage ({k.low}..{k.high}; None: "
                   f"{k.default})")
    p.add_argument("--samples", type=int, default=None,
                   help=f"random / rand_rule: decoders sampled (None: {_strategy_default('random', 'samples')})")
    p.add_argument("--density", type=float, default=None,
                   help=f"random / rand_rule: edge probability (None: {_strategy_default('random', 'density')})")
    add_schedule(p, c.SearchConfig)
    add_arc(p, c.SearchConfig)
    add_cost(p, c.SearchConfig)
    add_data(p)
    add_model(p)
    add_run(p)
    add_dist(p, search=True)
    p.set_defaults(func=_search)


def _add_prune_command(sub: Any) -> None:
    p = _command(sub, "prune", "re-threshold a finished search at another sigma (no training)")
    p.add_argument("search_dir")
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_prune)


def _add_retrain_command(sub: Any) -> None:
    p = _command(sub, "retrain", "train a searched (--connectivity) or hand-designed (--decoder) decoder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--connectivity", help="connectivity.json of a search or prune run")
    which.add_argument("--decoder", help="fcn, unet, sparseacn, deeplabv3, fdn, or a segmentation_models_pytorch "
                       "peer: smp-unet, smp-fpn, smp-deeplabv3plus, smp-pan, smp-linknet (pip install .[peers])")
    p.add_argument("--head-channels", type=int, default=None,
                   help="width of a decoder with a head of its own (deeplabv3's ASPP, an smp peer's decoder "
                        "channels); default: its published width (deeplabv3, smp-unet/fpn/deeplabv3plus 256, "
                        "smp-pan/linknet 32); the FDN space's width is C_dec, not this one")
    add_schedule(p, configs().TrainConfig, "encoder learning rate (the decoder's: times its multiplier, below)")
    p.add_argument("--decoder-lr-mult", type=float, help="decoder learning rate / encoder learning rate; default: "
                   "the decoder's own, the paper's 10, and 1 for smp-unet/fpn/pan (they did not learn at 10)")
    add_data(p)
    add_model(p)
    add_fps(p)
    add_run(p)
    add_dist(p)
    p.set_defaults(func=_retrain)


def _add_evaluate_command(sub: Any) -> None:
    p = _command(sub, "evaluate", "evaluate a finished retrain run again (mIoU, params, FPS)")
    p.add_argument("run")
    add_fps(p)
    p.add_argument("--device", default=None, help="cpu or cuda (None: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing evaluate.json")
    p.add_argument("--dataset", default=None,
                   help="score it on another data set of its task (e.g. trained on duts, scored on ecssd): "
                        "evaluate-<dataset>.json")
    p.add_argument("--data-root", default=None, help="that data set's folder")
    p.add_argument("--task", default=None, help="the task to score (refused unless it is the run's own)")
    p.add_argument("--edge-nms", action="store_true",
                   help="edge runs: non-maximum suppression before ODS / OIS / AP, as HED's and RCF's evaluation "
                        "(BSDS's own benchmark does not): evaluate[-<dataset>]-nms.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)


def _add_demo_command(sub: Any) -> None:
    import dataclasses
    from types import SimpleNamespace

    from nni_sparsemask.run.demo import DemoConfig

    d = SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(DemoConfig)})  # no validation: no torch
    p = _command(sub, "demo", "pretrain -> search -> prune -> retrain -> evaluate on DigitScenes, vs dense FDN")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--search-epochs", type=int, default=d.search_epochs, help="search epochs")
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs, help="retraining epochs of every network")
    p.add_argument("--train-scenes", type=int, default=d.train_scenes, help="DigitScenes training scenes")
    p.add_argument("--image-size", type=int, default=d.image_size, help="DigitScenes side")
    p.add_argument("--lambda-sparse", type=float, default=d.lambda_sparse, help="lambda of SparseMask's loss")
    add_arc(p, d)
    add_cost(p, d, size=False)
    p.add_argument("--decoder-channels", type=int, default=d.decoder_channels, help="C_dec of every network")
    p.add_argument("--threshold", type=float, default=d.threshold, help="sigma: keep edges with w >= sigma")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds data, weights and every epoch")
    p.add_argument("--baselines", nargs="*", default=list(d.baselines),
                   help="hand-designed decoders retrained beside the dense FDN")
    p.add_argument("--pretrain-scenes", type=int, default=d.pretrain_scenes,
                   help="backbone pre-training scenes (cached)")
    p.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs,
                   help="backbone pre-training epochs (cached)")
    p.add_argument("--fps-size", type=int, default=d.fps_size, help="FPS input side")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out (the baselines may "
                   "change: the networks it lacks are trained, the finished ones kept)")
    p.add_argument("--split-cpu", action="store_true",
                   help="on a CPU, retrain the dense FDN and the baselines in a second process beside the search, "
                   "half the threads each (its output goes to OUT/retrain.log); 5-13%% less time on 2 cores; the "
                   "trained networks differ slightly from a one-process run's (other thread counts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _add_report_command(sub: Any) -> None:
    p = _command(sub, "report", "Table 1, Fig. 4, Fig. 5 from run directories or an NNI experiment id")
    p.add_argument("source", help="a folder of run directories, or an NNI experiment id")
    p.add_argument("--out", required=True, help="report folder (report.md, results.csv, figures)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--task", default=None,
                   help="report only the runs of this task (segmentation, saliency, edges); runs of several tasks "
                        "are refused without it")
    p.add_argument("--paired-fps", default=None,
                   help="FPS ratios timed side by side (`sparsemask retime ROOT` writes ROOT/fps_paired.json, read "
                        "without this flag when SOURCE is that ROOT): Table 1's ratio column and Fig. 4's speed axis")
    p.set_defaults(func=_report)


#: the subcommands in the order ``--help`` lists them (``compare`` is added by the comparison layer)
_COMMANDS = (_add_pretrain_command, _add_search_command, _add_prune_command, _add_retrain_command,
             _add_evaluate_command, _add_demo_command, _add_report_command, add_convert_command, add_transfer_command,
             add_profile_command, add_export_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsemask", description="SparseMask connectivity search on NNI")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    from nni_sparsemask.comparison.compare import register_cli
    from nni_sparsemask.comparison.retime import register_cli as register_retime
    register_cli(sub)
    register_retime(sub)
    return parser


#: set by the SIGINT handler a command runs under (:func:`_noting_interrupts`): Lightning turns Ctrl-C into
#: ``sys.exit(1)`` (pytorch_lightning.trainer.call), which NNI's sequential engine and strategy then log as a failed
#: model and a failed strategy (nni.nas.execution.sequential, nni.nas.strategy.base) before re-raising it
_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[None]:
    def handler(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, no note
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)


def _interrupted(args) -> int:
    hint = "; continue with --resume" if getattr(args, "resume", None) is not None else ""
    print(f"sparsemask {args.command}: interrupted{hint}", file=sys.stderr)
    return 130


class _DropNoise:
    """Logging filter for NNI messages that repeat on every in-process experiment and say nothing to act on, and
    for the failures NNI reports when the "failure" was Ctrl-C."""

    NOISE = ("`training_service` will be ignored", "Checkpoint callback is found to be None")
    INTERRUPT_NOISE = ("fails to be executed", "Strategy failed to execute")

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if _INTERRUPTED.is_set() and any(n in msg for n in self.INTERRUPT_NOISE):
            return False
        return not any(n in msg for n in self.NOISE)


def _quiet_nni() -> None:
    import logging
    import warnings
    # NNI 3.0 warns once per unknown torch class on every import; torch.utils.benchmark logs "No CUDA runtime"
    warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module", category=RuntimeWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nni  # noqa: F401  (after the filter above; sets up NNI's log handlers, which the filter below joins)
    for handler in logging.getLogger("nni").handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("search", "retrain", "evaluate", "demo", "export"):
        _quiet_nni()
    with _noting_interrupts():
        try:
            from nni_sparsemask import malloc

            malloc.tune()  # the command is the program: it picks the allocator (see nni_sparsemask.malloc)
            return args.func(args)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            if _INTERRUPTED.is_set():
                return _interrupted(args)
            print(f"sparsemask {args.command}: error: {err}", file=sys.stderr)
            return 2
        except BaseException:  # KeyboardInterrupt, or what Lightning / NNI made of it
            if _INTERRUPTED.is_set():
                return _interrupted(args)
            raise


if __name__ == "__main__":
    sys.exit(main())
