import pytest
import torch
import torch.nn.functional as F

from nni_sparsemask import fusion
from nni_sparsemask.fdn.fusion import EdgeConv, FusionStage, fuse, naive_stage_forward, resize_to

from helpers import randomise_bn


@pytest.mark.parametrize("bn", [True, False])
def test_efficient_fusion_equals_upsample_concat_conv(bn):
    """Theorems 1-2: conv at the source resolution then upsample == upsample, concat, conv (eval-mode BN)."""
    torch.manual_seed(1)
    target = (13, 17)
    shapes = [(6, 13, 17), (5, 7, 9), (7, 7, 9), (3, 4, 5), (9, 1, 1)]  # two sources share 7x9; G is 1x1
    inputs = [torch.randn(2, c, h, w, dtype=torch.float64) * 3 for c, h, w in shapes]
    edges = [EdgeConv(c, 8, bn=bn).double() for c, _, _ in shapes]
    for i, e in enumerate(edges):
        if bn:
            randomise_bn(e, seed=i)
        e.eval()
    weights = torch.rand(len(edges), dtype=torch.float64)
    efficient = fuse([w * e(x) for w, e, x in zip(weights, edges, inputs)], target)
    naive = naive_stage_forward(inputs, edges, weights, target)
    assert efficient.shape == (2, 8, 13, 17)
    assert torch.allclose(efficient, naive, atol=1e-5, rtol=0)
    # and in float32 to the 1e-5 the issue asks for
    e32 = fuse([w.float() * e.float()(x.float()) for w, e, x in zip(weights, edges, inputs)], target)
    n32 = naive_stage_forward([x.float() for x in inputs], [e.float() for e in edges], weights.float(), target)
    assert (e32 - n32).abs().max().item() < 1e-5


def test_naive_reference_refuses_training_mode_bn():
    edge = EdgeConv(3, 4, bn=True).train()
    with pytest.raises(ValueError, match="eval-mode BN"):
        naive_stage_forward([torch.randn(2, 3, 4, 4)], [edge], [1.0], (8, 8))


def test_fuse_upsamples_once_per_source_resolution(monkeypatch):
    calls = []
    real = F.interpolate

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape[-2:]))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(fusion.F, "interpolate", counting)
    xs = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 8, 8),
          torch.randn(1, 4, 1, 1)]
    out = fuse(xs, (8, 8))
    assert sorted(calls) == [(2, 2), (4, 4)]  # same-size sources summed first; 8x8 as is; G broadcast
    expected = real(xs[0] + xs[1], size=(8, 8), mode="bilinear", align_corners=False) \
        + real(xs[2], size=(8, 8), mode="bilinear", align_corners=False) + xs[3] + xs[4]
    assert torch.allclose(out, expected, atol=1e-6)


def test_global_feature_is_broadcast_and_equals_bilinear_from_1x1():
    g = torch.randn(2, 5, 1, 1)
    out = resize_to(g, (6, 7))
    assert out.shape == (2, 5, 6, 7)
    assert torch.allclose(out, F.interpolate(g, size=(6, 7), mode="bilinear", align_corners=False))


def test_fuse_needs_an_input():
    with pytest.raises(ValueError, match="at least one input"):
        fuse([], (4, 4))
    with pytest.raises(ValueError, match="at least one input"):
        FusionStage([], 8)


def test_batch_one_bn_on_global_feature_gives_a_clear_error():
    edge = EdgeConv(4, 3, bn=True).train()
    with pytest.raises(ValueError, match="batch size >= 2"):
        edge(torch.randn(1, 4, 1, 1))
    assert edge(torch.randn(2, 4, 1, 1)).shape == (2, 3, 1, 1)


def test_pruned_edges_have_bias_and_no_bn():
    edge = EdgeConv(4, 3, bn=False)
    assert edge.bn is None and edge.conv.bias is not None
    assert sum(p.numel() for p in edge.parameters()) == 4 * 3 + 3


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4), (4, 3, 2, 1, 0), (2, 0, 4, 1, 3)])
def test_in_place_accumulation_leaves_inputs_alone_and_keeps_gradients(order):
    """fuse sums in place into tensors it made; the output and the gradients equal the plain out-of-place sum."""
    torch.manual_seed(0)
    shapes = [(2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 1, 1), (2, 3, 4, 4)]
    xs = [torch.randn(*shapes[i], requires_grad=True) for i in order]
    inputs = [x * 1.0 for x in xs]  # non-leaf tensors, as edge outputs are
    before = [t.detach().clone() for t in inputs]
    out = fuse(inputs, (16, 16))
    ref = sum(resize_to(x, (16, 16)) for x in xs)
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(torch.equal(t, b) for t, b in zip(inputs, before))
    r = torch.randn_like(ref)
    grads = torch.autograd.grad((out * r).sum(), xs)
    grads_ref = torch.autograd.grad((ref * r).sum(), xs)
    assert all(torch.allclose(g, h, atol=1e-5) for g, h in zip(grads, grads_ref))
