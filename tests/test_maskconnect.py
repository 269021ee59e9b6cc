"""MaskConnect: exactly k inputs per choice (forward and export), straight-through gradient, clip + renormalise,
sampling in proportion to the mask, the strategy under NasExperiment (toy and FDN), and the L1 strategy."""
import logging
import warnings

import nni
import pytest
import torch
import torch.nn as tnn
from nni.mutable import frozen_context
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import InputChoice, ModelSpace

from nni_sparsemask.baselines.maskconnect import (L1, L1_LAMBDAS, MASKCONNECT_KS, MaskConnect, MaskConnectInput,
                                                  normalise_mask)
from nni_sparsemask.fdn.space import FDNSpace
from nni_sparsemask.nas.strategy import SparseMask

logging.getLogger("nni").setLevel(logging.ERROR)
CONVNET = {"backbone": "convnet", "backbone_kwargs": {"widths": (4, 6, 8, 10)}}


def make(m, k=2, reduction="sum", **kw):
    return MaskConnectInput(len(m), tnn.Parameter(torch.tensor(m)), "c", reduction, k, **kw)


def inputs(n=4, shape=(2, 3, 4, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


# ---- the module ---------------------------------------------------------------------------------------------
def test_mask_is_normalised_and_clip_renormalise():
    m = make([0.5, 0.5, 0.5, 0.5])
    assert torch.allclose(m.arch_weights, torch.full((4,), 0.25))
    with torch.no_grad():
        m.arch_weights.copy_(torch.tensor([-0.2, 0.3, 1.5, 0.2]))
    m.clamp_()
    assert torch.allclose(m.arch_weights, torch.tensor([0.0, 0.3, 1.0, 0.2]) / 1.5)
    z = torch.tensor([-1.0, 0.0, -3.0])
    assert torch.equal(normalise_mask(z), torch.full((3,), 1 / 3))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_training_forward_uses_exactly_k_inputs(k):
    m = make([0.1, 0.4, 0.2, 0.3], k=k).train()
    xs = inputs()
    for _ in range(10):
        out = m(xs)
        sel = m.last_selection
        assert len(sel) == k == len(set(sel))
        torch.testing.assert_close(out, sum(xs[t] for t in sel))  # the value is the binary selection's


def test_reductions_in_training():
    xs = inputs()
    m = make([0.1, 0.4, 0.2, 0.3], k=2, reduction="none").train()
    out = m(xs)
    sel = m.last_selection
    assert len(out) == 4  # all candidates: the unselected are exactly zero and carry the gradient only
    assert [bool(torch.count_nonzero(o)) for o in out] == [t in sel for t in range(4)]
    for t in sel:
        torch.testing.assert_close(out[t], xs[t])
    m.grad_to_unselected = False
    out = m(xs)
    assert len(out) == 2
    for o, t in zip(out, m.last_selection):
        torch.testing.assert_close(o, xs[t])
    mean = make([0.1, 0.4, 0.2, 0.3], k=2, reduction="mean").train()
    torch.testing.assert_close(mean(xs), sum(xs[t] for t in mean.last_selection) / 2)
    cat = make([0.1, 0.4, 0.2, 0.3], k=2, reduction="concat").train()
    out = cat(xs)
    torch.testing.assert_close(out, torch.cat([xs[t] for t in cat.last_selection], dim=1))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_straight_through_gradient_reaches_every_mask_entry(reduction):
    m = make([0.1, 0.4, 0.2, 0.3], k=2, reduction=reduction).train()
    xs = inputs()
    g = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    out = m(xs)
    total = out if reduction == "sum" else sum(out)
    (total * g).sum().backward()
    expected = torch.stack([(g * x).sum() for x in xs])  # dL/dm_t = <dL/dout, x_t>, selected or not
    torch.testing.assert_close(m.arch_weights.grad, expected)
    assert torch.count_nonzero(m.arch_weights.grad) == 4


def test_eval_and_export_keep_the_top_k():
    m = make([0.1, 0.4, 0.2, 0.3], k=2, reduction="none").eval()
    xs = inputs()
    out = m(xs)
    assert m.last_selection == [1, 3] and len(out) == 2
    torch.testing.assert_close(out[0], xs[1])
    assert m.export({}) == {"c": [1, 3]} and m.export({"c": [0]}) == {}
    tie = make([0.25, 0.25, 0.25, 0.25], k=3)
    assert tie.top_k() == [0, 1, 2]  # ties: lower index


def test_fewer_candidates_than_k_keeps_all():
    m = make([0.9, 0.1], k=3, reduction="none").train()
    xs = inputs(2)
    assert m.n_selected == 2 and len([o for o in m(xs) if torch.count_nonzero(o)]) == 2
    assert m.last_selection == [0, 1] and m.export({}) == {"c": [0, 1]}


def test_sampling_is_proportional_to_the_mask():
    torch.manual_seed(0)
    m = make([0.7, 0.2, 0.1, 0.0], k=1).train()
    counts = torch.zeros(4)
    for _ in range(2000):
        counts[m.sample()[0]] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.04)
    assert counts[3] == 0
    m2 = make([0.5, 0.5, 0.0, 0.0], k=2)
    assert all(m2.sample() == [0, 1] for _ in range(50))  # zero entries only when nothing else is left
    m3 = make([1.0, 0.0, 0.0, 0.0], k=2)
    assert all(len(set(m3.sample())) == 2 and 0 in m3.sample() for _ in range(20))


def test_bad_arguments():
    with pytest.raises(ValueError, match="k .*integer >= 1.*got 0"):
        make([0.5, 0.5], k=0)
    with pytest.raises(ValueError, match="k .*got 2.5"):
        MaskConnect(k=2.5)
    with pytest.raises(ValueError, match="MaskConnect does not take 'lambda_sparse'"):
        MaskConnect(k=2, lambda_sparse=0.1)
    with pytest.raises(ValueError, match="L1 fixes loss='l1'"):
        L1(loss="sparsemask")
    with frozen_context():
        choice = InputChoice(3, n_chosen=None, label="x")
    with pytest.raises(ValueError, match=r"mutate_kwargs\['k'\]"):
        MaskConnectInput.mutate(choice, "x", {}, {})


def test_l1_is_sparsemask_with_the_l1_loss():
    s = L1(lambda_sparse=L1_LAMBDAS[1])
    assert isinstance(s, SparseMask) and s.config.loss == "l1" and s.config.lambda_sparse == 5e-3
    assert L1_LAMBDAS == (1e-3, 5e-3, 1e-2) and MASKCONNECT_KS == (2, 3, 4, 5)


def test_l1_trains_one_step_on_the_fdn_space():
    from nni_sparsemask.nas.strategy import SparseMaskLightningModule

    torch.manual_seed(0)
    strategy = L1(lambda_sparse=1.0)
    space = strategy.mutate_model(FDNSpace(num_classes=3, decoder_channels=8, **CONVNET))
    module = SparseMaskLightningModule(tnn.Module(), strategy.config)
    module.model = space  # regulariser() needs only the supernet modules
    reg = module.regulariser()
    ws = [m.arch_weights for m in module.sparse_modules().values()]
    assert len(ws) == 4 and reg.item() > 0
    assert reg.item() == pytest.approx(sum(w.abs().sum().item() for w in ws), rel=1e-5)
    out = space(torch.randn(2, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32))) + reg
    loss.backward()
    before = [w.detach().clone() for w in ws]
    torch.optim.SGD(space.parameters(), lr=0.01).step()
    assert all(not torch.equal(b, w) for b, w in zip(before, ws))


# ---- on the FDN space -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 5])
def test_fdn_space_keeps_exactly_k_per_stage(k):
    torch.manual_seed(0)
    space = MaskConnect(k=k, seed=3).mutate_model(FDNSpace(num_classes=3, decoder_channels=8, **CONVNET))
    mods = {m.label: m for m in space.modules() if isinstance(m, MaskConnectInput)}
    assert sorted(mods) == ["D1", "D2", "D3", "D4"]
    x = torch.randn(2, 3, 32, 32)
    out = space.train()(x)
    for label, m in mods.items():
        assert len(m.last_selection) == min(k, m.n_candidates)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.count_nonzero(mods["D1"].arch_weights.grad) == mods["D1"].n_candidates  # every entry of D1
    before = {label: m.arch_weights.detach().clone() for label, m in mods.items()}
    torch.optim.SGD(space.parameters(), lr=0.1).step()  # one training step, then the projection
    for m in mods.values():
        m.clamp_()
        assert m.arch_weights.sum().item() == pytest.approx(1.0, abs=1e-5) and m.arch_weights.min() >= 0
    assert not torch.equal(before["D1"], mods["D1"].arch_weights)
    space.eval()
    with torch.no_grad():
        assert space(x).shape == (2, 3, 32, 32)
    for label, m in mods.items():
        assert m.last_selection == m.top_k() and len(m.top_k()) == min(k, m.n_candidates)


def test_strategy_keeps_sparsemask_machinery():
    s = MaskConnect(k=3, seed=1)
    assert s.k == 3 and s.config.k == 3 and s.config.loss == "task" and s.config.lambda_sparse == 0
    hooks = s.default_mutation_hooks()
    assert hooks[0].keywords == {"k": 3, "grad_to_unselected": True}
    assert "k=3" in repr(s)


def test_maskconnect_takes_no_noise_on_its_mask():
    assert MaskConnect().config.arc_noise == 0.0  # SparseMask's default noise does not apply to a sampled selection
    with pytest.raises(ValueError, match="arc_noise must be 0"):
        MaskConnect(arc_noise=0.05)


# ---- under NasExperiment -------------------------------------------------------------------------------------
def toy_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, 4, generator=g)
    x[:, 1, :] += 1.5 * torch.where(y == 0, 1.0, -1.0)[:, None]
    x[:, 4, :] += 1.5 * torch.where(y == 1, 1.0, torch.where(y == 2, -1.0, 0.0))[:, None]
    return x.reshape(n, 24), y


class Toy(ModelSpace):
    """Six branches, two informative (1 and 4); an InputChoice(n_chosen=None) over them."""

    def __init__(self):
        super().__init__()
        self.branches = tnn.ModuleList(
            [tnn.Sequential(tnn.Linear(4, 8), tnn.BatchNorm1d(8, affine=False)) for _ in range(6)])
        self.choice = InputChoice(6, n_chosen=None, reduction="sum", label="branches")
        self.head = tnn.Linear(8, 3)

    def forward(self, x):
        xs = x.view(-1, 6, 4)
        return self.head(torch.relu(self.choice([b(xs[:, t]) for t, b in enumerate(self.branches)])))


def test_maskconnect_finds_the_informative_pair_under_nas_experiment():
    torch.manual_seed(0)
    td = nni.trace(torch.utils.data.TensorDataset)
    xtr, ytr = toy_data(2048, 0)
    xva, yva = toy_data(256, 1)
    evaluator = Classification(
        learning_rate=1e-2, num_classes=3,
        train_dataloaders=DataLoader(td(xtr, ytr), batch_size=64, shuffle=True),
        val_dataloaders=DataLoader(td(xva, yva), batch_size=256),
        max_epochs=12, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0)
    strategy = MaskConnect(k=2, arc_learning_rate=0.02)
    exp = NasExperiment(Toy(), evaluator, strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp.run()
    assert exp.export_top_models(formatter="dict") == [{"branches": [1, 4]}]
    m = strategy.weights()["branches"]
    assert sum(m) == pytest.approx(1.0, abs=1e-5) and min(m) >= 0.0
    assert len(strategy.history()) == 12 and strategy.history()[0] != strategy.history()[-1]
    with pytest.raises(ValueError, match="connectivity_from_weights"):
        strategy.connectivity()


def test_connectivity_of_an_fdn_search(tmp_path):
    """MaskConnect on FDNSpace with the project's Segmentation evaluator: top-k export -> pruned Connectivity."""
    from nni_sparsemask.fdn.pruned import build_pruned
    from nni_sparsemask.run.lightning import DigitScenesLoader, Segmentation

    torch.manual_seed(0)
    cache = str(tmp_path / "cache")
    data = dict(image_size=32, num_scenes=12, cache_dir=cache)
    evaluator = Segmentation(
        num_classes=11, learning_rate=0.01,
        train_dataloaders=DigitScenesLoader(batch_size=4, shuffle=True, split="train", **data),
        val_dataloaders=DigitScenesLoader(batch_size=6, split="val", **data),
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    space = FDNSpace(num_classes=11, decoder_channels=8, **CONVNET)
    strategy = MaskConnect(k=2, arc_learning_rate=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NasExperiment(space, evaluator, strategy).run()
    exported = strategy.export()
    assert sorted(exported) == ["D1", "D2", "D3", "D4"]
    assert all(len(v) == 2 for v in exported.values())  # every stage here has >= 2 candidates
    conn = strategy.connectivity()
    assert conn.meta["k"] == 2 and sorted(conn.meta["mask"]) == ["D1", "D2", "D3", "D4"]
    assert len(conn.history) == 1
    candidates = {label: space.candidates(label) for label in exported}
    for stage in conn.stages():  # pruning may drop dead stages, never add inputs
        assert set(conn.inputs(stage)) <= {candidates[stage][t] for t in exported[stage]}
    assert set(conn.inputs("D1")) == {candidates["D1"][t] for t in exported["D1"]} - {
        s for s in candidates["D1"] if s.startswith("D") and s not in conn.stages()}
    net = build_pruned(conn, num_classes=11, decoder_channels=8).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 11, 32, 32)
