"""The official search recipe as SparseMask's default, each part on its own switch.

The user space is the one of ``benchmarks/search_recipe.py`` (one definition for the test and the ablation):
six ``Linear -> BatchNorm1d -> ReLU`` branches summed by one ``InputChoice(6, n_chosen=None)``, branches 0 and 3
informative, NNI's ``Classification`` evaluator.
"""
import copy
import dataclasses
import importlib.util
import json
import logging
import warnings
from pathlib import Path

import nni
import pytest
import pytorch_lightning as pl
import torch
import torch.nn as tnn
import torch.nn.functional as F
from nni.nas.evaluator.pytorch import DataLoader, Lightning, LightningModule, Trainer
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import InputChoice, ModelSpace

from nni_sparsemask.nas import recipe, searchdir
from nni_sparsemask.nas.config import LEGACY_VALUES, SparseMaskConfig
from nni_sparsemask.nas.losses import alpha_rule, sparse_loss
from nni_sparsemask.nas.strategy import SparseMask, SparseMaskLightningModule
from nni_sparsemask.nas.supermodule import SparseMixedInput

ROOT = Path(__file__).resolve().parents[1]
logging.getLogger("nni").setLevel(logging.ERROR)


def _toy():
    spec = importlib.util.spec_from_file_location("search_recipe", ROOT / "benchmarks" / "search_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOY = _toy()


@pytest.fixture(autouse=True)
def _one_thread():
    """The toy network is tiny: one thread is 3x faster than two on a busy 2-core machine, and the ablation
    (``benchmarks/search_recipe.py``) measured with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the decisive search, with the defaults ---------------------------------------------------------------
@pytest.mark.parametrize("seed, optimizer, lr", [(0, "adam", 1e-3), (1, "adam", 1e-3), (2, "adam", 1e-3),
                                                 (0, "sgd", 0.01)])
def test_default_search_keeps_exactly_the_informative_inputs(seed, optimizer, lr):
    """``SparseMask()`` with every default on NNI's ``Classification`` with its defaults (Adam, lr 1e-3; and once
    with SGD, momentum 0.9), 20 epochs: w ends binary, 1 on the informative inputs and exactly 0 elsewhere."""
    strategy = TOY.search(seed, epochs=20, optimizer=optimizer, lr=lr, n_train=2048)
    assert strategy.export() == {"inputs": TOY.INFORMATIVE}
    assert strategy.weights()["inputs"] == [1.0 if t in TOY.INFORMATIVE else 0.0 for t in range(6)]
    assert strategy.binarization()["overall"]["undecided_fraction"] == 0.0


@pytest.mark.parametrize("row, seed", [("old", 1), ("no_noise", 0)])
def test_the_same_search_without_the_recipe_goes_wrong(row, seed):
    """The toy can fail a search: the old default (Adam 3e-3 on w, no noise, BN trained) keeps noise inputs at
    w in (sigma, 0.999); without noise the search drops informative input 0 (the ablation: 1/8 and 3/8 seeds right)."""
    strategy = TOY.search(seed, epochs=20, n_train=2048, **TOY.ROWS[row][1])
    kept = strategy.export()["inputs"]
    if row == "old":
        assert set(TOY.INFORMATIVE) < set(kept) and strategy.binarization()["overall"]["undecided_fraction"] > 0
    else:
        assert kept == [3] and strategy.binarization()["overall"]["undecided_fraction"] == 0.0


# ---- the defaults are the recipe; config records --------------------------------------------------------
def test_defaults_are_the_official_recipe_but_two_measured_switches():
    c = SparseMask().config
    assert (c.arc_optimizer, c.arc_learning_rate, c.arc_lr_mult, c.arc_weight_decay) == ("shared", None, 10.0, 4e-5)
    assert (c.arc_noise, c.noisy_penalty, c.freeze_bn, c.bn_momentum) == (0.05, False, False, 3e-4)
    assert (c.lambda_sparse, c.threshold, c.alpha, c.init) == (0.01, 1e-3, None, 0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"optimization": "bilevel"}, "bilevel.*'adam' or 'sgd'"),
    ({"arc_optimizer": "adam"}, "'adam' needs arc_learning_rate"),
    ({"arc_noise": -0.1}, "arc_noise"),
    ({"arc_noise": 0.5}, "arc_noise"),
    ({"noisy_penalty": 1}, "noisy_penalty must be True or False"),
    ({"freeze_bn": "yes"}, "freeze_bn"),
    ({"bn_momentum": 1.5}, "bn_momentum"),
    ({"arc_lr_mult": 0.0}, "arc_lr_mult"),
    ({"arc_learning_rate": 0.0}, "arc_learning_rate"),
])
def test_bad_recipe_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseMask(**kwargs)


OLD_RECORD = {  # a config as the first release wrote it: none of the recipe's settings
    "lambda_sparse": 0.01, "threshold": 1e-3, "loss": "sparsemask", "optimization": "joint",
    "arc_learning_rate": 0.02, "arc_optimizer": "adam", "arc_momentum": 0.9, "arc_weight_decay": 0.0,
    "alpha": None, "init": 0.5, "init_noise": 0.01, "eps": 1e-6, "seed": 0, "warmup_epochs": 0,
    "gradient_clip_val": None, "other_choices": "darts", "undecided_warn_fraction": 0.25, "log_every_n_steps": 10}


def test_an_old_record_reads_with_the_legacy_values():
    cfg = SparseMaskConfig.from_dict(OLD_RECORD)
    assert (cfg.arc_noise, cfg.noisy_penalty, cfg.freeze_bn) == (0.0, False, False)
    assert cfg.arc_optimizer == "adam" and cfg.arc_learning_rate == 0.02
    cfg.validate()
    with pytest.raises(ValueError, match="unknown SparseMaskConfig settings bogus"):
        SparseMaskConfig.from_dict({**OLD_RECORD, "bogus": 1})


def test_resuming_an_old_search_dir_needs_its_settings(tmp_path):
    space = TOY.user_space()
    (tmp_path / searchdir.CONFIG_FILE).write_text(json.dumps(
        {"config": OLD_RECORD, "space": searchdir.space_fingerprint(space)}))
    new = SparseMask(arc_optimizer="adam", arc_learning_rate=0.02, arc_weight_decay=0.0)
    with pytest.raises(ValueError, match=r"arc_noise: 0.0 there \(not in the file.*\), 0.05 here"):
        searchdir.prepare(tmp_path, dataclasses.asdict(new.config), space, LEGACY_VALUES)
    old = SparseMask(**dataclasses.asdict(SparseMaskConfig.from_dict(searchdir.recorded_config(tmp_path))))
    assert searchdir.prepare(tmp_path, dataclasses.asdict(old.config), space, LEGACY_VALUES) is None  # no checkpoint


# ---- noise ----------------------------------------------------------------------------------------------
def _module(w, noise):
    return SparseMixedInput(len(w), tnn.Parameter(torch.tensor(w)), "c", "sum", noise=noise)


def _xs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, generator=g) for _ in range(3)]


def test_noise_off_means_no_noise_in_training_forwards():
    m = _module([0.2, 0.7, 0.0], noise=0.0).train()
    xs = _xs()
    torch.testing.assert_close(m(xs), 0.2 * xs[0] + 0.7 * xs[1])
    assert m.forward_weights is None
    assert SparseMask(arc_noise=0.0).mutate_model(TOY.user_space()).inputs.noise == 0.0
    assert SparseMask().mutate_model(TOY.user_space()).inputs.noise == 0.05


def test_noise_in_training_forwards_only_seeded_and_clamped():
    m = _module([0.2, 0.7, 0.0], noise=0.05).train()
    xs = _xs()
    torch.manual_seed(3)
    out = m(xs)
    noisy = m.forward_weights
    torch.manual_seed(3)
    expected = (m.arch_weights + 0.05 * torch.randn(3)).clamp(0, 1)
    torch.testing.assert_close(noisy, expected)  # the global RNG: reseeded per epoch by the strategy
    torch.testing.assert_close(out, sum(noisy[t] * xs[t] for t in range(3)))
    assert not torch.equal(noisy, m.arch_weights.detach()) and noisy.min() >= 0 and noisy.max() <= 1
    out.sum().backward()  # the gradient reaches w through the noisy copy
    assert m.arch_weights.grad is not None
    torch.testing.assert_close(copy.deepcopy(m).forward_weights, noisy)  # NNI's freeze() deep-copies the space
    m.eval().reset_forward_weights()
    torch.testing.assert_close(m(xs), 0.2 * xs[0] + 0.7 * xs[1])  # evaluation: w itself
    assert m.forward_weights is None


@pytest.mark.parametrize("noisy_penalty", [True, False])
def test_the_penalty_sees_the_forwards_noisy_w(noisy_penalty):
    strategy = SparseMask(noisy_penalty=noisy_penalty)
    space = strategy.mutate_model(TOY.user_space()).train()
    module = SparseMaskLightningModule(tnn.Module(), strategy.config)
    module.model = space
    space(torch.randn(8, 24))
    choice = space.inputs
    noisy = choice.forward_weights
    assert noisy is not None and not torch.equal(noisy, choice.arch_weights.detach())
    used = noisy if noisy_penalty else choice.arch_weights
    expected = 0.01 * sparse_loss(used, alpha_rule(6))
    assert module.regulariser().item() == pytest.approx(expected.item(), rel=1e-6)
    other = 0.01 * sparse_loss(choice.arch_weights if noisy_penalty else noisy, alpha_rule(6))
    assert module.regulariser().item() != pytest.approx(other.item(), rel=1e-6)


# ---- the shared optimizer --------------------------------------------------------------------------------
class Space(ModelSpace):
    """A backbone ("encoder") and a head over one multi-input choice."""

    def __init__(self):
        super().__init__()
        self.encoder = tnn.ModuleList([tnn.Sequential(tnn.Linear(4, 8), tnn.BatchNorm1d(8)) for _ in range(3)])
        self.choice = InputChoice(3, n_chosen=None, label="c")
        self.head = tnn.Linear(8, 3)

    def forward(self, x):
        xs = x.view(-1, 3, 4)
        return self.head(self.choice([b(xs[:, t]) for t, b in enumerate(self.encoder)]))


class TwoGroups(LightningModule):
    """Like the project's SegmentationModule: encoder / decoder groups (10x), SGD, a per-step poly decay."""

    def __init__(self, lr: float = 0.01, steps: int = 8):
        super().__init__()
        self.lr, self.steps = lr, steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.model(x), y))

    def configure_optimizers(self):
        enc = list(self.model.encoder.parameters())
        dec = [p for p in self.model.parameters() if all(p is not q for q in enc)]  # w too: the strategy strips it
        opt = torch.optim.SGD([{"name": "encoder", "params": enc, "lr": self.lr},
                               {"name": "decoder", "params": dec, "lr": 10 * self.lr}],
                              lr=self.lr, momentum=0.9, weight_decay=1e-4)
        poly = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 - min(t, self.steps) / self.steps) ** 0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": poly, "interval": "step"}}


class RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_end(self, trainer, module, *args):
        self.lrs.append({g.get("name"): g["lr"] for g in trainer.optimizers[0].param_groups})


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    td = nni.trace(torch.utils.data.TensorDataset)
    return DataLoader(td(torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)), batch_size=8)


def _run(space, module, strategy, epochs=2, callbacks=()):
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks),
                      accelerator="cpu")
    evaluator = Lightning(module, trainer, train_dataloaders=_data(), val_dataloaders=_data(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NasExperiment(space, evaluator, strategy).run()
    return strategy


def _w(strategy):
    return next(m for m in strategy.supernet.modules() if isinstance(m, SparseMixedInput)).arch_weights


def test_shared_optimizer_puts_w_in_the_decoder_lr_group_with_its_schedule():
    lrs = RecordLR()
    strategy = _run(Space(), nni.trace(TwoGroups)(lr=0.01, steps=8), SparseMask(), callbacks=[lrs])
    module = strategy.oneshot_module
    assert module.architecture_optimizers() is None and len(module.trainer.optimizers) == 1
    (opt,) = module.trainer.optimizers
    assert module.shared_optimizer is opt
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["encoder", "decoder", recipe.ARCH_GROUP]
    arch = groups[recipe.ARCH_GROUP]
    assert len(arch["params"]) == 1 and arch["params"][0] is _w(strategy)
    assert all(p is not _w(strategy) for g in ("encoder", "decoder") for p in groups[g]["params"])
    assert arch["weight_decay"] == 4e-5 and groups["decoder"]["weight_decay"] == 1e-4
    assert arch["momentum"] == 0.9 and arch["initial_lr"] == pytest.approx(0.1)  # the decoder's lr, 10x 0.01
    assert len(lrs.lrs) == 8 and lrs.lrs[0]["decoder"] < 0.1  # the poly decay ran (one step per batch)
    for step in lrs.lrs:  # every step: w at the decoder's (decaying) lr
        assert step[recipe.ARCH_GROUP] == pytest.approx(step["decoder"])
    assert lrs.lrs[-1][recipe.ARCH_GROUP] == pytest.approx(0.0, abs=1e-12)
    assert strategy.history()[0]["c"] != strategy.history()[-1]["c"]  # w moved


class RecordW(pl.Callback):
    """w at the start of training and at the end of every epoch."""

    def __init__(self):
        self.start, self.epochs = None, []

    @staticmethod
    def _w(module):
        return next(m for m in module.modules() if isinstance(m, SparseMixedInput)).arch_weights.detach().clone()

    def on_train_start(self, trainer, module):
        self.start = self._w(module)

    def on_train_epoch_end(self, trainer, module):
        self.epochs.append(self._w(module))


def test_warmup_epochs_hold_w_in_the_shared_optimizer_then_let_it_train():
    seen = RecordW()
    _run(Space(), nni.trace(TwoGroups)(lr=0.01, steps=8), SparseMask(warmup_epochs=1), epochs=2, callbacks=[seen])
    assert torch.equal(seen.epochs[0], seen.start)  # epoch 1: no step, no weight decay, no momentum on w
    assert not torch.equal(seen.epochs[1], seen.start)


def test_shared_optimizer_with_one_group_uses_the_multiplier_and_the_optimizers_kind():
    strategy = TOY.search(0, epochs=1, n_train=64, arc_lr_mult=5.0)  # Classification: one Adam group, lr 1e-3
    (opt,) = strategy.oneshot_module.trainer.optimizers
    assert isinstance(opt, torch.optim.Adam)
    first, arch = opt.param_groups
    assert arch["name"] == recipe.ARCH_GROUP and arch["lr"] == pytest.approx(5e-3)
    assert arch["betas"] == first["betas"] and arch["weight_decay"] == 4e-5
    given = TOY.search(0, epochs=1, n_train=64, arc_learning_rate=0.03)
    assert given.oneshot_module.trainer.optimizers[0].param_groups[-1]["lr"] == pytest.approx(0.03)


def test_separate_optimizers_are_still_available():
    strategy = TOY.search(0, epochs=1, n_train=64, arc_optimizer="sgd", arc_learning_rate=0.05)
    module = strategy.oneshot_module
    arch_opt = module.architecture_optimizers().optimizer
    assert isinstance(arch_opt, torch.optim.SGD) and module.shared_optimizer is None
    assert arch_opt.param_groups[0]["weight_decay"] == 4e-5 and arch_opt.param_groups[0]["momentum"] == 0.9
    weights = [o for o in module.trainer.optimizers if o is not arch_opt]
    assert all(p is not _w(strategy) for o in weights for g in o.param_groups for p in g["params"])


def test_add_arch_group_refuses_two_optimizers_and_a_second_group():
    a = torch.optim.SGD([tnn.Parameter(torch.zeros(1))], lr=0.1)
    b = torch.optim.SGD([tnn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="returned 2 optimizers"):
        recipe.the_weight_optimizer([a, b])
    assert recipe.the_weight_optimizer({"optimizer": a, "lr_scheduler": None}) is a
    recipe.add_arch_group(a, [tnn.Parameter(torch.zeros(2))], None, 10.0, 4e-5)
    assert a.param_groups[-1]["lr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="already has"):
        recipe.add_arch_group(a, [tnn.Parameter(torch.zeros(2))], None, 10.0, 4e-5)


# ---- frozen BN -------------------------------------------------------------------------------------------
def _bn_state(space):
    return {n: t.detach().clone() for n, t in space.state_dict().items()
            if any(k in n for k in ("running_mean", "running_var", ".1.weight", ".1.bias"))}


@pytest.mark.parametrize("freeze_bn, bn_momentum", [(True, 0.0), (True, 3e-4), (False, 3e-4)])
def test_freeze_bn_keeps_running_stats_and_affine(freeze_bn, bn_momentum):
    space = Space()
    before = _bn_state(space)
    strategy = _run(space, nni.trace(TwoGroups)(lr=0.05, steps=8), SparseMask(freeze_bn=freeze_bn,
                                                                              bn_momentum=bn_momentum))
    after = _bn_state(strategy.supernet)
    assert before.keys() == after.keys() and len(after) == 12  # 3 BN x (mean, var, weight, bias)
    moved = {n: float((after[n] - before[n]).abs().max()) for n in after}
    affine = [n for n in after if "running" not in n]
    stats = [n for n in after if "running" in n]
    if not freeze_bn:
        assert all(moved[n] > 1e-3 for n in after)
    elif bn_momentum == 0.0:
        assert all(moved[n] == 0.0 for n in after)
    else:  # 8 steps at momentum 3e-4: stats move by at most ~8 * 3e-4 * |batch stat - running stat|
        assert all(moved[n] == 0.0 for n in affine)
        assert all(0.0 < moved[n] < 8 * 3e-4 * 10 for n in stats)
    bns = [m for m in strategy.supernet.modules() if isinstance(m, tnn.BatchNorm1d)]
    assert all(m.momentum == 0.1 and m.weight.requires_grad for m in bns)  # restored after the search


def test_freeze_and_restore_batchnorm():
    net = tnn.Sequential(tnn.Linear(2, 2), tnn.BatchNorm1d(2), tnn.BatchNorm1d(2, affine=False, momentum=None))
    saved = recipe.freeze_batchnorm(net, 3e-4)
    assert net[1].momentum == 3e-4 and net[2].momentum == 3e-4
    assert not net[1].weight.requires_grad and net[0].weight.requires_grad
    recipe.restore_batchnorm(saved)
    assert net[1].momentum == 0.1 and net[2].momentum is None and net[1].weight.requires_grad
