"""Inference cost counts: operator calls, FLOPs and bytes written, checked against hand-computed values."""
import pytest
import torch
from torch import nn

from nni_sparsemask.run.registry import decoder_connectivity
from nni_sparsemask.measure.cost import InferenceCost, inference_cost
from nni_sparsemask.fdn.pruned import build_pruned

CONVNET = {"widths": [4, 8, 8, 8, 8]}


def test_counts_of_a_hand_computed_network():
    # conv 1x1 3->8 on 4x4: 2*8*3*16 = 768 FLOPs, output 8*16 floats; ReLU6 the same bytes; bilinear x2: 8*64
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Upsample(scale_factor=2, mode="bilinear"))
    cost = inference_cost(net, (4, 4))
    assert cost == InferenceCost(ops=3, flops=768, bytes_written=4 * (8 * 16 + 8 * 16 + 8 * 64))


class _Broadcast(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True).expand_as(x)  # a reduction (counted) and a view (not counted)


def test_views_are_not_counted_and_the_training_flag_is_restored():
    net = _Broadcast().train()
    assert inference_cost(net, (8, 8), in_channels=2) == InferenceCost(ops=1, flops=0, bytes_written=4 * 2)
    assert net.training


def test_deployment_form_folds_bn_away():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    as_given, deployed = inference_cost(net, 8), inference_cost(net, 8, inference=True)
    assert (as_given.ops, deployed.ops) == (2, 1)
    assert deployed.flops == as_given.flops == 2 * 8 * 3 * 9 * 64
    assert isinstance(net[1], nn.BatchNorm2d)  # the model itself is untouched


def test_sparser_decoders_cost_less_in_every_count():
    costs = {}
    for name in ("fdn", "unet", "fcn"):
        conn = decoder_connectivity(name, "convnet", None, CONVNET)
        costs[name] = inference_cost(build_pruned(conn, 11, decoder_channels=8, backbone_kwargs=CONVNET), 32,
                                     inference=True)
    for field in ("ops", "flops", "bytes_written"):
        assert getattr(costs["fdn"], field) > getattr(costs["unet"], field) > getattr(costs["fcn"], field)
    ratio = costs["fcn"].ratio(costs["fdn"])
    assert ratio["ops"] == costs["fdn"].ops / costs["fcn"].ops > 1


@pytest.mark.parametrize("size", [0, (4, -1)])
def test_bad_input_size_is_refused(size):
    with pytest.raises(ValueError, match="must be positive"):
        inference_cost(nn.Conv2d(3, 3, 1), size)
