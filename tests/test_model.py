import pytest
import torch

from nni_sparsemask import Connectivity, FDNSpace, build_pruned
from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.fdn.connectivity import Edge
from nni_sparsemask.fdn.pruned import decoder_parameter_count
from helpers import TINY, MNV2_INFO


@pytest.fixture(scope="module")
def encoder():
    return build_backbone("mobilenet_v2", width_mult=0.25)


def small_conn(encoder):
    # width 0.25 channels: E1=8, E4=8, E9=1280; D9 <- {E9, G}; D4 <- {E4, D9}; D1 <- {E1, D4, G}
    edges = [Edge("D9", "E9"), Edge("D9", "G"), Edge("D4", "E4"), Edge("D4", "D9"),
             Edge("D1", "E1"), Edge("D1", "D4"), Edge("D1", "G")]
    return Connectivity("mobilenet_v2", encoder.feature_info, edges, backbone_kwargs={"width_mult": 0.25})


def test_parameter_count_equals_hand_count(encoder):
    conn = small_conn(encoder)
    net = build_pruned(conn, num_classes=11, decoder_channels=16, encoder=encoder)
    c, k = 16, 11
    by_hand = (1280 * c + c) + (1280 * c + c) + (8 * c + c) + (c * c + c) \
        + (8 * c + c) + (c * c + c) + (1280 * c + c) + (c * k + k)
    decoder = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("encoder."))
    assert decoder == by_hand == decoder_parameter_count(conn, 11, 16)
    # no w, no BN anywhere in the decoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.decoder.modules())
    assert sorted(net.decoder.keys()) == ["D1", "D4", "D9"]


def test_pruned_net_runs_at_odd_sizes_and_exports(encoder):
    net = build_pruned(small_conn(encoder), num_classes=3, decoder_channels=8, encoder=encoder).eval()
    x = torch.randn(1, 3, 50, 70)
    out = net(x)
    assert out.shape == (1, 3, 50, 70)
    exported = torch.export.export(net, (x,))
    assert torch.allclose(exported.module()(x), out, atol=1e-5)


def test_dense_pruned_net_equals_the_space_without_bn_at_w_one():
    """The final net is the super-network with w and per-edge BN removed: same weights, same output."""
    torch.manual_seed(0)
    space = FDNSpace(num_classes=4, decoder_channels=8, edge_bn=False, **TINY).eval()
    conn = space.dense_connectivity()
    net = build_pruned(conn, num_classes=4, decoder_channels=8).eval()
    net.encoder.load_state_dict(space.encoder.state_dict())
    net.head.load_state_dict(space.head.state_dict())
    for label in space.labels():
        order = space.candidates(label)
        for j, src in enumerate(net.stage_inputs[label]):
            net.decoder[label].edges[j].load_state_dict(space.edges[label][order.index(src)].state_dict())
    x = torch.randn(2, 3, 40, 40)
    assert torch.allclose(net(x), space(x), atol=1e-5)


def test_connectivity_from_another_backbone_is_rejected(encoder):
    conn = Connectivity("mobilenet_v2", MNV2_INFO, [Edge("D1", "E1")])  # width 1.0 channels
    with pytest.raises(ValueError, match="conn.transfer"):
        build_pruned(conn, num_classes=3, encoder=encoder)
    with pytest.raises(ValueError, match="num_classes"):
        build_pruned(small_conn(encoder), num_classes=0, encoder=encoder)
    with pytest.raises(ValueError, match="needs a Connectivity"):
        build_pruned({"edges": []}, num_classes=3)


def test_transferred_connectivity_builds_on_resnet():
    conn = small_conn(build_backbone("mobilenet_v2", width_mult=0.25))
    moved = conn.transfer("resnet18")
    net = build_pruned(moved, num_classes=3, decoder_channels=8).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert moved.stages() == ["D5", "D3", "D1"]
