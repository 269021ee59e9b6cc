"""Hand-designed decoders (FCN, U-Net, SparseACN, FDN) as Connectivity objects, the registry, one training step."""
import pytest
import torch

from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.baselines import decoders as d
from nni_sparsemask.run.registry import (DECODERS, STRATEGIES, Registry, build_decoder, build_strategy,
                                               decoder_connectivity, validate_strategy_args)
from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.fdn.pruned import build_pruned
from helpers import MNV2_INFO, RESNET_INFO

BUILDERS = {"fcn": d.fcn, "unet": d.unet, "sparseacn": d.sparseacn, "fdn": d.dense}
INFOS = {"mobilenet_v2": MNV2_INFO, "resnet18": RESNET_INFO}


def edge_set(conn):
    return {(e.target, e.source) for e in conn.edges}


# ---- definitions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", sorted(INFOS))
def test_fcn_is_a_single_path(backbone):
    info = INFOS[backbone]
    conn = d.fcn(backbone, info)
    assert edge_set(conn) == {("D1", f"E{len(info)}")}
    assert conn.stages() == ["D1"] and conn.output == "D1"


@pytest.mark.parametrize("backbone", sorted(INFOS))
def test_unet_is_a_chain(backbone):
    info = INFOS[backbone]
    L = len(info)
    conn = d.unet(backbone, info)
    assert conn.inputs(f"D{L}") == [f"E{L}"]
    for l in range(1, L):
        assert conn.inputs(f"D{l}") == [f"E{l}", f"D{l + 1}"]
    assert conn.num_edges == 2 * L - 1


def test_sparseacn_offsets_for_mobilenet_v2():
    conn = d.sparseacn("mobilenet_v2", MNV2_INFO)
    # chain x_0 = E9, x_1 = D9, ..., x_9 = D1; D_l = x_n (n = 10 - l) reads x_{n - 2^k} plus its lateral E_l
    expected = {
        "D9": ["E9"],
        "D8": ["E8", "E9", "D9"],
        "D7": ["E7", "D8", "D9"],
        "D6": ["E6", "E9", "D7", "D8"],
        "D5": ["E5", "D6", "D7", "D9"],
        "D4": ["E4", "D5", "D6", "D8"],
        "D3": ["E3", "D4", "D5", "D7"],
        "D2": ["E2", "E9", "D3", "D4", "D6"],
        "D1": ["E1", "D2", "D3", "D5", "D9"],
    }
    assert {s: conn.inputs(s) for s in conn.stages()} == expected


@pytest.mark.parametrize("L", [1, 2, 5, 9, 12])
def test_sparseacn_follows_the_power_of_two_rule(L):
    for l in range(1, L + 1):
        n = L - l + 1
        chain = {0: f"E{L}", **{j: f"D{L - j + 1}" for j in range(1, L + 1)}}
        offsets = [2 ** k for k in range(n.bit_length()) if 2 ** k <= n]
        expected = {f"E{l}"} | {chain[n - o] for o in offsets}
        assert set(d.sparseacn_sources(l, L)) == expected
        # every source is a legal FDN candidate and a power-of-two offset away in the chain
        assert all(n - [j for j, s in chain.items() if s == src][0] in offsets
                   for src in expected - {f"E{l}"})


def test_sparseacn_resnet18():
    conn = d.sparseacn("resnet18", RESNET_INFO)
    assert conn.inputs("D1") == ["E1", "D2", "D3", "D5"]  # n = 5: offsets 1, 2, 4 -> x_4, x_3, x_1
    assert conn.inputs("D2") == ["E2", "E5", "D3", "D4"]        # n = 4: offset 4 reaches x_0 = E5


def test_dense_is_every_edge():
    conn = d.dense("mobilenet_v2", MNV2_INFO)
    assert edge_set(conn) == edge_set(Connectivity.dense("mobilenet_v2", MNV2_INFO))
    assert conn.num_edges == sum(2 * (9 - l) + 2 for l in range(1, 10))
    assert d.fdn is d.dense


# ---- validity: JSON round trip, prunable (already minimal), buildable -------------------------------------
@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("backbone", sorted(INFOS))
def test_valid_round_trip_and_prunable(name, backbone):
    conn = BUILDERS[name](backbone, INFOS[backbone], {"x": 1})
    again = Connectivity.from_json(conn.to_json())
    assert edge_set(again) == edge_set(conn) and again.backbone_kwargs == {"x": 1}
    assert again.meta["decoder"] == name
    pruned = conn.prune(threshold=None)
    assert edge_set(pruned) == edge_set(conn) and pruned.output == "D1"
    assert edge_set(conn.prune(threshold=0.5)) == edge_set(conn)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("backbone, kwargs", [("mobilenet_v2", {"width_mult": 0.25}), ("resnet18", {})])
def test_build_pruned_real_backbones(name, backbone, kwargs):
    encoder = build_backbone(backbone, **kwargs)
    conn = BUILDERS[name](backbone, encoder.feature_info, kwargs)
    net = build_pruned(conn, num_classes=3, decoder_channels=8, encoder=encoder).eval()
    assert sorted(net.decoder.keys()) == sorted(conn.stages())
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_empty_feature_info_is_refused():
    with pytest.raises(ValueError, match="feature_info is empty"):
        d.unet("x", [])
    with pytest.raises(ValueError, match="D10 does not exist"):
        d.sparseacn_sources(10, 9)


# ---- every decoder trains one step and evaluates ------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcn", "unet", "sparseacn", "fdn", "deeplabv3"])
def test_every_decoder_trains_one_step_and_evaluates(name):
    torch.manual_seed(0)
    net = build_decoder(name, "mobilenet_v2", num_classes=3, decoder_channels=8,
                        backbone_kwargs={"width_mult": 0.25})
    assert isinstance(net.encoder, torch.nn.Module)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert torch.isfinite(loss) and changed > 0
    assert any(not torch.equal(b, p) for b, (n, p) in zip(before, net.named_parameters())
               if not n.startswith("encoder."))  # the decoder itself learned
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


# ---- registries -------------------------------------------------------------------------------------------
def test_registry_refuses_duplicates_and_unknown_names():
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="unknown thing 'b'; known things: a"):
        reg.get("b")
    assert "a" in reg and list(reg) == ["a"] and len(reg) == 1 and reg["a"] == 1


def test_known_decoders_and_strategies():
    assert DECODERS.names() == ["deeplabv3", "fcn", "fdn", "smp-deeplabv3plus", "smp-fpn", "smp-linknet", "smp-pan",
                                "smp-unet", "sparseacn", "unet"]  # smp-*: tests/test_smp_peers.py
    assert STRATEGIES.names() == ["l1", "maskconnect", "rand_rule", "random", "sparsemask"]
    with pytest.raises(ValueError, match="unknown decoder 'pspnet'.*deeplabv3, fcn, fdn, smp-.*sparseacn, unet"):
        build_decoder("pspnet")
    with pytest.raises(ValueError, match="unknown strategy 'enas'.*l1, maskconnect"):
        validate_strategy_args("enas", {})


def test_decoder_connectivity_measures_feature_info():
    conn = decoder_connectivity("unet", "convnet", backbone_kwargs={"widths": (4, 6, 8)})
    assert conn.num_stages == 3 and conn.backbone_kwargs == {"widths": (4, 6, 8)}
    with pytest.raises(ValueError, match="'deeplabv3' is not a point of the FDN space"):
        decoder_connectivity("deeplabv3")


def test_strategy_arguments_are_validated():
    assert validate_strategy_args("maskconnect", {"k": 3}) == {"k": 3, "seed": 0}
    assert validate_strategy_args("random", {"samples": 4, "density": None}) == {"samples": 4, "density": 0.5,
                                                                                 "seed": 0}
    assert validate_strategy_args("l1", {"lambda_sparse": 5e-3}, fill_defaults=False) == {"lambda_sparse": 5e-3}
    with pytest.raises(ValueError, match=r"'sparsemask' does not accept 'k' \(it belongs to maskconnect\); "
                                         r"it accepts: arc_warmup_epochs, budget, cost, cost_weight, lambda_sparse, "
                                         r"seed, speedup, target_fps, threshold"):
        validate_strategy_args("sparsemask", {"k": 3})
    with pytest.raises(ValueError, match=r"'maskconnect' does not accept 'lambda_sparse' \(it belongs to l1, "
                                         r"sparsemask\)"):
        validate_strategy_args("maskconnect", {"lambda_sparse": 0.1})
    with pytest.raises(ValueError, match=r"'density' \(it belongs to rand_rule, random\)"):
        validate_strategy_args("sparsemask", {"density": 0.3})
    with pytest.raises(ValueError, match="'foo' \\(no strategy takes it\\)"):
        validate_strategy_args("random", {"foo": 1})
    with pytest.raises(ValueError, match="'k' of strategy 'maskconnect' must be an integer"):
        validate_strategy_args("maskconnect", {"k": 2.5})
    with pytest.raises(ValueError, match=r"'k' of strategy 'maskconnect' must be in \[2, 5\], got 0"):
        validate_strategy_args("maskconnect", {"k": 0})
    with pytest.raises(ValueError, match=r"'density'.*must be in \(0.0, 1.0\], got 1.5"):
        validate_strategy_args("random", {"density": 1.5})
    with pytest.raises(ValueError, match=r"'threshold'.*\(0.0, 1.0\)"):
        validate_strategy_args("sparsemask", {"threshold": 1.0})


def test_build_strategy():
    from nni_sparsemask.baselines.maskconnect import L1, MaskConnect
    from nni_sparsemask.run.registry import ConnectivitySampler
    from nni_sparsemask.nas.strategy import SparseMask

    mc = build_strategy("maskconnect", {"k": 4}, arc_learning_rate=0.05)
    assert isinstance(mc, MaskConnect) and mc.k == 4 and mc.config.arc_learning_rate == 0.05
    l1 = build_strategy("l1", {"lambda_sparse": 1e-2})
    assert isinstance(l1, L1) and l1.config.loss == "l1" and l1.config.lambda_sparse == 1e-2
    sm = build_strategy("sparsemask")
    assert type(sm) is SparseMask and sm.config.lambda_sparse == 0.01
    rnd = build_strategy("rand_rule", {"samples": 2, "seed": 5})
    assert rnd == ConnectivitySampler("rand_rule", samples=2, density=0.5, seed=5)
    assert len(rnd.sample("resnet18", RESNET_INFO)) == 2
    with pytest.raises(ValueError, match="sampler and takes only"):
        build_strategy("random", {}, run_dir="x")
    with pytest.raises(ValueError, match="give k in args"):
        build_strategy("maskconnect", {}, k=3)


def test_package_exports_lazily():
    import nni_sparsemask.baselines as b

    assert b.unet is d.unet and "DECODERS" not in b.__all__  # the registry is the run layer's
    assert "MaskConnect" in b.__all__ and "DeepLabV3" in b.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        b.nope
