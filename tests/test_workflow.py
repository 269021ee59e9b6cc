"""search -> prune -> retrain -> evaluate on tiny DigitScenes (32x32, a 5-stage convnet 4-8 channels wide)."""
import csv
import json
import shutil

import pytest
import torch

from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.run.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
from nni_sparsemask.run.pipeline import (build_network, check_connectivity,
                                     evaluate_network, train_network)
from nni_sparsemask.run.rundir import RunDir
from nni_sparsemask.run.steps import load_run_network, run_evaluate, run_prune, run_retrain, run_search

WIDTHS = [4, 8, 8, 8, 8]
MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": WIDTHS}, backbone_weights=None,
                    decoder_channels=8)
DATA = DataConfig(image_size=32, train_scenes=32, val_scenes=8, batch_size=8)
TRAIN = TrainConfig(epochs=1, learning_rate=0.01)
QUIET = dict(progress=False, log=lambda s: None, accelerator="cpu")
SCHEDULE = SearchConfig(epochs=2, learning_rate=0.01, arc_optimizer="adam", arc_learning_rate=0.2)


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "sm"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the function-scoped isolated_cache is not set yet
        mp.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
        run_search(out, "sparsemask", {"lambda_sparse": 0.01}, DATA, MODEL, SCHEDULE, **QUIET)
    return out


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset="cityscapes"), "unknown dataset 'cityscapes'"),
    (dict(dataset="voc"), "needs its root"),
    (dict(image_size=0), "image_size"),
    (dict(task="depth"), "unknown task"),
])
def test_data_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_model_and_train_config_errors():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        ModelConfig(backbone="alexnet")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="decoder_lr_mult"):
        TrainConfig(decoder_lr_mult=0.0)


def test_voc_loaders_fail_with_the_expected_layout(tmp_path):
    from nni_sparsemask.run.pipeline import make_loaders
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        make_loaders(DataConfig(dataset="voc", root=str(tmp_path / "nowhere")))


def test_check_connectivity_refuses_another_backbone_but_takes_another_task():
    enc_info = build_network(MODEL, 11, decoder="fdn").encoder.feature_info
    conn = Connectivity.dense("convnet", enc_info, backbone_kwargs={"widths": WIDTHS}, meta={"num_classes": 11})
    check_connectivity(conn, MODEL, 11, "c.json")
    check_connectivity(conn, MODEL, 2, "c.json")  # searched on segmentation, retrained for saliency / edges
    other = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [8, 8, 8, 8, 8]}, backbone_weights=None)
    with pytest.raises(ValueError, match=r"made for backbone convnet .*sparsemask transfer c.json --backbone convnet "
                                         r"--backbone-kwargs '\{\"widths\": \[8, 8, 8, 8, 8\]\}' --out NEW.json"):
        check_connectivity(conn, other, 11, "c.json")
    with pytest.raises(ValueError, match="exactly one"):
        build_network(MODEL, 11)


# ------------------------------------------------------------------------------------------------ training
def test_train_network_checkpoints_every_epoch_and_resumes(tmp_path):
    torch.manual_seed(0)
    net = build_network(MODEL, 11, decoder="unet")
    run = RunDir(tmp_path / "r", {"x": 1})
    train_network(net, run, TrainConfig(epochs=1), DATA, progress=False, accelerator="cpu")
    assert (run.checkpoints / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(run.file("history.csv"))))
    assert [r["epoch"] for r in rows] == ["1"] and 0 <= float(rows[0]["val_miou"]) <= 1
    # resume to 2 epochs: one more row, the first kept
    run2 = RunDir(tmp_path / "r", {"x": 1}, resume=True)
    _, history, _ = train_network(build_network(MODEL, 11, decoder="unet"), run2, TrainConfig(epochs=2), DATA,
                                  resume=True, progress=False, accelerator="cpu")
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["val_miou"] == pytest.approx(float(rows[0]["val_miou"]))


def test_evaluate_network_reports_per_class_iou_params_and_fps():
    net = build_network(MODEL, 11, decoder="fcn")
    m = evaluate_network(net, DATA, fps_size=32, fps_seconds=0.05, progress=False, device="cpu")
    assert list(m["iou"]) == ["background"] + [f"digit {d}" for d in range(10)]
    assert 0 <= m["miou"] <= 1 and m["params_encoder"] > 0 and m["params_decoder"] > 0 and m["fps"] > 0
    assert m["fps_input"] == [32, 32] and m["fps_device"].startswith("cpu")
    assert m["fps_form"] == "BN folded, channels_last"  # the deployment form is what is timed
    # counted on the same input and form as the FPS
    from nni_sparsemask.measure.cost import inference_cost
    cost = inference_cost(net, 32, inference=True)
    assert (m["flops"], m["ops"], m["bytes_written"]) == (cost.flops, cost.ops, cost.bytes_written)
    assert cost.flops > 0 and cost.ops > 0 and cost.bytes_written > 0


# ------------------------------------------------------------------------------------------------ search / prune
def test_search_writes_full_and_pruned_connectivity(search_dir):
    for name in ("config.json", "connectivity.json", "connectivity_full.json", "search.json", "w_heatmap.png"):
        assert (search_dir / name).is_file(), name
    full = Connectivity.from_json(search_dir / "connectivity_full.json")
    conn = Connectivity.from_json(search_dir / "connectivity.json")
    assert full.num_edges == 30 and len(full.history) == 2  # |T_l| = 12 - 2l for 5 stages: 10+8+6+4+2
    assert conn.meta["method"] == "sparsemask" and conn.meta["num_classes"] == 11
    assert all(e.weight >= 1e-3 for e in conn.edges)
    summary = json.loads((search_dir / "search.json").read_text())
    assert summary["edges"] == conn.num_edges


def test_search_is_reproducible_whatever_the_global_rng_state(search_dir, tmp_path):
    """The decoder's initial weights are seeded from the strategy's seed: a rerun finds the same w, epoch by epoch."""
    import random

    import numpy as np
    import torch

    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    run_search(tmp_path / "again", "sparsemask", {"lambda_sparse": 0.01}, DATA, MODEL, SCHEDULE,
               **QUIET)
    first = json.loads((search_dir / "connectivity_full.json").read_text())
    again = json.loads((tmp_path / "again" / "connectivity_full.json").read_text())
    assert again["history"] == first["history"] and again["edges"] == first["edges"]


def test_prune_rethresholds_without_training(search_dir, tmp_path):
    full = Connectivity.from_json(search_dir / "connectivity_full.json")
    sigma = sorted(e.weight for e in full.edges)[len(full.edges) // 2]  # keep about half
    s = run_prune(search_dir, tmp_path / "p", sigma, log=lambda s: None)
    conn = Connectivity.from_json(tmp_path / "p" / "connectivity.json")
    assert all(e.weight >= sigma for e in conn.edges) and s["edges"] == conn.num_edges
    assert conn.meta["params"]["threshold"] == sigma
    with pytest.raises(FileExistsError):
        run_prune(search_dir, tmp_path / "p", sigma, log=lambda s: None)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        run_prune(search_dir, tmp_path / "q", 1.5)
    with pytest.raises(FileNotFoundError, match="connectivity_full.json"):
        run_prune(tmp_path, tmp_path / "q", 0.1)


def test_sampler_search_writes_every_sample(tmp_path):
    s = run_search(tmp_path / "rand", "random", {"samples": 3, "seed": 1}, DATA, MODEL, **QUIET)
    files = sorted((tmp_path / "rand" / "samples").glob("sample-*.json"))
    assert len(files) == 3 and s["samples"] == 3
    assert Connectivity.from_json(files[0]).to_dict() == \
        Connectivity.from_json(tmp_path / "rand" / "connectivity.json").to_dict()


def test_search_rejects_arguments_of_other_strategies(tmp_path):
    with pytest.raises(ValueError, match="'k'"):
        run_search(tmp_path / "x", "sparsemask", {"k": 3}, DATA, MODEL, **QUIET)
    with pytest.raises(ValueError, match="unknown strategy 'darts'"):
        run_search(tmp_path / "x", "darts", {}, DATA, MODEL, **QUIET)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ retrain / evaluate
def test_retrain_searched_then_evaluate_again(search_dir, tmp_path):
    out = tmp_path / "final"
    m = run_retrain(out, DATA, MODEL, TRAIN, connectivity=search_dir / "connectivity.json", fps_size=32, **QUIET)
    assert m["method"] == "sparsemask" and m["edges"] == Connectivity.from_json(search_dir / "connectivity.json").num_edges
    written = json.loads((out / "metrics.json").read_text())
    assert written["miou"] == pytest.approx(m["miou"]) and "binarization_gap" in written
    # the analysis reads it like any run
    from nni_sparsemask.analysis import load_results
    df = load_results(out)
    assert df.loc[0, "family"] == "SparseMask" and df.loc[0, "miou"] == pytest.approx(m["miou"])
    # evaluate rebuilds the same network from the run dir and gets the same mIoU
    e = run_evaluate(out, fps_size=32, device="cpu", progress=False)
    assert e["miou"] == pytest.approx(m["miou"], abs=1e-6)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_evaluate(out, fps_size=32, device="cpu", progress=False)
    # a finished run is reused, never retrained, on --resume
    before = (out / "model.pt").stat().st_mtime_ns
    again = run_retrain(out, DATA, MODEL, TRAIN, connectivity=search_dir / "connectivity.json", fps_size=32,
                        resume=True, **QUIET)
    assert again["miou"] == m["miou"] and (out / "model.pt").stat().st_mtime_ns == before
    # moved, with its connectivity copied elsewhere: the same decoder, so still reused (the path is not compared)
    moved, copy = tmp_path / "moved", tmp_path / "copy.json"
    shutil.copytree(out, moved)
    shutil.copy(search_dir / "connectivity.json", copy)
    assert run_retrain(moved, DATA, MODEL, TRAIN, connectivity=copy, fps_size=32, resume=True, **QUIET)["miou"] == \
        m["miou"]
    config = json.loads((moved / "config.json").read_text())  # as an earlier version wrote it: the path only
    del config["connectivity_edges"]
    (moved / "config.json").write_text(json.dumps(config))
    assert run_retrain(moved, DATA, MODEL, TRAIN, connectivity=copy, fps_size=32, resume=True, **QUIET)["miou"] == \
        m["miou"]  # the edges it built are read from its own connectivity.json
    other = Connectivity.from_json(copy)
    other.edges = other.edges[:-1] if len(other.edges) > 1 else [type(other.edges[0])("D1", "E1")]
    other.to_json(copy, overwrite=True)
    with pytest.raises(ValueError, match="differs in connectivity_edges\\)"):  # another decoder is refused
        run_retrain(moved, DATA, MODEL, TRAIN, connectivity=copy, fps_size=32, resume=True, **QUIET)


def test_retrain_hand_designed_decoder_and_bad_inputs(search_dir, tmp_path):
    m = run_retrain(tmp_path / "fcn", DATA, MODEL, TRAIN, decoder="fcn", fps_size=32, **QUIET)
    assert m["method"] == "fcn" and m["edges"] == 1
    net, data, _ = load_run_network(tmp_path / "fcn")
    assert data == DATA and sum(p.numel() for p in net.parameters()) == m["params_encoder"] + m["params_decoder"]
    with pytest.raises(ValueError, match="unknown decoder 'segnet'"):
        run_retrain(tmp_path / "bad", DATA, MODEL, TRAIN, decoder="segnet", **QUIET)
    with pytest.raises(ValueError, match="exactly one"):
        run_retrain(tmp_path / "bad", DATA, MODEL, TRAIN, **QUIET)
    wider = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [8, 8, 8, 8, 8]}, backbone_weights=None,
                        decoder_channels=MODEL.decoder_channels)
    with pytest.raises(ValueError, match="sparsemask transfer"):
        run_retrain(tmp_path / "bad", DATA, wider, TRAIN, connectivity=search_dir / "connectivity.json", **QUIET)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        run_retrain(tmp_path / "fcn", DATA, MODEL, TRAIN, decoder="fcn", **QUIET)
    with pytest.raises(ValueError, match="another configuration"):
        run_retrain(tmp_path / "fcn", DATA, MODEL, TrainConfig(epochs=3), decoder="fcn", resume=True, **QUIET)


class _Killed(Exception):
    pass


def test_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Killed at the start of epoch 3 and resumed from epoch 2's checkpoint, training ends with the same weights
    and history as a run that was never stopped (each epoch is reseeded from (seed, epoch)); its clock continues."""
    from nni_sparsemask.run.lightning import SegmentationModule

    train = TrainConfig(epochs=3, learning_rate=0.01, seed=5)

    def run(path, resume=False):
        torch.manual_seed(0)  # the same initial network for both runs
        net = build_network(MODEL, 11, decoder="unet")
        return train_network(net, RunDir(path, {"x": 1}, resume=resume), train, DATA, resume=resume,
                             progress=False, accelerator="cpu")

    whole, whole_rows, _ = run(tmp_path / "whole")
    torch.manual_seed(123)  # a different global RNG state before the interrupted run must not matter either
    original = SegmentationModule.on_train_epoch_start

    def kill_in_epoch_3(self):
        if self.trainer.current_epoch == 2:
            raise _Killed()
        original(self)

    monkeypatch.setattr(SegmentationModule, "on_train_epoch_start", kill_in_epoch_3)
    with pytest.raises(_Killed):
        run(tmp_path / "cut")
    monkeypatch.setattr(SegmentationModule, "on_train_epoch_start", original)
    before = [r["seconds"] for r in csv.DictReader(open(tmp_path / "cut" / "history.csv"))]
    resumed, rows, seconds = run(tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [r["val_miou"] for r in rows] == [r["val_miou"] for r in whole_rows]
    assert [str(r["seconds"]) for r in rows[:2]] == before  # the restored epochs keep their times
    assert rows[2]["seconds"] > rows[1]["seconds"] and seconds >= rows[2]["seconds"]
