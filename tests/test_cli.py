import json

import pytest

from nni_sparsemask.cli import build_parser, main

TINY_MODEL = ["--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}', "--backbone-weights",
              "none", "--decoder-channels", "8"]
TINY_DATA = ["--image-size", "32", "--train-scenes", "32", "--val-scenes", "8", "--batch-size", "8"]


pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_every_command_has_help():
    parser = build_parser()
    for cmd in ("pretrain", "search", "prune", "retrain", "evaluate", "demo", "report"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0


def _err(capsys) -> str:
    err = capsys.readouterr().err
    return err


@pytest.mark.parametrize("argv,message", [
    (["search", "--strategy", "sparsemask", "--k", "3"], "does not accept 'k' (it belongs to maskconnect)"),
    (["search", "--strategy", "enas"], "unknown strategy 'enas'"),
    (["search", "--dataset", "coco"], "unknown dataset 'coco'"),
    (["search", "--epochs", "0"], "epochs must be an integer >= 1"),
    (["search", "--dataset", "voc"], "needs its root (--data-root)"),
    (["retrain", "--decoder", "segnet"], "unknown decoder 'segnet'"),
    (["retrain", "--decoder", "fcn", "--epochs", "0"], "epochs must be an integer >= 1"),
    (["retrain", "--connectivity", "missing.json"], "missing.json"),
    (["demo", "--retrain-epochs", "0"], "demo retrain-epochs must be an integer >= 1"),
    (["demo", "--baselines", "nope"], "unknown decoder 'nope'"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out)]) == 2
    err = _err(capsys)
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_backbone_kwargs_json_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--out", "x", "--backbone-kwargs", "{not json"])
    assert "not valid JSON" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["retrain", "--decoder", "fcn", "--out", str(out)] + TINY_MODEL + TINY_DATA) == 2
    assert "--overwrite" in _err(capsys)
    assert (out / "keep.txt").read_text() == "x"
    assert main(["demo", "--out", str(out)]) == 2
    assert (out / "keep.txt").read_text() == "x"


def test_search_prune_retrain_evaluate_from_the_command_line(tmp_path, capsys):
    s, p, r = tmp_path / "s", tmp_path / "p", tmp_path / "r"
    assert main(["search", "--out", str(s), "--epochs", "1", "--no-progress"] + TINY_MODEL + TINY_DATA) == 0
    assert (s / "connectivity.json").is_file()
    assert main(["prune", str(s), "--threshold", "0.4", "--out", str(p)]) == 0
    assert main(["retrain", "--connectivity", str(p / "connectivity.json"), "--out", str(r), "--epochs", "1",
                 "--fps-size", "32", "--no-progress"] + TINY_MODEL + TINY_DATA) == 0
    out = capsys.readouterr().out
    assert "[retrain] sparsemask: mIoU" in out and "per-class IoU: background:" in out
    assert json.loads((r / "metrics.json").read_text())["params"]["threshold"] == 0.4
    assert main(["evaluate", str(r), "--fps-size", "32", "--device", "cpu", "--no-progress"]) == 0
    assert (r / "evaluate.json").is_file()
    assert "GFLOP" in capsys.readouterr().out  # the machine-independent counts are printed
    assert main(["evaluate", str(s)]) == 2  # a search dir is not a retrain run
    assert "evaluate takes a retrain run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end_on_tiny_settings(tmp_path, capsys):
    import torch

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--search-epochs", "1", "--retrain-epochs", "1", "--train-scenes", "32",
            "--image-size", "32", "--fps-size", "32", "--decoder-channels", "8", "--arc-lr", "0.05", "--no-progress"]
    # a tiny pre-training keeps the test short (the real demo pretrains 6000 scenes x 12 epochs once, cached)
    argv += ["--pretrain-scenes", "64", "--pretrain-epochs", "1"]
    assert main(argv) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["SparseMask (searched)", "FDN (dense)", "FCN"]
    for sub in ("search", "sparsemask", "fdn", "fcn"):
        assert (out / sub / "config.json").is_file()
    assert (out / "w_heatmap.png").is_file() and (out / "table.md").is_file()
    assert "per-class IoU" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decoder_channels"] == 8 and cfg["arc_learning_rate"] == 0.05
    assert json.loads((out / "fdn" / "config.json").read_text())["model"]["decoder_channels"] == 8
    assert "BN folded, channels_last" in summary["note"]  # FPS of the deployment form
    assert len(summary["fps_passes"]) == 5 and summary["fps_passes"][0].keys() == {"sparsemask", "fdn", "fcn"}
    for r in summary["rows"]:
        lo, hi = r["fps_ratio_range"]
        assert lo <= r["fps_ratio"] <= hi
    assert "retrain fdn" in summary["seconds"] and not (out / "retrain.log").exists()  # one process by default
    # --resume of a finished demo reuses every step
    assert main(argv + ["--resume"]) == 0
    assert json.loads((out / "demo.json").read_text())["rows"][0]["miou"] == summary["rows"][0]["miou"]
    # the baselines alone may change on resume: the missing network is trained, the finished ones are kept
    assert main(argv + ["--resume", "--baselines", "fcn", "unet", "--split-cpu"]) == 0
    if torch.get_num_threads() >= 2:  # the CPU was split: U-Net retrained in a second process beside the search
        assert "retrain unet (second process)" in json.loads((out / "demo.json").read_text())["seconds"]
        assert "[retrain] unet" in (out / "retrain.log").read_text()
        assert "another process trained" in json.loads((out / "unet" / "metrics.json").read_text())["fps_note"]
    rows = json.loads((out / "demo.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["SparseMask (searched)", "FDN (dense)", "FCN", "unet"]
    assert [r["miou"] for r in rows[:3]] == [r["miou"] for r in summary["rows"]]
    assert json.loads((out / "config.json").read_text())["baselines"] == ["fcn", "unet"]
    assert main(argv + ["--resume", "--seed", "1"]) == 2  # anything else that differs is still refused
    assert "differs in seed" in capsys.readouterr().err


def test_convert_imports_the_official_mask(tmp_path, capsys):
    from pathlib import Path

    from nni_sparsemask.fdn.connectivity import Connectivity

    mask = Path(__file__).parent / "data" / "mask_thres_0.001.npy"
    out = tmp_path / "paper.json"
    assert main(["convert", str(mask), "--out", str(out)]) == 0
    assert "D1 <- E1, E6, E7, E8, E9, D6, D7, D8, G" in capsys.readouterr().out
    assert Connectivity.from_json(out).num_edges == 15
    before = out.read_bytes()
    assert main(["convert", str(mask), "--out", str(out)]) == 2  # never overwritten silently
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
