import pytest
import torch
import torch.nn as tnn
from nni.mutable import frozen_context
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from nni.nas.nn.pytorch.choice import ChosenInputs

from nni_sparsemask.nas.strategy import SparseMask
from nni_sparsemask.nas.supermodule import SparseMixedInput, init_arch_weights


def make(w, reduction="sum", threshold=1e-3, label="c"):
    return SparseMixedInput(len(w), tnn.Parameter(torch.tensor(w)), label, reduction, threshold)


def inputs(n=3, shape=(2, 2, 3, 3)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("reduction", ["sum", "mean", "concat", "none"])
def test_forward_honours_reduction(reduction):
    w = [0.2, 1.0, 0.0]
    xs = inputs()
    out = make(w, reduction)(xs)
    weighted = [wt * x for wt, x in zip(w, xs)]
    if reduction == "sum":
        torch.testing.assert_close(out, weighted[0] + weighted[1] + weighted[2])
    elif reduction == "mean":
        torch.testing.assert_close(out, (weighted[0] + weighted[1] + weighted[2]) / 3)
    elif reduction == "concat":
        assert out.shape == (2, 6, 3, 3)
        torch.testing.assert_close(out[:, 2:4], xs[1])
        assert torch.all(out[:, 4:] == 0)
    else:
        assert isinstance(out, list) and len(out) == 3
        for a, b in zip(out, weighted):
            torch.testing.assert_close(a, b)


def test_gradient_reaches_w():
    m = make([0.5, 0.5, 0.5], "sum")
    xs = inputs()
    m(xs).sum().backward()
    expected = torch.stack([x.sum() for x in xs])
    torch.testing.assert_close(m.arch_weights.grad, expected)


def test_export_export_probs_and_spec():
    m = make([0.5, 1e-4, 0.0, 1e-3, 0.9], threshold=1e-3, label="D3")
    assert m.export({}) == {"D3": [0, 3, 4]}
    assert all(isinstance(i, int) for i in m.export({})["D3"])
    assert m.export({"D3": [1]}) == {}  # already exported under this label
    probs = m.export_probs({})["D3"]
    assert list(probs) == [0, 1, 2, 3, 4] and probs[4] == pytest.approx(0.9)
    spec = m.search_space_spec()["D3"]
    assert list(spec.values) == [0, 1, 2, 3, 4] and spec.n_chosen is None


def test_clamp_and_parameter_name():
    m = make([-0.3, 0.4, 1.7])
    m.clamp_()
    assert m.arch_weights.tolist() == pytest.approx([0.0, 0.4, 1.0])
    assert [n for n, _ in m.named_parameters()] == ["_arch_w"]
    assert list(m.arch_parameters()) == [m.arch_weights]


def test_bad_construction():
    with pytest.raises(ValueError, match="3 entries"):
        SparseMixedInput(3, tnn.Parameter(torch.zeros(2)), "c")
    with pytest.raises(ValueError, match="reduction"):
        make([0.5, 0.5], reduction="max")
    with pytest.raises(ValueError, match="threshold"):
        make([0.5, 0.5], threshold=0.0)
    with pytest.raises(ValueError, match="expects 3 candidate inputs, got 2"):
        make([0.5, 0.5, 0.5])(inputs(2))


def test_init_is_near_half_and_seeded():
    a = init_arch_weights(6, generator=torch.Generator().manual_seed(3))
    b = init_arch_weights(6, generator=torch.Generator().manual_seed(3))
    c = init_arch_weights(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all((a - 0.5).abs() < 0.05) and a.std() > 0


class Space(ModelSpace):
    def __init__(self, reduction="sum"):
        super().__init__()
        self.lin = tnn.ModuleList([tnn.Linear(4, 4) for _ in range(3)])
        self.a = InputChoice(3, n_chosen=None, reduction=reduction, label="a")
        self.b = InputChoice(3, n_chosen=None, reduction=reduction, label="a")  # shares the label (and w)
        self.c = InputChoice(2, n_chosen=None, reduction=reduction, label="c")
        self.layer = LayerChoice([tnn.Identity(), tnn.ReLU()], label="layer")

    def forward(self, x):
        feats = [m(x) for m in self.lin]
        y = self.a(feats) + self.b(feats)
        return self.layer(self.c([y, x]))


def test_mutation_replaces_multi_input_choices_and_shares_labels():
    space = SparseMask(seed=7).mutate_model(Space())
    assert isinstance(space.a, SparseMixedInput) and isinstance(space.c, SparseMixedInput)
    assert space.a.arch_weights is space.b.arch_weights
    assert space.c.arch_weights.numel() == 2
    assert not isinstance(space.layer, SparseMixedInput) and hasattr(space.layer, "arch_parameters")
    assert space(torch.randn(5, 4)).shape == (5, 4)
    # the same seed gives the same initial w
    again = SparseMask(seed=7).mutate_model(Space())
    assert torch.equal(again.a.arch_weights, space.a.arch_weights)
    # freezing the mutated space with an export gives NNI's ChosenInputs
    frozen = space.freeze({"a": [0, 2], "c": [1], "layer": 0})
    assert isinstance(frozen.a, ChosenInputs) and frozen.a.chosen == [0, 2]


def test_architecture_and_network_parameters_are_disjoint():
    space = SparseMask().mutate_model(Space())
    arch = {id(p) for m in space.modules() if hasattr(m, "arch_parameters") for p in m.arch_parameters()}
    names = {n for n, p in space.named_parameters() if id(p) in arch}
    assert names == {"a._arch_w", "c._arch_w", "layer._arch_alpha"}  # b's w is a's (deduplicated)
    net = {id(p) for n, p in space.named_parameters() if id(p) not in arch}
    assert len(net) == 6 and not arch & net
    assert arch | net == {id(p) for p in space.parameters()}


def test_only_multi_input_choices_are_mutated():
    memo = {}
    with frozen_context():  # InputChoice outside a ModelSpace
        single = InputChoice(3, n_chosen=1, label="single")
        multi = InputChoice(3, n_chosen=None, label="multi")
        other = InputChoice(4, n_chosen=None, label="multi")
    assert SparseMixedInput.mutate(single, "single", memo, {}) is None
    assert SparseMixedInput.mutate(tnn.Linear(2, 2), "lin", memo, {}) is None
    m = SparseMixedInput.mutate(multi, "multi", memo, {"threshold": 0.2})
    assert isinstance(m, SparseMixedInput) and memo["multi"] is m.arch_weights and m.threshold == 0.2
    with pytest.raises(ValueError, match="same number of candidates"):
        SparseMixedInput.mutate(other, "other", memo, {})
