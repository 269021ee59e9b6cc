"""The expected-cost model of fdn/costmodel.py on a 2-stage FDN, by hand.

Two stages at input 8: E1 4x4, E2 2x2, G 1x1. T_2 = [E2, G]; T_1 = [E1, E2, D2, G]. Source sizes of D1's
candidates: E1 4x4, E2 and D2 2x2 (one group), G 1x1."""
import itertools
import math

import pytest
import torch

from nni_sparsemask.fdn.backbones import FeatureInfo
from nni_sparsemask.fdn.connectivity import Connectivity, Edge
from nni_sparsemask.fdn.costmodel import DecoderCosts, connectivity_cost, dense_cost, expected_cost

SIZES = {"E1": (4, 4), "E2": (2, 2), "G": (1, 1)}
INFO = [FeatureInfo(3, 2), FeatureInfo(5, 4)]
CANDS = {"D2": ["E2", "G"], "D1": ["E1", "E2", "D2", "G"]}


def coefficients() -> DecoderCosts:
    return DecoderCosts(
        "unit", SIZES,
        edge={"D2": {"E2": 1.0, "G": 2.0}, "D1": {"E1": 3.0, "E2": 4.0, "D2": 5.0, "G": 6.0}},
        group={"D2": {"2x2": 10.0, "1x1": 20.0}, "D1": {"4x4": 30.0, "2x2": 40.0, "1x1": 50.0}},
        stage={"D2": 100.0, "D1": 200.0},
        base=1000.0,
    )


def primitives() -> DecoderCosts:
    return DecoderCosts.from_primitives(
        "unit", SIZES, conv={"E1": 1.0, "E2": 2.0, "D2": 3.0, "G": 4.0},
        add={"4x4": 10.0, "2x2": 20.0, "1x1": 30.0}, iadd={"4x4": 100.0, "2x2": 200.0},
        upsample={"2x2->4x4": 1000.0}, base=7.0)


def w_of(d2, d1, **kw):
    return {"D2": torch.tensor(d2, dtype=torch.float64, **kw), "D1": torch.tensor(d1, dtype=torch.float64, **kw)}


def conn_of(edges):
    return Connectivity("x", INFO, [Edge(t, s) for t, s in edges])


def test_expected_cost_by_hand():
    # D2: edges 0.5*1 + 0.25*2 = 1; groups 10*0.5 + 20*0.25 = 10; stage 100*(1 - 0.5*0.75) = 62.5  -> 73.5
    # D1: edges 0.5*3 + 0.5*4 + 0.2*5 + 0*6 = 4.5; groups 30*0.5 + 40*(1 - 0.5*0.8) + 50*0 = 39;
    #     stage 200*(1 - 0.5*0.5*0.8*1) = 160                                                       -> 203.5
    w = w_of([0.5, 0.25], [0.5, 0.5, 0.2, 0.0])
    assert expected_cost(w, coefficients()).item() == pytest.approx(277.0, abs=1e-12)
    assert expected_cost(w, coefficients(), include_base=True).item() == pytest.approx(1277.0, abs=1e-12)
    assert expected_cost({"D2": w["D2"]}, coefficients()).item() == pytest.approx(73.5, abs=1e-12)


def test_gradients_by_hand():
    w = w_of([0.5, 0.25], [0.5, 0.5, 0.2, 0.0], requires_grad=True)
    expected_cost(w, coefficients()).backward()
    # d/dw(D1,E2) = c_e + c_g (1 - w_D2) + c_s (1 - w_E1)(1 - w_D2)(1 - w_G) = 4 + 40*0.8 + 200*0.5*0.8 = 116
    # d/dw(D1,G)  = 6 + 50 + 200*0.5*0.5*0.8 = 96;  d/dw(D2,E2) = 1 + 10 + 100*0.75 = 86
    assert w["D1"].grad.tolist() == pytest.approx([3 + 30 + 200 * 0.5 * 0.8, 116.0, 5 + 40 * 0.5 + 200 * 0.25, 96.0])
    assert w["D2"].grad.tolist() == pytest.approx([86.0, 2 + 20 + 100 * 0.5])


def test_an_edge_whose_group_and_stage_are_already_paid_costs_only_itself():
    w = w_of([1.0, 0.0], [0.0, 0.3, 1.0, 0.0], requires_grad=True)  # D2 <- D1 on: E2's group and D1 are paid
    expected_cost(w, primitives()).backward()
    assert w["D1"].grad[1].item() == pytest.approx(2.0 + 20.0)  # conv(E2) + the add inside the 2x2 group


def test_gradients_are_positive_with_positive_primitives():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = {"D2": torch.rand(2, generator=g, dtype=torch.float64).requires_grad_(),
             "D1": torch.rand(4, generator=g, dtype=torch.float64).requires_grad_()}
        expected_cost(w, primitives()).backward()
        assert all((t.grad > 0).all() for t in w.values())


def test_primitives_follow_fuse_by_hand():
    # D2 <- E2, G: conv 2 + 4, two groups (2x2 is the target, G broadcast): one in-place add at 2x2 (200) -> 206
    # D1 <- E1, E2, D2, G: conv 1 + 2 + 3 + 4 = 10; group 2x2 = {E2, D2}: one add at 2x2 (20) and one
    #   upsampling 2x2 -> 4x4 (1000); three groups: two in-place adds at 4x4 (200)                 -> 1230
    full = conn_of([("D2", "E2"), ("D2", "G"), ("D1", "E1"), ("D1", "E2"), ("D1", "D2"), ("D1", "G")])
    assert connectivity_cost(full, primitives()) == pytest.approx(206 + 1230)
    assert connectivity_cost(full, primitives(), include_base=True) == pytest.approx(206 + 1230 + 7)
    assert dense_cost(primitives()) == pytest.approx(206 + 1230)
    assert connectivity_cost(conn_of([("D1", "E2")]), primitives()) == pytest.approx(2 + 1000)  # no add at all
    assert connectivity_cost(conn_of([("D1", "E1"), ("D1", "G")]), primitives()) == pytest.approx(1 + 4 + 100)
    assert connectivity_cost(conn_of([("D1", "E2"), ("D1", "D2"), ("D2", "E2")]),
                             primitives()) == pytest.approx(2 + (2 + 3 + 20 + 1000))


@pytest.mark.parametrize("make", [coefficients, primitives])
def test_binary_w_is_the_cost_of_that_connectivity(make):
    costs = make()
    for bits in itertools.product([0.0, 1.0], repeat=6):
        w = w_of(list(bits[:2]), list(bits[2:]))
        edges = [(label, s) for label in ("D2", "D1") for s, b in zip(CANDS[label], w[label].tolist()) if b]
        live = {s for s in costs.stage if any(t == s for t, _ in edges)}
        by_hand = sum(costs.edge[t][s] for t, s in edges) + sum(costs.stage[s] for s in live)
        by_hand += sum(costs.group[t][k] for t, k in {(t, f"{costs.source_size(s)[0]}x{costs.source_size(s)[1]}")
                                                      for t, s in edges})
        assert expected_cost(w, costs).item() == pytest.approx(by_hand, abs=1e-9)
        assert connectivity_cost(conn_of(edges), costs) == pytest.approx(by_hand, abs=1e-9)


def test_soft_w_is_the_expectation_over_independent_gates():
    w = w_of([0.3, 0.9], [0.6, 0.1, 0.45, 0.8])
    flat = w["D2"].tolist() + w["D1"].tolist()
    mean = 0.0
    for bits in itertools.product([0, 1], repeat=6):
        p = math.prod(q if b else 1 - q for q, b in zip(flat, bits))
        mean += p * expected_cost(w_of(list(map(float, bits[:2])), list(map(float, bits[2:]))), primitives()).item()
    assert expected_cost(w, primitives()).item() == pytest.approx(mean, abs=1e-9)


def test_follows_w_device_and_dtype():
    w = {"D1": torch.full((4,), 0.5, dtype=torch.float32)}
    assert expected_cost(w, primitives()).dtype == torch.float32
    assert expected_cost({}, primitives()).item() == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown decoder stage 'D3'"):
        expected_cost({"D3": torch.zeros(2)}, primitives())
    with pytest.raises(ValueError, match="D1: w has shape \\(3,\\), but D1 has 4 candidates"):
        expected_cost({"D1": torch.zeros(3)}, primitives())
    with pytest.raises(ValueError, match="expected DecoderCosts"):
        expected_cost({}, {"edge": {}})
    with pytest.raises(ValueError, match="edge costs of D1 must name E1, E2, D2, G"):
        DecoderCosts("u", SIZES, {"D2": {"E2": 1, "G": 1}, "D1": {"E1": 1}}, coefficients().group,
                     coefficients().stage)
    with pytest.raises(ValueError, match="group costs of D1 must name the source sizes"):
        DecoderCosts("u", SIZES, coefficients().edge, {"D2": {"2x2": 1, "1x1": 1}, "D1": {"4x4": 1}},
                     coefficients().stage)
    with pytest.raises(ValueError, match="name E1..E2 and G"):
        DecoderCosts("u", {"E1": (4, 4), "E2": (2, 2)}, {}, {}, {})
    with pytest.raises(ValueError, match="3 stages, the cost table 2"):
        connectivity_cost(Connectivity("x", INFO + [FeatureInfo(5, 8)], [Edge("D1", "E1")]), primitives())


def test_json_round_trip():
    costs = primitives()
    assert DecoderCosts.from_dict(costs.to_dict()) == costs
    with pytest.raises(ValueError, match="malformed decoder costs"):
        DecoderCosts.from_dict({"unit": "u"})
