"""SparseMask under NasExperiment on a toy space whose answer is known.

The toy: six feature branches (Linear -> BN without affine, so that only w can silence a branch, as the
per-edge BN of Eq. 4 does) summed by one ``InputChoice(6, n_chosen=None)``; branches 1 and 4 carry the class
signal, the other four see pure noise. SparseMask must keep exactly {1, 4}.
"""
import json
import logging
import warnings

import nni
import pytest
import pytorch_lightning as pl
import torch
import torch.nn as tnn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

from nni_sparsemask.nas.binarization import describe_binarization
from nni_sparsemask.nas.recipe import ARCH_GROUP
from nni_sparsemask.nas.searchdir import CHECKPOINT_FILE, CONFIG_FILE, RESULT_FILE
from nni_sparsemask.nas.strategy import SparseMask, SparseMaskLightningModule, binarization_report
from nni_sparsemask.nas.supermodule import SparseMixedInput

INFORMATIVE = [1, 4]
logging.getLogger("nni").setLevel(logging.ERROR)


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, 4, generator=g)
    x[:, 1, :] += 1.5 * torch.where(y == 0, 1.0, -1.0)[:, None]                       # class 0 vs rest
    x[:, 4, :] += 1.5 * torch.where(y == 1, 1.0, torch.where(y == 2, -1.0, 0.0))[:, None]  # class 1 vs 2
    return x.reshape(n, 24), y


class Toy(ModelSpace):
    def __init__(self, layer_choice=False):
        super().__init__()
        self.branches = tnn.ModuleList(
            [tnn.Sequential(tnn.Linear(4, 8), tnn.BatchNorm1d(8, affine=False)) for _ in range(6)])
        self.choice = InputChoice(6, n_chosen=None, reduction="sum", label="branches")
        if layer_choice:
            self.act = LayerChoice([tnn.ReLU(), tnn.Tanh()], label="act")
        else:
            self.act = tnn.ReLU()
        self.head = tnn.Linear(8, 3)

    def forward(self, x):
        xs = x.view(-1, 6, 4)
        return self.head(self.act(self.choice([b(xs[:, t]) for t, b in enumerate(self.branches)])))


class ToyWithConnectivity(Toy):
    def connectivity_from_weights(self, weights, threshold, history=None):
        return {"weights": weights, "threshold": threshold, "history": history}


class NoMultiInput(ModelSpace):
    def __init__(self):
        super().__init__()
        self.lin = tnn.ModuleList([tnn.Linear(24, 3) for _ in range(2)])
        self.choice = InputChoice(2, n_chosen=1, label="one")

    def forward(self, x):
        return self.choice([m(x) for m in self.lin])


class StopAt(pl.Callback):
    """Simulates a crash at the start of epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def evaluator(epochs=8, n_train=2048, callbacks=None):
    td = nni.trace(torch.utils.data.TensorDataset)
    xtr, ytr = make_data(n_train, 0)
    xva, yva = make_data(256, 1)
    return Classification(
        learning_rate=1e-2, num_classes=3,
        train_dataloaders=DataLoader(td(xtr, ytr), batch_size=64, shuffle=True),
        val_dataloaders=DataLoader(td(xva, yva), batch_size=256),
        max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks or [])


def search(space=None, epochs=8, n_train=2048, callbacks=None, **kwargs):
    torch.manual_seed(0)
    space = space if space is not None else Toy()
    kwargs.setdefault("arc_learning_rate", 0.02)
    strategy = SparseMask(**kwargs)
    exp = NasExperiment(space, evaluator(epochs, n_train, callbacks), strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp.run()
    return exp, strategy


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_sparse": -0.1}, "lambda_sparse.*-0.1"),
    ({"threshold": 0.0}, r"threshold.*\(0, 1\).*0.0"),
    ({"threshold": 1.0}, r"threshold.*1.0"),
    ({"threshold": -1e-3}, r"threshold"),
    ({"loss": "focal"}, "'focal'.*sparsemask, binary, sparse, task, l1"),
    ({"optimization": "alternate"}, "'alternate'.*joint, bilevel"),
    ({"arc_optimizer": "rmsprop"}, "'rmsprop'.*shared, adam, sgd"),
    ({"alpha": 1.5}, "alpha"),
    ({"other_choices": "ignore"}, "'ignore'.*darts, error"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseMask(**kwargs)


def test_space_without_multi_input_choice_is_refused():
    with pytest.raises(ValueError, match=r"no InputChoice\(n_chosen=None\)"):
        search(NoMultiInput(), epochs=1, n_train=64)


def test_layer_choice_refused_when_asked():
    with pytest.raises(ValueError, match=r"'act'.*other_choices='darts'"):
        search(Toy(layer_choice=True), epochs=1, n_train=64, other_choices="error")


def test_binarization_report_counts_exact_zeros():
    r = binarization_report({"a": [0.0, 0.0, 5e-4, 0.02, 1.0], "b": [0.5, 0.0]}, threshold=1e-3)
    assert r["a"]["n_exact_zero"] == 2 and r["a"]["n_dropped_nonzero"] == 1
    assert r["a"]["min_kept"] == 0.02 and r["a"]["max_dropped_nonzero"] == 5e-4
    assert r["a"]["gap"] == pytest.approx(40.0)
    assert r["a"]["undecided_fraction"] == pytest.approx(1 / 5)  # 0.02
    assert r["b"]["gap"] == float("inf")  # only exact zeros dropped
    assert r["overall"]["n"] == 7 and r["overall"]["n_kept"] == 3
    assert r["overall"]["undecided_fraction"] == pytest.approx(2 / 7)


def test_the_printed_binarisation_names_the_undecided_w_beside_the_gap():
    # the cost-aware demo's D1 at C_dec 64: a gap of 1000x, and no w near 1
    r = binarization_report({"D1": [0.237, 2.22e-4, 0.0, 0.232, 0.35]}, threshold=1e-3)["overall"]
    assert describe_binarization(r) == ("gap 1045x (lowest kept w 0.232, highest dropped 0.000222); 60% of w "
                                        "undecided, in (sigma, 0.999)")
    r = binarization_report({"a": [1.0, 0.0, 1.0], "b": [0.0, 0.5]}, threshold=1e-3)["overall"]
    assert describe_binarization(r) == ("gap inf (every dropped w is 0; the lowest kept 0.5); 20% of w undecided, "
                                        "in (sigma, 0.999)")
    r = binarization_report({"a": [0.02, 5e-3]}, threshold=1e-2)["overall"]
    assert describe_binarization(r).startswith("gap 4.00x (lowest kept w 0.02, highest dropped 0.005)")
    assert describe_binarization(None) == "-"


# ---- the regulariser of Eq. 3 ------------------------------------------------------------------------------
class TwoLabels(ModelSpace):
    def __init__(self):
        super().__init__()
        self.lin = tnn.ModuleList([tnn.Linear(4, 4) for _ in range(4)])
        self.a = InputChoice(3, n_chosen=None, label="a")
        self.b = InputChoice(3, n_chosen=None, label="a")  # shares a's w: counted once
        self.c = InputChoice(5, n_chosen=None, label="c")

    def forward(self, x):
        feats = [m(x) for m in self.lin]
        return self.c([self.a(feats[:3]) + self.b(feats[:3]), *feats])


# w_a = (0.2, 0.5, 0.8), alpha_a = min(2/3, 0.5) = 0.5;  w_c = (0.1, 0.2, 0.3, 0.4, 0.5), alpha_c = min(2/5, 0.5) = 0.4
# H(x) = -x ln x - (1 - x) ln(1 - x): H(0.1) = 0.32508297339144824, H(0.2) = H(0.8) = 0.50040242353818788,
#   H(0.3) = 0.61086430205489346, H(0.4) = 0.67301166700925644, H(0.5) = ln 2 = 0.69314718055994531
# L_bp(a) = (2 * 0.50040242353818788 + 0.69314718055994531) / 3 = 0.56465067587877369
# L_bp(c) = (0.32508297339144824 + 0.50040242353818788 + 0.61086430205489346 + 0.67301166700925644
#            + 0.69314718055994531) / 5 = 0.56050170931074627
# L_sp(a, 0.5) = Lm(0.5, mean 0.5) = ln 2;  L_sp(c, 0.4) = Lm(0.4, mean 0.3) = -0.4 ln 0.3 - 0.6 ln 0.7
#   = 0.4 * 1.2039728043259360 + 0.6 * 0.35667494393873238 = 0.69559408809361382
# with alpha = 0.25 for both: L_sp(a) = Lm(0.25, 0.5) = ln 2,
#   L_sp(c) = 0.25 * 1.2039728043259360 + 0.75 * 0.35667494393873238 = 0.56849940903553328
@pytest.mark.parametrize("kwargs, expected", [
    ({"loss": "sparsemask"}, 0.01 * 2.5138936538430791),  # 0.56465067587877369 + ln 2 + 0.56050170931074627
    #                                                          + 0.69559408809361382
    ({"loss": "sparsemask", "alpha": 0.25}, 0.01 * 2.3867989747849985),  # ... + 0.56849940903553328 for c
    ({"loss": "binary", "lambda_sparse": 0.1}, 0.1 * 1.12515238518952),  # 0.56465067587877369 + 0.56050170931074627
    ({"loss": "sparse", "lambda_sparse": 1.0}, 1.3887412686535591),  # ln 2 + 0.69559408809361382
    ({"loss": "l1", "lambda_sparse": 0.5}, 0.5 * 3.0),  # |w_a| + |w_c| = 1.5 + 1.5
    ({"loss": "task"}, 0.0),
    ({"loss": "sparsemask", "lambda_sparse": 0.0}, 0.0),
])
def test_regulariser_is_lambda_times_the_sum_over_labels(kwargs, expected):
    strategy = SparseMask(**kwargs)
    space = strategy.mutate_model(TwoLabels())
    module = SparseMaskLightningModule(tnn.Module(), strategy.config)
    module.model = space  # regulariser() needs only the supernet modules
    with torch.no_grad():
        space.a.arch_weights.copy_(torch.tensor([0.2, 0.5, 0.8]))
        space.c.arch_weights.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert list(module.sparse_modules()) == ["a", "c"]
    assert module.regulariser().item() == pytest.approx(expected, rel=1e-6)


# ---- the toy proof --------------------------------------------------------------------------------------
def test_sparsemask_keeps_the_informative_branches_and_drops_the_noise():
    exp, strategy = search(epochs=8)
    w = strategy.weights()["branches"]
    assert exp.export_top_models(formatter="dict") == [{"branches": INFORMATIVE}]
    assert all(w[t] > 0.99 for t in INFORMATIVE)
    assert all(w[t] == 0.0 for t in range(6) if t not in INFORMATIVE)  # clamped to exact zeros
    report = strategy.binarization()
    assert report["branches"]["n_exact_zero"] == 4 and report["branches"]["gap"] == float("inf")
    assert report["overall"]["undecided_fraction"] == 0.0
    history = strategy.history()
    assert len(history) == 8 and list(history[-1]) == ["branches"] and history[-1]["branches"] == w
    assert history[0]["branches"] != w  # w moved during the search
    # the optimiser (default arc_optimizer='shared'): the evaluator's one optimiser, w alone in its own group
    module = strategy.oneshot_module
    assert isinstance(module, SparseMaskLightningModule)
    (opt,) = module.trainer.optimizers
    arch_group = [g for g in opt.param_groups if g.get("name") == ARCH_GROUP]
    arch_ids = {id(p) for g in arch_group for p in g["params"]}
    weight_ids = {id(p) for g in opt.param_groups if g not in arch_group for p in g["params"]}
    w_param = next(m for m in strategy.supernet.modules() if isinstance(m, SparseMixedInput)).arch_weights
    assert arch_ids == {id(w_param)}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in strategy.supernet.parameters()}


def test_separate_w_optimiser_keeps_the_groups_disjoint():
    _, strategy = search(epochs=1, n_train=64, arc_optimizer="adam")
    module = strategy.oneshot_module
    arch_opt = module.architecture_optimizers().optimizer
    weight_opts = [o for o in module.trainer.optimizers if o is not arch_opt]
    arch_ids = {id(p) for g in arch_opt.param_groups for p in g["params"]}
    weight_ids = {id(p) for o in weight_opts for g in o.param_groups for p in g["params"]}
    w_param = next(m for m in strategy.supernet.modules() if isinstance(m, SparseMixedInput)).arch_weights
    assert arch_ids == {id(w_param)}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in strategy.supernet.parameters()}


def test_the_loss_matters_task_only_does_not_binarise():
    _, strategy = search(epochs=8, loss="task")
    kept = strategy.export()["branches"]
    assert set(INFORMATIVE) <= set(kept) and len(kept) > len(INFORMATIVE)
    assert strategy.binarization()["overall"]["undecided_fraction"] > 0


def test_bilevel_finds_the_informative_branches():
    _, strategy = search(epochs=8, optimization="bilevel", arc_optimizer="adam")  # needs w's own optimiser
    w = strategy.weights()["branches"]
    assert all(w[t] > 0.9 for t in INFORMATIVE)
    assert max(w[t] for t in range(6) if t not in INFORMATIVE) < 0.1


def test_layer_choice_composes_with_darts():
    exp, strategy = search(Toy(layer_choice=True), epochs=2, n_train=256)
    (sample,) = exp.export_top_models(formatter="dict")
    assert set(sample) == {"branches", "act"} and sample["act"] in (0, 1)
    assert all(isinstance(i, int) for i in sample["branches"])
    assert list(strategy.weights()) == ["branches"]  # the LayerChoice logits are not SparseMask weights


def test_connectivity_calls_the_space_and_refuses_other_spaces():
    _, strategy = search(ToyWithConnectivity(), epochs=2, n_train=256, threshold=0.01)
    conn = strategy.connectivity()
    assert conn["weights"] == strategy.weights() and conn["threshold"] == 0.01
    assert conn["history"] == strategy.history() and len(conn["history"]) == 2
    _, plain = search(epochs=1, n_train=64)
    with pytest.raises(ValueError, match="connectivity_from_weights"):
        plain.connectivity()


def test_unbinarised_search_warns():
    torch.manual_seed(0)
    strategy = SparseMask(arc_learning_rate=1e-4, undecided_warn_fraction=0.1)
    exp = NasExperiment(Toy(), evaluator(1, 64), strategy)
    with pytest.warns(UserWarning, match="has not binarised"):
        exp.run()


# ---- run directory, resume ------------------------------------------------------------------------------
def test_resume_ends_like_an_uninterrupted_run(tmp_path):
    _, full = search(epochs=4, n_train=512, run_dir=tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        search(epochs=4, n_train=512, run_dir=tmp_path / "cut", callbacks=[StopAt(2)])
    assert (tmp_path / "cut" / CHECKPOINT_FILE).exists() and not (tmp_path / "cut" / RESULT_FILE).exists()
    ckpt = torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=False)
    assert len(ckpt["optimizer_states"]) == 1 and len(ckpt["sparsemask"]["history"]) == 2  # w's group is in it
    assert any(k.endswith("_arch_w") for k in ckpt["state_dict"])
    _, resumed = search(epochs=4, n_train=512, run_dir=tmp_path / "cut")
    assert resumed.history() == full.history()
    assert resumed.weights() == full.weights()
    a = dict(full.supernet.state_dict())
    b = dict(resumed.supernet.state_dict())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = json.loads((tmp_path / "cut" / RESULT_FILE).read_text())
    assert result["weights"] == full.weights() and len(result["history"]) == 4
    assert result["export"] == full.export()


def test_run_dir_guards(tmp_path):
    _, first = search(epochs=1, n_train=64, run_dir=tmp_path)
    record = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert record["config"]["lambda_sparse"] == 0.01 and record["space"]["labels"]["branches"]["n"] == 6
    before = (tmp_path / RESULT_FILE).read_text()
    with pytest.raises(FileExistsError, match="finished"):
        search(epochs=1, n_train=64, run_dir=tmp_path)
    assert (tmp_path / RESULT_FILE).read_text() == before
    (tmp_path / RESULT_FILE).unlink()  # an unfinished run with another configuration
    with pytest.raises(ValueError, match="another SparseMask configuration.*lambda_sparse"):
        search(epochs=1, n_train=64, run_dir=tmp_path, lambda_sparse=0.1)


def test_checkpoint_loads_with_weights_only(tmp_path):
    # newer Lightning loads checkpoints with torch.load(weights_only=True): no NNI objects may be pickled
    search(epochs=1, n_train=64, run_dir=tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert type(next(iter(ckpt["sparsemask"]["history"][0]))) is str
