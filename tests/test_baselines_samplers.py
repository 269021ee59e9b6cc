"""Rand and Rand (Rule) samplers: validity, reproducibility by seed, the rule, distinct samples, one training step."""
import pytest
import torch

from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.baselines.samplers import (rand_rule_connectivities, rand_rule_connectivity,
                                               random_connectivities, random_connectivity)
from nni_sparsemask.fdn.connectivity import Connectivity, candidate_names
from nni_sparsemask.fdn.pruned import build_pruned
from helpers import MNV2_INFO, RESNET_INFO


def edge_set(conn):
    return {(e.target, e.source) for e in conn.edges}


def reaches_head(conn):
    """D1 (the output) is computed from live stages only: every decoder source of a live stage is live."""
    live = set(conn.stages())
    return conn.output in live and all(not e.source.startswith("D") or e.source in live for e in conn.edges)


@pytest.mark.parametrize("info", [MNV2_INFO, RESNET_INFO])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 1.0])
def test_random_samples_are_valid_and_pruned(info, density):
    for seed in range(5):
        conn = random_connectivity("b", info, density=density, seed=seed)
        assert reaches_head(conn)
        assert edge_set(conn.prune(threshold=None)) == edge_set(conn)  # already pruned
        assert edge_set(Connectivity.from_json(conn.to_json())) == edge_set(conn)
        assert conn.meta["sampler"] == "random" and conn.meta["seed"] == seed
    if density == 1.0:
        assert edge_set(conn) == edge_set(Connectivity.dense("b", info))


def test_random_is_reproducible_by_seed():
    a = random_connectivity("b", MNV2_INFO, seed=11)
    b = random_connectivity("b", MNV2_INFO, seed=11)
    c = random_connectivity("b", MNV2_INFO, seed=12)
    assert edge_set(a) == edge_set(b) and a.to_json() == b.to_json()
    assert edge_set(a) != edge_set(c)
    many = random_connectivities("b", MNV2_INFO, 6, seed=11)
    again = random_connectivities("b", MNV2_INFO, 6, seed=11)
    assert [c.to_json() for c in many] == [c.to_json() for c in again]
    assert edge_set(many[0]) == edge_set(a)
    assert [edge_set(c) for c in random_connectivities("b", MNV2_INFO, 3, seed=11)] == \
        [edge_set(c) for c in many[:3]]  # a longer list extends a shorter one


def test_density_shapes_the_samples():
    sparse = random_connectivities("b", MNV2_INFO, 5, density=0.2, seed=0)
    dense = random_connectivities("b", MNV2_INFO, 5, density=0.8, seed=0)
    assert max(c.num_edges for c in sparse) < min(c.num_edges for c in dense)


def test_samples_are_distinct():
    samples = random_connectivities("b", RESNET_INFO, 20, density=0.1, seed=3)
    assert len({frozenset(edge_set(c)) for c in samples}) == 20
    # a one-stage encoder has only 3 valid decoders (D1 reads a non-empty subset of {E1, G}): asking for 4 fails
    info = RESNET_INFO[:1]
    assert len(random_connectivities("b", info, 3, seed=0, max_tries=50)) == 3
    with pytest.raises(ValueError, match="only 3 distinct decoders"):
        random_connectivities("b", info, 4, seed=0, max_tries=50)


@pytest.mark.parametrize("info", [MNV2_INFO, RESNET_INFO])
def test_rand_rule_obeys_the_rule(info):
    L = len(info)
    d1_sizes, inner = set(), set()
    for conn in rand_rule_connectivities("b", info, 30, seed=1):
        assert reaches_head(conn) and conn.output == "D1"
        for stage in conn.stages():
            level = int(stage[1:])
            inputs = set(conn.inputs(stage))
            assert inputs, stage
            if stage != "D1":
                assert inputs <= {f"E{level}", "G"}, (stage, inputs)
                inner.add(frozenset(i[0] for i in inputs))
            else:
                assert inputs <= set(candidate_names(1, L))
                d1_sizes.add(len(inputs))
    # the sampler explores: inner stages with E only, G only and both; D1 with different numbers of inputs
    assert inner == {frozenset("E"), frozenset("G"), frozenset("EG")}
    assert len(d1_sizes) >= 3


def test_rand_rule_reproducible_and_checked():
    a = rand_rule_connectivity("b", RESNET_INFO, seed=4)
    assert a.to_json() == rand_rule_connectivity("b", RESNET_INFO, seed=4).to_json()
    assert a.meta["sampler"] == "rand_rule"
    with pytest.raises(ValueError, match=r"density.*\(0, 1\].*0"):
        rand_rule_connectivity("b", RESNET_INFO, density=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        random_connectivity("b", RESNET_INFO, seed=-1)
    with pytest.raises(ValueError, match="n .*>= 1"):
        random_connectivities("b", RESNET_INFO, 0)


@pytest.mark.parametrize("sampler", [random_connectivity, rand_rule_connectivity])
def test_samples_train_one_step_and_evaluate(sampler):
    encoder = build_backbone("convnet", widths=(4, 6, 8, 10))
    conn = sampler("convnet", encoder.feature_info, seed=0, backbone_kwargs={"widths": (4, 6, 8, 10)})
    net = build_pruned(conn, num_classes=3, decoder_channels=8, encoder=encoder)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    before = net.head.classifier.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, net.head.classifier.weight)
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 32, 32)
