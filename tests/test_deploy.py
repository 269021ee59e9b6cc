"""The deployment form: BN folding is exact (up to float rounding) and channels_last changes nothing but layout."""
import pytest
import torch
from torch import nn

from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.measure.deploy import fold_batchnorm, fold_conv_bn, inference_form
from nni_sparsemask.fdn.fusion import EdgeConv
from nni_sparsemask.measure.metrics import INFERENCE_FORM, measure_fps
from nni_sparsemask.fdn.space import FDNSpace

from helpers import randomise_bn


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fold_conv_bn_is_exact_with_and_without_conv_bias():
    for bias in (False, True):
        conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias)
        bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(5)))[0]
        x = torch.randn(2, 3, 9, 11)
        with torch.no_grad():
            assert torch.allclose(fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        fold_conv_bn(nn.Conv2d(3, 5, 1), nn.ReLU())
    with pytest.raises(ValueError, match="features"):
        fold_conv_bn(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(4))


@pytest.mark.parametrize("name,kwargs", [
    ("convnet", {"widths": (4, 8, 8, 8, 8)}),
    ("mobilenet_v2", {"width_mult": 0.25}),
    ("resnet18", {}),
    ("vgg16_bn", {}),
])
def test_every_encoder_bn_is_folded_and_the_features_are_unchanged(name, kwargs):
    torch.manual_seed(0)
    encoder = randomise_bn(build_backbone(name, **kwargs))
    n_bn = _count_bn(encoder)
    assert n_bn > 0
    deployed = inference_form(encoder)
    assert _count_bn(deployed) == 0
    assert _count_bn(encoder) == n_bn  # the original is untouched
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, g = encoder(x)
        feats2, g2 = deployed(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(feats + [g], feats2 + [g2]):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()


def test_search_form_with_per_edge_bn_folds_to_the_same_logits():
    torch.manual_seed(0)
    space = randomise_bn(FDNSpace(backbone="convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]}, num_classes=3,
                                   decoder_channels=8))
    edges = [m for m in space.modules() if isinstance(m, EdgeConv)]
    assert edges and all(e.bn is not None for e in edges)
    deployed = inference_form(space)
    assert all(e.bn is None for e in deployed.modules() if isinstance(e, EdgeConv))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deployed(x), space(x), atol=1e-4)


def test_folding_refuses_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
    assert fold_batchnorm(model.eval()) == 1 and isinstance(model[1], nn.Identity)


def test_measure_fps_in_inference_form_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).train()
    r = measure_fps(model, input_size=(16, 16), device="cpu", warmup=1, min_run_time=0.05, inference=True)
    assert r.form == INFERENCE_FORM and INFERENCE_FORM in str(r) and r.fps > 0
    assert model.training and isinstance(model[1], nn.BatchNorm2d)
    assert model[0].weight.is_contiguous()  # still NCHW
    assert measure_fps(model, input_size=(16, 16), device="cpu", warmup=1, min_run_time=0.05).form == "as given"
