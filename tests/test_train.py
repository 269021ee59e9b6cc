"""SegmentationModule / Segmentation evaluator: param groups, poly schedule, arch exclusion, fit, NNI reporting."""
import pickle

import nni
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nni_sparsemask import train as T
from nni_sparsemask.run.lightning import (PolyLR, Segmentation, SegmentationModule, DigitScenesLoader, is_arch_parameter,
                                  poly_lr, split_parameters)

DATA = dict(image_size=32, num_scenes=12)


class TinyNet(nn.Module):
    """Stand-in for the FDN: a stride-2 conv encoder, a 1x1 head, an architecture weight, logits at input size."""

    def __init__(self, num_classes=11, with_arch=True):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)
        self.mix = nn.Module()
        self.mix._arch_w = nn.Parameter(torch.tensor([0.5, 0.7])) if with_arch else None

    def forward(self, x):
        f = self.encoder(x)
        if self.mix._arch_w is not None:
            f = f * self.mix._arch_w.sum()
        return F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


class NoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 11, 1)

    def forward(self, x):
        return self.conv(x)


def _trainer_kwargs(tmp_path, **kw):
    base = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path))
    base.update(kw)
    return base


def _evaluator(tmp_path, **kw):
    cache = str(tmp_path / "cache")
    return Segmentation(num_classes=11, learning_rate=0.01,
                        train_dataloaders=DigitScenesLoader(batch_size=4, shuffle=True, split="train",
                                                            cache_dir=cache, **DATA),
                        val_dataloaders=DigitScenesLoader(batch_size=6, split="val", cache_dir=cache, **DATA),
                        **_trainer_kwargs(tmp_path, **kw))


def _attached(module, model):
    module.set_model(model)
    return module


def test_arch_predicate():
    assert is_arch_parameter("decoder.D1._arch_w") and is_arch_parameter("mix._arch_alpha")
    assert not is_arch_parameter("encoder.0.weight") and not is_arch_parameter("head.arch.weight")


def test_param_groups_lr_ratio_and_arch_excluded():
    model = TinyNet()
    module = _attached(SegmentationModule(learning_rate=0.02, max_steps=10), model)
    opt_conf = module.configure_optimizers()
    opt = opt_conf["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"encoder", "decoder"}
    assert groups["encoder"]["lr"] == pytest.approx(0.02) and groups["decoder"]["lr"] == pytest.approx(0.2)
    assert groups["decoder"]["lr"] / groups["encoder"]["lr"] == pytest.approx(10.0)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups["encoder"]["params"]) == ids(model.encoder.parameters())
    assert ids(groups["decoder"]["params"]) == ids(model.head.parameters())
    in_opt = ids(groups["encoder"]["params"]) | ids(groups["decoder"]["params"])
    assert id(model.mix._arch_w) not in in_opt
    assert ids(groups["encoder"]["params"]).isdisjoint(ids(groups["decoder"]["params"]))
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == pytest.approx(4e-5) for g in opt.param_groups)
    assert isinstance(opt, torch.optim.SGD)
    sched = opt_conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], PolyLR) and sched["interval"] == "step"


def test_split_parameters_without_encoder_and_custom_predicate():
    enc, dec, arch = split_parameters(NoEncoder())
    assert enc == [] and len(dec) == 2 and arch == []
    module = _attached(SegmentationModule(learning_rate=0.01, max_steps=5), NoEncoder())
    (group,) = module.configure_optimizers()["optimizer"].param_groups
    assert group["name"] == "decoder" and group["lr"] == pytest.approx(0.1)
    enc, dec, arch = split_parameters(TinyNet(), lambda name: name.startswith("head"))
    assert len(arch) == 2 and len(enc) == 4 and len(dec) == 1  # now _arch_w counts as a decoder weight


def test_poly_formula_and_scheduler_values():
    assert poly_lr(0.01, 0, 10) == pytest.approx(0.01)
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 10, 10) == 0.0 and poly_lr(0.01, 12, 10) == 0.0
    assert poly_lr(0.01, 3, 10, power=1.0) == pytest.approx(0.007)
    model = TinyNet()
    module = _attached(SegmentationModule(learning_rate=0.01, max_steps=7), model)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for t in range(9):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for t, (enc_lr, dec_lr) in enumerate(seen):
        expected = 0.01 * (1 - min(t, 7) / 7) ** 0.9
        assert enc_lr == pytest.approx(expected, abs=1e-12) and dec_lr == pytest.approx(10 * expected, abs=1e-12)
    with pytest.raises(ValueError, match="total_steps"):
        poly_lr(0.1, 1, 0)


def test_loss_ignores_255():
    module = SegmentationModule(num_classes=3)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    keep = target != 255
    manual = -torch.log_softmax(logits, 1).gather(1, target.clamp_max(2)[:, None])[:, 0][keep].mean()
    assert module.loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-6)


def test_bad_config_and_bad_model_output():
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationModule(num_classes=11, ignore_index=3)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationModule(num_classes=1)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationModule(num_classes=2, class_weights=[1.0, 2.0, 3.0])
    module = _attached(SegmentationModule(num_classes=5), TinyNet(num_classes=11))
    with pytest.raises(ValueError, match="num_classes"):
        module.training_step((torch.randn(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long)), 0)
    module = _attached(SegmentationModule(num_classes=11), NoEncoder())
    with pytest.raises(ValueError, match="input size"):
        module.training_step((torch.randn(2, 3, 16, 16), torch.zeros(2, 8, 8, dtype=torch.long)), 0)


def test_one_fit_epoch_on_tiny_digitscenes(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    evaluator = _evaluator(tmp_path)
    evaluator.evaluate(model)
    trainer, module = evaluator.trainer, evaluator.module
    assert trainer.global_step == 3  # 12 scenes / batch 4
    metrics = trainer.callback_metrics
    for name in ("train_loss", "val_loss", "val_miou", "val_pixacc", "val_fg_iou"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert 0.0 < float(metrics["val_miou"]) <= 1.0 and 0.0 < float(metrics["val_pixacc"]) <= 1.0
    assert float(metrics["val_loss"]) == pytest.approx(module.last_scores["val_loss"])
    # the weights trained, the architecture weight did not (the strategy owns it)
    assert not torch.equal(before["head.weight"], model.head.weight.detach())
    assert not torch.equal(before["encoder.0.weight"], model.encoder[0].weight.detach())
    assert torch.equal(before["mix._arch_w"], model.mix._arch_w.detach())
    # poly decay sized from the trainer (T = 3 steps): lr reached 0 at the end
    (opt,) = trainer.optimizers
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.0), pytest.approx(0.0)]
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3


def test_fit_is_seeded(tmp_path):
    weights = []
    for run in range(2):
        torch.manual_seed(0)
        model = TinyNet()
        torch.manual_seed(123 + run)  # different global RNG state: the module's seed must take over
        _evaluator(tmp_path / str(run)).evaluate(model)
        weights.append(model.head.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_reports_to_nni_as_a_trial(tmp_path, monkeypatch):
    inter, final = [], []
    monkeypatch.setenv("NNI_PLATFORM", "local")  # NNI's trial environment (run.lightning.in_nni_trial)
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "Ab1cD")
    monkeypatch.setattr(nni, "report_intermediate_result", inter.append)
    monkeypatch.setattr(nni, "report_final_result", final.append)
    evaluator = _evaluator(tmp_path, max_epochs=2)
    evaluator.evaluate(TinyNet())
    assert len(inter) == 2 and len(final) == 1
    assert set(inter[0]) == {"default", "pixel_accuracy", "fg_iou", "score", "val_loss"}
    assert final[0] == inter[-1]
    assert final[0]["default"] == pytest.approx(float(evaluator.trainer.callback_metrics["val_miou"]))


def test_no_report_outside_a_trial(tmp_path, monkeypatch):
    # not a trial (no NNI trial environment), even with NNI's current parameter set, as an in-process
    # NasExperiment leaves it
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    monkeypatch.delenv("NNI_TRIAL_JOB_ID", raising=False)
    monkeypatch.setattr(nni, "get_current_parameter", lambda *a, **k: {"arch": 1})
    calls = []
    monkeypatch.setattr(nni, "report_intermediate_result", calls.append)
    monkeypatch.setattr(nni, "report_final_result", calls.append)
    _evaluator(tmp_path).evaluate(TinyNet())
    assert calls == []


def test_evaluator_serialises_without_the_data(tmp_path):
    evaluator = _evaluator(tmp_path)
    dumped = nni.dump(evaluator)
    assert len(dumped) < 5000  # arguments only
    assert "DigitScenes" in dumped and '"num_scenes": 12' in dumped
    loaded = nni.load(dumped)
    assert isinstance(loaded, Segmentation)
    dataset = loaded.train_dataloaders.dataset
    assert dataset.config.image_size == 32 and dataset._arrays is None  # lazy in the trial too
    size = len(pickle.dumps(evaluator))
    evaluator.train_dataloaders.dataset[0]  # scenes now in memory (12 x 32 x 32 x 3 bytes and more) ...
    assert evaluator.train_dataloaders.dataset._arrays is not None
    assert abs(len(pickle.dumps(evaluator)) - size) < 100  # ... but not pickled
    with pytest.raises(ValueError, match="max_epochs or max_steps"):
        module = _attached(SegmentationModule(), TinyNet())
        module.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": float("inf")})()
        module.total_steps()


def test_freeze_bn_keeps_encoder_batchnorm_fixed(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    bn = model.encoder[1]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    evaluator = Segmentation(num_classes=11, freeze_bn=True,
                             train_dataloaders=DigitScenesLoader(batch_size=4, cache_dir=str(tmp_path), **DATA),
                             **_trainer_kwargs(tmp_path))
    evaluator.evaluate(model)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k  # affine weights and running statistics unchanged
    (opt,) = evaluator.trainer.optimizers
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(bn.weight) not in in_opt and id(model.encoder[0].weight) in in_opt


def test_serves_as_evaluator_of_the_sparsemask_search(tmp_path):
    """Under NasExperiment + SparseMask: w is optimised by the strategy, the weights by our SGD groups."""
    import logging
    import warnings

    from nni.nas.experiment import NasExperiment

    from nni_sparsemask.fdn.space import FDNSpace
    from nni_sparsemask.nas.strategy import SparseMask

    # NNI logs "Experiment stopped" at interpreter exit, after pytest closed its capture streams
    logging.getLogger("nni").setLevel(logging.ERROR)
    torch.manual_seed(0)
    space = FDNSpace(backbone="convnet", num_classes=11, decoder_channels=8,
                     backbone_kwargs={"widths": (8, 8, 8, 8, 8)})
    evaluator = _evaluator(tmp_path, max_epochs=1)
    strategy = SparseMask(arc_learning_rate=0.01, arc_optimizer="adam")  # w in an optimizer of its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NasExperiment(space, evaluator, strategy).run()
    trainer = evaluator.trainer
    sgd, arch = trainer.optimizers
    assert isinstance(sgd, torch.optim.SGD) and [g["name"] for g in sgd.param_groups] == ["encoder", "decoder"]
    sgd_ids = {id(p) for g in sgd.param_groups for p in g["params"]}
    arch_ids = {id(p) for g in arch.param_groups for p in g["params"]}
    assert arch_ids and sgd_ids.isdisjoint(arch_ids)
    assert "val_miou" in trainer.callback_metrics and "sparse_loss" in trainer.callback_metrics
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3
    assert len(strategy.history()) == 1
