"""One source for every default: what ``sparsemask CMD --help`` prints equals the typed configs, and the trial
settings, the Lightning module, the steps and the registry take theirs from the same dataclasses."""
import dataclasses
import inspect
import re

import pytest

from nni_sparsemask.cli import build_parser
from nni_sparsemask.comparison.trial import TrialSettings
from nni_sparsemask.nas.config import SparseMaskConfig
from nni_sparsemask.run.config import (DataConfig, EvalConfig, ModelConfig, PretrainConfig, SearchConfig,
                                       TrainConfig, default_backbone_kwargs)
from nni_sparsemask.run.demo import DemoConfig


def help_defaults(command: str) -> dict[str, str]:
    """``{"--option": "printed default"}`` parsed from ``sparsemask COMMAND --help`` (argparse wraps lines)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = " ".join(sub.format_help().split())
    found = {}
    for m in re.finditer(r"(--[a-z-]+)(?: [A-Z_]+)? (?:(?!--[a-z]).)*?\(default: ([^)]*)\)", text):
        found.setdefault(m.group(1), m.group(2))
    return found


DATA = {"--dataset": "dataset", "--image-size": "image_size", "--train-scenes": "train_scenes",
        "--val-scenes": "val_scenes", "--batch-size": "batch_size", "--task": "task"}
MODEL = {"--backbone": "backbone", "--backbone-weights": "backbone_weights", "--decoder-channels": "decoder_channels"}


def check_defaults(printed: dict[str, str], cfg, mapping: dict[str, str]) -> None:
    for option, name in mapping.items():
        assert option in printed, f"{option} prints no default"
        assert printed[option] == str(getattr(cfg, name)), (option, printed[option], getattr(cfg, name))


@pytest.mark.parametrize("command", ["search", "retrain"])
def test_data_and_model_options_print_the_config_defaults(command):
    printed = help_defaults(command)
    check_defaults(printed, DataConfig(), DATA)
    check_defaults(printed, ModelConfig(), MODEL)


def test_schedules_print_their_own_config():
    arc = {"--arc-optimizer": "arc_optimizer", "--arc-noise": "arc_noise", "--arc-weight-decay": "arc_weight_decay",
           "--freeze-bn": "freeze_bn", "--cost": "cost", "--target-fps": "target_fps", "--budget": "budget",
           "--cost-weight": "cost_weight", "--cost-size": "cost_size", "--cost-table": "cost_table",
           "--arc-warmup-epochs": "arc_warmup_epochs"}
    check_defaults(help_defaults("search"), SearchConfig(), {"--epochs": "epochs", "--lr": "learning_rate", **arc})
    check_defaults(help_defaults("retrain"), TrainConfig(), {"--epochs": "epochs", "--lr": "learning_rate", "--seed": "seed"})
    check_defaults(help_defaults("retrain"), EvalConfig(), {"--fps-size": "fps_size", "--fps-batch": "fps_batch"})
    check_defaults(help_defaults("evaluate"), EvalConfig(), {"--fps-size": "fps_size", "--fps-batch": "fps_batch"})


def test_pretrain_and_demo_print_their_configs():
    check_defaults(help_defaults("pretrain"), PretrainConfig(), {"--image-size": "image_size", "--scenes": "num_scenes",
                                                        "--epochs": "epochs", "--lr": "lr", "--seed": "seed"})
    demo = {f.name: f.name for f in dataclasses.fields(DemoConfig) if f.name not in ("baselines", "learning_rate",
                                                                                       "val_scenes")}
    mapping = {"--" + name.replace("_", "-"): name for name in demo}
    mapping.pop("--arc-learning-rate")  # --arc-lr None: the optimizer's default (test_arc_lr_defaults)
    check_defaults(help_defaults("demo"), DemoConfig(), mapping)


@pytest.mark.parametrize("command,cfg", [("search", SearchConfig()), ("demo", DemoConfig())])
@pytest.mark.parametrize("optimizer", ["shared", "adam", "sgd"])
def test_arc_lr_defaults(command, cfg, optimizer):
    """An unset --arc-lr is the config's own value for the config's optimizer, else that optimizer's default."""
    from nni_sparsemask.cli.options import arc_settings
    from nni_sparsemask.run.config import DEFAULT_ARC_LR

    args = build_parser().parse_args([command, "--out", "x", "--arc-optimizer", optimizer])
    expected = cfg.arc_learning_rate if optimizer == cfg.arc_optimizer else DEFAULT_ARC_LR[optimizer]
    assert arc_settings(args, cfg)["arc_learning_rate"] == expected
    assert arc_settings(build_parser().parse_args([command, "--out", "x", "--arc-optimizer", optimizer,
                                                    "--arc-lr", "0.3"]), cfg)["arc_learning_rate"] == 0.3


def test_search_help_names_the_strategies_defaults():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["search"].format_help().split())
    assert f"sigma (None: {SparseMaskConfig.threshold})" in text
    assert f"{SparseMaskConfig.lambda_sparse} /" in text


def test_trial_settings_take_the_run_configs_defaults():
    s = TrialSettings()
    assert s.search_config() == SearchConfig()
    assert (s.retrain_epochs, s.retrain_lr) == (TrainConfig.epochs, TrainConfig.learning_rate)
    assert (s.fps_size, s.fps_batch, s.fps_seconds) == (EvalConfig.fps_size, EvalConfig.fps_batch,
                                                        EvalConfig.fps_seconds)
    assert s.data == DataConfig() and s.model == ModelConfig()


def test_python_api_defaults_are_the_configs():
    from nni_sparsemask.run.lightning import Segmentation, SegmentationModule, SegmentationTrainConfig
    from nni_sparsemask.run.pipeline import evaluate_network
    from nni_sparsemask.run.registry import STRATEGIES
    from nni_sparsemask.run.steps import run_evaluate, run_retrain, run_search

    train = TrainConfig()
    seg = SegmentationTrainConfig()
    assert (seg.learning_rate, seg.weight_decay, seg.seed) == (train.learning_rate, train.weight_decay, train.seed)
    from nni_sparsemask.run.config import PAPER_DECODER_LR_MULT
    from nni_sparsemask.run.registry import DECODERS
    # a retraining takes its decoder's multiplier (None); the module's default is the paper's, as the FDN's
    assert train.decoder_lr_mult is None
    assert seg.decoder_lr_mult == PAPER_DECODER_LR_MULT == DECODERS["fdn"].decoder_lr_mult
    for fn in (SegmentationModule, Segmentation):  # traced classes: their signature is the constructor's
        params = inspect.signature(fn).parameters
        for name in ("learning_rate", "decoder_lr_mult", "momentum", "weight_decay", "poly_power", "seed"):
            assert params[name].default == getattr(seg, name), (fn.__name__, name)
    search = inspect.signature(run_search).parameters
    assert search["schedule"].default is None  # None: SearchConfig()
    for fn in (run_retrain, run_evaluate, evaluate_network):
        params = inspect.signature(fn).parameters
        assert (params["fps_size"].default, params["fps_batch"].default) == (EvalConfig.fps_size,
                                                                            EvalConfig.fps_batch), fn.__name__
    sm = STRATEGIES.get("sparsemask").params
    assert (sm["lambda_sparse"].default, sm["threshold"].default) == (SparseMaskConfig.lambda_sparse,
                                                                       SparseMaskConfig.threshold)


def test_convnet_widths_are_written_once():
    widths = default_backbone_kwargs("convnet")
    assert ModelConfig().backbone_kwargs == widths == PretrainConfig().backbone_kwargs
    widths["widths"].append(1)  # a copy: callers cannot change the default
    assert default_backbone_kwargs("convnet") != widths
    assert default_backbone_kwargs("mobilenet_v2") == {}


def test_sparsemask_constructor_defaults_are_its_config():
    from nni_sparsemask.nas.strategy import SparseMask

    params = inspect.signature(SparseMask.__init__).parameters
    for f in dataclasses.fields(SparseMaskConfig):
        assert params[f.name].default == getattr(SparseMaskConfig(), f.name), f.name
