"""Bad input never leaves a run directory behind (the corrected command must not be refused with "already
exists"); Ctrl-C says how to continue; errors are one line that fits the command."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nni_sparsemask.cli import main

TINY_MODEL = ["--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}', "--backbone-weights",
              "none", "--decoder-channels", "8"]
TINY_DATA = ["--image-size", "32", "--train-scenes", "32", "--val-scenes", "8", "--batch-size", "8"]
FAST = ["--epochs", "1", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("isolated_cache")


def assert_refused(argv, out: Path, capsys, message: str) -> str:
    """``argv`` ends with exit status 2, one error line holding ``message``, and nothing written at ``out``."""
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"sparsemask {argv[0]}: error:" in err and message in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return err


# ------------------------------------------------------------------------------------------------ item 6
@pytest.mark.parametrize("command", [["retrain", "--decoder", "fcn"], ["search"]])
def test_an_image_size_digitscenes_cannot_draw_is_refused_before_the_run_directory(tmp_path, capsys, command):
    err = assert_refused(command + TINY_MODEL + TINY_DATA + FAST + ["--image-size", "7"], tmp_path / "run", capsys,
                   "image_size must be >= 23")
    assert err.count("\n") == 1


def test_the_smallest_digitscenes_size_is_accepted(tmp_path):
    from nni_sparsemask.run.config import DataConfig, PretrainConfig
    assert DataConfig(image_size=23).image_size == 23
    with pytest.raises(ValueError, match="image_size must be >= 23"):
        DataConfig(image_size=22)
    with pytest.raises(ValueError, match="image_size must be >= 23"):
        PretrainConfig(image_size=16)
    assert DataConfig(dataset="voc", root="anywhere", image_size=8).image_size == 8  # a VOC crop is no scene


def test_an_image_a_batch_of_one_cannot_train_on_is_refused(tmp_path, capsys):
    # batch norm in training needs more than one value per channel: the deepest stage (stride 32) must be > 1x1
    argv = ["retrain", "--decoder", "fcn"] + TINY_MODEL + TINY_DATA + FAST + ["--batch-size", "1"]
    assert_refused(argv, tmp_path / "run", capsys, "image_size must be > 32 with batch size 1")


@pytest.mark.parametrize("command,flag", [(["retrain", "--decoder", "fcn"], "--lr"), (["search"], "--lr"),
                                         (["search"], "--arc-lr")])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_learning_rate_that_is_not_finite_is_refused(tmp_path, capsys, command, flag, value):
    err = assert_refused(command + TINY_MODEL + TINY_DATA + FAST + [flag, value], tmp_path / "run", capsys,
                   "learning_rate must be a finite number > 0")
    assert err.count("\n") == 1


def test_pretrain_refuses_an_infinite_learning_rate(tmp_path, capsys):
    out = tmp_path / "w.pt"
    argv = ["pretrain", "--out", str(out), "--lr", "inf", "--scenes", "64", "--epochs", "1", "--no-progress",
            "--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}']
    assert main(argv) == 2
    assert "lr must be a finite number > 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", [["retrain", "--decoder", "fcn"], ["search"]])
def test_a_missing_weights_file_is_refused_before_the_run_directory(tmp_path, capsys, command):
    missing = tmp_path / "nowhere" / "encoder.pt"
    model = TINY_MODEL[:4] + ["--backbone-weights", str(missing), "--decoder-channels", "8"]
    assert_refused(command + model + TINY_DATA + FAST, tmp_path / "run", capsys, f"not found: {missing}")


@pytest.mark.parametrize("command", [["retrain", "--decoder", "fcn"], ["search"]])
def test_an_empty_voc_root_is_refused_before_the_run_directory(tmp_path, capsys, command):
    empty = tmp_path / "voc"
    empty.mkdir()
    assert_refused(command + TINY_MODEL + FAST + ["--dataset", "voc", "--data-root", str(empty)], tmp_path / "run",
             capsys, f"no VOCdevkit/VOC2012 directory found at {empty}")


def test_deeplab_on_a_backbone_it_does_not_support_is_refused_before_the_run_directory(tmp_path, capsys):
    assert_refused(["retrain", "--decoder", "deeplabv3"] + TINY_MODEL + TINY_DATA + FAST, tmp_path / "run", capsys,
             "DeepLabV3 supports backbone(s) mobilenet_v2")


@pytest.mark.parametrize("flags,message", [(["--fps-size", "0"], "fps_size must be an integer >= 1"),
                                           (["--fps-batch", "0"], "fps_batch must be an integer >= 1")])
def test_retrain_checks_the_fps_settings_before_training(tmp_path, capsys, flags, message):
    assert_refused(["retrain", "--decoder", "fcn"] + TINY_MODEL + TINY_DATA + FAST + flags, tmp_path / "run", capsys,
             message)


def test_the_corrected_command_runs_where_the_refused_one_was_given(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["retrain", "--decoder", "fcn"] + TINY_MODEL + TINY_DATA + FAST + ["--fps-size", "32", "--out", str(out)]
    assert main(argv + ["--lr", "inf"]) == 2
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("k,message", [("9", "'k' of strategy 'maskconnect' must be in [2, 5], got 9"),
                                       ("1", "must be in [2, 5], got 1")])
def test_maskconnect_k_has_the_range_its_help_gives(tmp_path, capsys, k, message):
    assert_refused(["search", "--strategy", "maskconnect", "--k", k] + TINY_MODEL + TINY_DATA + FAST, tmp_path / "run",
             capsys, message)


def test_maskconnect_k_that_keeps_every_input_of_the_space_is_refused(tmp_path, capsys):
    # a 2-stage convnet: D1 reads from 4 candidates (E1, E2, D2, G), D2 from 2: k = 4 keeps every edge
    model = ["--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8]}', "--backbone-weights", "none",
             "--decoder-channels", "8"]
    assert_refused(["search", "--strategy", "maskconnect", "--k", "4"] + model + TINY_DATA + FAST, tmp_path / "run",
             capsys, "k=4 keeps every input of every stage")


def test_maskconnect_k_help_matches_the_registry():
    from nni_sparsemask.run.registry import STRATEGIES
    k = STRATEGIES.get("maskconnect").params["k"]
    assert (k.low, k.high) == (2, 5)


# ------------------------------------------------------------------------------------------------ item 7
def test_evaluate_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    run = tmp_path / "run"
    argv = ["retrain", "--decoder", "fcn"] + TINY_MODEL + TINY_DATA + FAST + ["--fps-size", "32", "--out", str(run)]
    assert main(argv) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cuda", "--fps-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "sparsemask evaluate: error: no CUDA device here; use --device cpu\n", err
    assert not (run / "evaluate.json").exists()
    assert main(["evaluate", str(run), "--device", "tpu", "--no-progress"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--fps-size", "0", "--no-progress"]) == 2
    assert "fps_size must be an integer >= 1" in capsys.readouterr().err


def test_prune_refusal_does_not_suggest_resume(tmp_path, capsys):
    search = tmp_path / "search"
    assert main(["search"] + TINY_MODEL + TINY_DATA + FAST + ["--out", str(search)]) == 0
    out = tmp_path / "pruned"
    assert main(["prune", str(search), "--threshold", "0.4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["prune", str(search), "--threshold", "0.3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite to replace it" in err and "--resume" not in err, err
    # commands that have --resume still name it
    assert main(["search"] + TINY_MODEL + TINY_DATA + FAST + ["--out", str(search)]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err


def test_unknown_strategy_names_the_known_strategies_in_plain_english(tmp_path, capsys):
    assert_refused(["search", "--strategy", "enas"], tmp_path / "run", capsys, "known strategies: l1, maskconnect")
    assert "strategys" not in capsys.readouterr().err


def test_the_word_strategys_appears_nowhere():
    found = []
    for folder in ("nni_sparsemask", "baselines", "analysis", "docs", "experiments", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yml", ".json") and path.name != "test_reliability.py" \
                    and "strategys" in path.read_text(errors="replace"):
                found.append(str(path))
    assert not found


def _wait_for_line(proc, needle: str, timeout: float) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed in {timeout} s: {''.join(lines)}")


@pytest.mark.slow
def test_ctrl_c_during_a_search_says_how_to_continue(tmp_path):
    out = tmp_path / "search"
    argv = ["search", "--out", str(out), "--epochs", "50", "--no-progress"] + TINY_MODEL + \
        ["--image-size", "32", "--train-scenes", "256", "--val-scenes", "8", "--batch-size", "8"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nni_sparsemask.cli"] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = _wait_for_line(proc, "[search] sparsemask", 300)
        time.sleep(8)  # into Lightning's fit
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "sparsemask search: interrupted; continue with --resume" in output
    for noise in ("fails to be executed", "Strategy failed", "Traceback"):
        assert noise not in output, output
    assert (out / "config.json").is_file() and not (out / "search.json").exists()


def test_an_interrupt_is_exit_130_and_names_resume_only_where_the_command_has_it(tmp_path, capsys, monkeypatch):
    import nni_sparsemask.run.steps as steps

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: Lightning turns it into sys.exit(1)
        time.sleep(5)
        raise AssertionError("SIGINT was not delivered")

    monkeypatch.setattr(steps, "run_retrain", interrupted)
    monkeypatch.setattr(steps, "run_prune", interrupted)
    before = signal.getsignal(signal.SIGINT)
    assert main(["retrain", "--decoder", "fcn", "--out", str(tmp_path / "r")] + TINY_MODEL + TINY_DATA) == 130
    assert capsys.readouterr().err == "sparsemask retrain: interrupted; continue with --resume\n"
    assert main(["prune", str(tmp_path), "--threshold", "0.4", "--out", str(tmp_path / "p")]) == 130
    assert capsys.readouterr().err == "sparsemask prune: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_lightning_turning_ctrl_c_into_exit_1_is_still_an_interrupt(tmp_path, capsys, monkeypatch):
    import nni_sparsemask.run.steps as steps

    def lightning_like(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # as pytorch_lightning.trainer.call does
            sys.exit(1)

    monkeypatch.setattr(steps, "run_search", lightning_like)
    before = signal.getsignal(signal.SIGINT)
    assert main(["search", "--out", str(tmp_path / "s")] + TINY_MODEL + TINY_DATA) == 130
    assert capsys.readouterr().err == "sparsemask search: interrupted; continue with --resume\n"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("argv", [["--image-size", "7"], ["--arc-lr", "inf"]])
def test_demo_checks_its_settings_before_writing(tmp_path, argv, capsys):
    from nni_sparsemask.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()
