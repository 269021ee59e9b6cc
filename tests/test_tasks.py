"""The three tasks end to end: their losses (formulas), scores (against the metric classes), the Lightning module's
reports, the data configs and loaders of every data set, and the refusals."""
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import write_real_fixtures
from nni_sparsemask.data.datasets import DATASETS as REGISTRY
from nni_sparsemask.measure.edges import EdgeMetrics
from nni_sparsemask.measure.saliency import SaliencyMetrics
from nni_sparsemask.run.config import DATASETS, DataConfig, ModelConfig
from nni_sparsemask.run.lightning import DigitScenesLoader, Segmentation, SegmentationTrainConfig
from nni_sparsemask.run.pipeline import build_network, evaluate_network, make_loaders
from nni_sparsemask.run.steps import evaluation_data
from nni_sparsemask.run.tasks import (TASKS, TaskMetrics, balanced_bce, foreground_probability, task_info,
                                      task_loss)

TINY_MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]}, backbone_weights=None,
                         decoder_channels=8)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_real_fixtures(tmp_path_factory.mktemp("real"))


# ------------------------------------------------------------------------------------------------ losses
def test_balanced_bce_is_heds_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 6, generator=g)
    target = (torch.rand(2, 5, 6, generator=g) > 0.8).long()
    target[0, 0, :3] = 255
    z = logits[:, 1] - logits[:, 0]
    valid = target != 255
    pos, neg = (target == 1) & valid, (target == 0) & valid
    n = valid.sum().item()
    beta = neg.sum().item() / n
    expected = -(beta * F.logsigmoid(z[pos]).sum() + (1 - beta) * F.logsigmoid(-z[neg]).sum()) / n
    assert torch.allclose(balanced_bce(logits, target), expected, atol=1e-6)
    assert torch.allclose(task_loss("edges", logits, target), expected, atol=1e-6)
    # the rare class weighs more: one edge pixel mispredicted costs more than one background pixel
    assert 0.5 < beta < 1


def test_balanced_bce_with_nothing_scored_is_zero_with_a_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = balanced_bce(logits, torch.full((1, 3, 3), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_saliency_loss_is_two_class_cross_entropy_and_probability_is_softmax():
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4))
    assert torch.allclose(task_loss("saliency", logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(foreground_probability(logits), logits.softmax(1)[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"two-class task needs logits \(N, 2, H, W\)"):
        foreground_probability(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        task_loss("depth", logits, target)


# ------------------------------------------------------------------------------------------------ scores
def test_saliency_scores_are_the_metric_classes_and_sums_pool():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 2, 8, 8, generator=g)
    target = (torch.rand(6, 8, 8, generator=g) > 0.6).long()
    whole = TaskMetrics("saliency", 2)
    whole.update(logits, target)
    ref = SaliencyMetrics()
    ref.update(logits.softmax(1)[:, 1], target == 1)
    scores = whole.compute()
    assert list(scores)[0] == "max_fbeta" == task_info("saliency").main
    assert scores["max_fbeta"] == pytest.approx(ref.compute().max_fbeta, abs=1e-6)
    assert scores["mae"] == pytest.approx(ref.compute().mae, abs=1e-6)
    a, b = TaskMetrics("saliency", 2), TaskMetrics("saliency", 2)
    a.update(logits[:2], target[:2])
    b.update(logits[2:], target[2:])
    pooled = TaskMetrics("saliency", 2).add_sums(a.sums()).add_sums(b.sums()).compute()
    assert pooled == pytest.approx(scores)


def test_edge_scores_match_edge_metrics_and_annotators_are_cropped():
    g = torch.Generator().manual_seed(2)
    target = torch.zeros(3, 10, 12, dtype=torch.long)
    target[:, 4] = 1
    logits = torch.randn(3, 2, 10, 12, generator=g)
    logits[:, 1, 4] += 3
    tm = TaskMetrics("edges", 2, edge_thresholds=9)
    tm.update(logits, target)
    ref = EdgeMetrics(num_thresholds=9)
    ref.update(logits.softmax(1)[:, 1], target == 1)
    assert tm.compute()["ods"] == pytest.approx(ref.compute().ods, abs=1e-6)
    assert list(tm.compute())[:3] == ["ods", "ois", "ap"]
    # annotator maps at the image's own size (8 x 12), the prediction padded to 10 x 12: cropped to 8 x 12
    boundaries = [torch.stack([target[i, :8] == 1, target[i, :8] == 1]).to(torch.uint8) for i in range(3)]
    cropped = TaskMetrics("edges", 2, edge_thresholds=9)
    cropped.update(logits, target, boundaries=boundaries)
    ref2 = EdgeMetrics(num_thresholds=9)
    ref2.update(logits.softmax(1)[:, 1, :8], [b for b in boundaries])
    assert cropped.compute()["ods"] == pytest.approx(ref2.compute().ods, abs=1e-6)
    halves = TaskMetrics("edges", 2, edge_thresholds=9)
    part = TaskMetrics("edges", 2, edge_thresholds=9)
    part.update(logits[:1], target[:1])
    halves.update(logits[1:], target[1:])
    assert halves.add_sums(part.sums()).compute() == pytest.approx(tm.compute())


def test_edge_nms_thins_before_matching_and_only_edge_tasks_take_it():
    g = torch.Generator().manual_seed(3)
    target = torch.zeros(2, 24, 24, dtype=torch.long)
    target[:, 12] = 1
    logits = torch.randn(2, 2, 24, 24, generator=g) * 0.1
    logits[:, 1, 10:15] += 3  # a thick response around the one-pixel edge: NMS keeps its ridge
    nms = TaskMetrics("edges", 2, edge_thresholds=9, edge_nms=True)
    nms.update(logits, target)
    ref = EdgeMetrics(num_thresholds=9, nms=True)
    ref.update(logits.softmax(1)[:, 1], target == 1)
    plain = TaskMetrics("edges", 2, edge_thresholds=9)
    plain.update(logits, target)
    assert nms.compute()["ods"] == pytest.approx(ref.compute().ods, abs=1e-6)
    assert nms.compute()["ods"] != pytest.approx(plain.compute()["ods"], abs=1e-3)
    with pytest.raises(ValueError, match="edge NMS applies to edge maps; this is a saliency network"):
        TaskMetrics("saliency", 2, edge_nms=True)


def test_segmentation_scores_add_ade20k_score():
    logits = torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    s = TaskMetrics("segmentation", 4)
    s.update(logits, target)
    out = s.compute()
    assert out["score"] == pytest.approx((out["miou"] + out["pixel_accuracy"]) / 2)
    with pytest.raises(ValueError, match="task edges takes two-class networks"):
        TaskMetrics("edges", 11)


# ------------------------------------------------------------------------------------------------ training
class _TwoClassNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


@pytest.mark.parametrize("task,main", [("saliency", "max_fbeta"), ("edges", "ods")])
def test_evaluator_trains_and_reports_the_tasks_main_score(tmp_path, monkeypatch, task, main):
    import nni
    inter, final = [], []
    monkeypatch.setattr(nni, "report_intermediate_result", inter.append)
    monkeypatch.setattr(nni, "report_final_result", final.append)
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "t0")
    data = dict(task=task, image_size=32, cache_dir=str(tmp_path / "cache"))
    ev = Segmentation(num_classes=2, task=task, edge_thresholds=5, learning_rate=0.01,
                      train_dataloaders=DigitScenesLoader(batch_size=4, shuffle=True, split="train", num_scenes=8,
                                                          **data),
                      val_dataloaders=DigitScenesLoader(batch_size=4, split="val", num_scenes=4, **data),
                      max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    ev.evaluate(_TwoClassNet())
    assert len(inter) == 1 and len(final) == 1
    report = final[0]
    assert report["default"] == report[main] and 0 <= report["default"] <= 1
    assert set(task_info(task).scores) <= set(report)


def test_train_config_refuses_a_two_class_task_with_more_classes():
    with pytest.raises(ValueError, match="task saliency takes two classes"):
        SegmentationTrainConfig(num_classes=11, task="saliency")
    with pytest.raises(ValueError, match="unknown task"):
        SegmentationTrainConfig(num_classes=2, task="depth")


# ------------------------------------------------------------------------------------------------ data
def test_data_config_knows_every_registered_data_set_and_refuses_mismatches(tmp_path):
    assert set(DATASETS) == set(REGISTRY)
    assert set(TASKS) == {"segmentation", "saliency", "edges"}
    with pytest.raises(ValueError, match="dataset 'ade20k' supports task segmentation only, not task 'edges'"):
        DataConfig(dataset="ade20k", root=str(tmp_path), task="edges")
    with pytest.raises(ValueError, match="dataset 'bsds500' needs its root folder"):
        DataConfig(dataset="bsds500", task="edges")
    with pytest.raises(ValueError, match="sbd_root .* is for dataset 'voc' only"):
        DataConfig(dataset="duts", root=str(tmp_path), task="saliency", sbd_root=str(tmp_path))
    assert DataConfig(dataset="bsds500", root=str(tmp_path), task="edges").num_classes == 2
    assert DataConfig(dataset="ade20k", root=str(tmp_path)).num_classes == 150


def test_loaders_read_each_data_set_in_its_layout(roots):
    for name, task in (("ade20k", "segmentation"), ("msrab", "saliency"), ("duts", "saliency"),
                       ("bsds500", "edges")):
        data = DataConfig(dataset=name, root=str(roots[name]), task=task, image_size=32, batch_size=2)
        train, val = make_loaders(data)
        x, y = next(iter(train))
        assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32)
        batch = next(iter(val))
        assert batch[0].shape[0] == 1
        if name == "bsds500":  # every annotator's map, at the image's size
            assert len(batch) == 3 and batch[2].dim() == 4 and batch[2].shape[1] >= 3
        values = set(torch.unique(y).tolist())
        assert values <= (set(range(150)) | {255} if name == "ade20k" else {0, 1, 255})


def test_an_evaluation_only_set_has_no_training_loader(roots):
    data = DataConfig(dataset="ecssd", root=str(roots["ecssd"]), task="saliency", image_size=32)
    assert make_loaders(data, train=False)[0] is None
    with pytest.raises(ValueError, match="'ecssd' is for evaluation only .* --dataset ecssd"):
        make_loaders(data)


def test_a_root_laid_out_otherwise_is_one_error(roots):
    data = DataConfig(dataset="duts", root=str(roots["msrab"]), task="saliency", image_size=32)
    with pytest.raises(FileNotFoundError, match="DUTS"):
        make_loaders(data)


def test_evaluate_network_scores_bsds_against_every_annotator(roots):
    data = DataConfig(dataset="bsds500", root=str(roots["bsds500"]), task="edges", image_size=32)
    torch.manual_seed(0)
    net = build_network(TINY_MODEL, 2, decoder="fcn")
    m = evaluate_network(net, data, fps_size=32, fps_seconds=0.05, device="cpu", progress=False)
    assert m["task"] == "edges" and m["main"] == "ods"
    for key in ("ods", "ois", "ap", "miou"):
        assert 0 <= m[key] <= 1 and not math.isnan(m[key])
    thinned = evaluate_network(net, data, fps_size=32, fps_seconds=0.05, device="cpu", progress=False, edge_nms=True)
    assert thinned["edge_nms"] is True and "edge_nms" not in m and 0 <= thinned["ods"] <= 1


def test_evaluation_data_refuses_another_task_and_moves_to_another_set(tmp_path):
    trained = DataConfig(dataset="duts", root=str(tmp_path / "duts"), task="saliency")
    where = Path("runs/x")
    with pytest.raises(ValueError, match="trained for task 'saliency', not 'edges'.*--task saliency"):
        evaluation_data(trained, where, task="edges")
    assert evaluation_data(trained, where) is trained
    other = evaluation_data(trained, where, dataset="ecssd", root=str(tmp_path / "ecssd"))
    assert other == replace(trained, dataset="ecssd", root=str(tmp_path / "ecssd"))
    with pytest.raises(ValueError, match="'ade20k' supports task segmentation only"):
        evaluation_data(trained, where, dataset="ade20k", root=str(tmp_path))


# ------------------------------------------------------------------------------------------------ transfer command
def test_transfer_command_prints_matched_and_dropped_stages(tmp_path, capsys):
    import json

    from nni_sparsemask.cli import main
    from nni_sparsemask.fdn.backbones import build_backbone
    from nni_sparsemask.fdn.connectivity import Connectivity, Edge

    info = build_backbone("convnet", widths=[4, 8, 8, 8, 8]).feature_info  # reductions 2, 4, 8, 16, 32
    conn = Connectivity("convnet", info, [Edge("D1", "E1"), Edge("D1", "D2"), Edge("D2", "E2"),
                                          Edge("D2", "D5"), Edge("D5", "E5"), Edge("D5", "G")], "D1",
                        {"widths": [4, 8, 8, 8, 8]})
    src = tmp_path / "c.json"
    conn.to_json(src)
    out = tmp_path / "mnv2.json"
    vgg = ["--backbone", "mobilenet_v2", "--backbone-kwargs", '{"width_mult": 0.25}']
    assert main(["transfer", str(src), "--out", str(out)] + vgg) == 0
    text = capsys.readouterr().out
    new = Connectivity.from_json(out)
    assert new.backbone == "mobilenet_v2"
    new_info = build_backbone("mobilenet_v2", width_mult=0.25).feature_info
    mapping = conn.stage_mapping(new_info)
    for i, fi in enumerate(info, start=1):  # one line per old stage, matched or dropped
        j = mapping[i]
        assert (f"E{i}/D{i}" in text) and ((f"E{j}/D{j}" in text) if j else "dropped" in text)
    assert json.loads(out.read_text())["meta"]["transferred_from"] == "convnet"
    # an existing --out is refused, and kept as it was
    before = out.read_text()
    assert main(["transfer", str(src), "--out", str(out)] + vgg) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == before
    assert main(["transfer", str(tmp_path / "nope.json"), "--out", str(tmp_path / "n.json")] + vgg) == 2
    assert "nope.json not found" in capsys.readouterr().err and not (tmp_path / "n.json").exists()


def test_a_comparison_trial_reports_the_tasks_main_score(tmp_path):
    from nni_sparsemask.comparison.trial import final_result

    edges = {"task": "edges", "main": "ods", "ods": 0.61, "ois": 0.64, "ap": 0.55, "miou": 0.7, "fps": 10.0,
             "params_decoder": 1000, "edges": 3}
    r = final_result(edges, tmp_path)
    assert r["default"] == 0.61 and r["task"] == "edges" and r["ap"] == 0.55
    old = {"miou": 0.5, "pixel_accuracy": 0.9, "fps": 3.0}  # a run of an earlier release: segmentation
    assert final_result(old, tmp_path)["default"] == 0.5
    with pytest.raises(ValueError, match="has no ODS"):
        final_result({"task": "edges", "miou": 0.5}, tmp_path)


def test_retrain_trains_and_validates_with_the_tasks_loss_and_scores(tmp_path):
    from nni_sparsemask.run.config import TrainConfig
    from nni_sparsemask.run.steps import run_retrain

    data = DataConfig(image_size=32, train_scenes=8, val_scenes=4, batch_size=4, task="edges")
    m = run_retrain(tmp_path / "fcn", data, TINY_MODEL, TrainConfig(epochs=1), decoder="fcn", fps_size=32,
                    fps_seconds=0.05, progress=False, accelerator="cpu", log=lambda *_: None)
    header = (tmp_path / "fcn" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_ods", "val_ois", "val_ap"} <= set(header) and "val_score" not in header
    assert m["task"] == "edges" and m["main"] == "ods" and 0 <= m["ods"] <= 1
