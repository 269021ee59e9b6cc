"""Mobile DeepLabV3: output stride by dilation, ASPP branches, any input size, encoder/decoder split, training."""
import pytest
import torch
from torch import nn

from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.baselines.deeplab import ASPP, DeepLabV3, dilate_encoder
from nni_sparsemask.measure.metrics import count_parameters

TINY = {"width_mult": 0.25}


def make(**kw):
    kw.setdefault("backbone_kwargs", TINY)
    kw.setdefault("aspp_channels", 8)
    return DeepLabV3(num_classes=kw.pop("num_classes", 3), **kw)


def dw_convs(encoder):
    return [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def test_output_stride_16_by_dilation():
    net = make()
    assert [f.reduction for f in net.encoder.feature_info] == [2, 2, 4, 8, 16, 16, 16, 16, 16]
    convs = dw_convs(net.encoder)
    plain = dw_convs(build_backbone("mobilenet_v2", **TINY))
    # the last stride-2 conv (the s16 -> s32 step) has stride 1, it and every later 3x3 conv dilation 2
    strided = [i for i, c in enumerate(plain) if c.stride == (2, 2)]
    last = strided[-1]
    assert convs[last].stride == (1, 1)
    assert all(c.dilation == (2, 2) and c.padding == (2, 2) for c in convs[last:])
    assert all(c.dilation == (1, 1) for c in convs[:last])
    assert [c.stride for c in convs[:last]] == [c.stride for c in plain[:last]]
    # the spatial size of E_L is input / 16
    with torch.no_grad():
        feats, _ = net.encoder.eval()(torch.randn(1, 3, 64, 64))
    assert feats[-1].shape[-2:] == (4, 4)


def test_other_output_strides_and_bad_values():
    assert make(output_stride=8).encoder.feature_info[-1].reduction == 8
    assert make(output_stride=8, head="aspp").aspp.rates == (12, 24, 36)
    assert make(output_stride=32).encoder.feature_info[-1].reduction == 32
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32, got 4"):
        make(output_stride=4)
    with pytest.raises(ValueError, match="supports backbone.*mobilenet_v2.*'resnet18'"):
        DeepLabV3("resnet18", 3)
    with pytest.raises(ValueError, match="num_classes"):
        make(num_classes=0)
    with pytest.raises(ValueError, match="aspp_channels"):
        make(aspp_channels=0)


def test_dilated_encoder_keeps_the_plain_weights():
    plain = build_backbone("mobilenet_v2", **TINY)
    dilated = dilate_encoder(build_backbone("mobilenet_v2", **TINY), 16)
    dilated.load_state_dict(plain.state_dict())  # same parameter names and shapes
    assert dilated.name == "mobilenet_v2_os16"


def test_aspp_branches():
    net = make(aspp_channels=8, head="aspp")  # the full ASPP; the default, "mobile": test_deeplab_mobile.py
    aspp = net.aspp
    assert isinstance(aspp, ASPP) and aspp.rates == (6, 12, 18)
    convs = [b[0] for b in aspp.branches[:4]]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [c.dilation[0] for c in convs] == [1, 6, 12, 18]
    assert all(c.in_channels == net.encoder.feature_info[-1].channels and c.out_channels == 8 for c in convs)
    assert aspp.project[0][0].in_channels == 5 * 8  # 1x1 + 3 atrous + image pooling
    assert net.classifier.kernel_size == (1, 1) and net.classifier.out_channels == 3


def test_image_pooling_branch_is_global():
    aspp = ASPP(4, 2, rates=(1,), dropout=0.0).eval()
    x = torch.randn(2, 4, 5, 6)
    pooled = aspp.branches[-1](x)
    assert pooled.shape == (2, 2, 5, 6)
    assert torch.allclose(pooled, pooled[:, :, :1, :1].expand_as(pooled))


@pytest.mark.parametrize("size", [(50, 70), (32, 32), (17, 23)])
def test_logits_at_input_size(size):
    with torch.no_grad():
        out = make(num_classes=5).eval()(torch.randn(1, 3, *size))
    assert out.shape == (1, 5, *size)


def test_encoder_decoder_split_and_one_training_step():
    torch.manual_seed(0)
    net = make()
    counts = count_parameters(net)
    assert counts.encoder == sum(p.numel() for p in build_backbone("mobilenet_v2", **TINY).parameters())
    assert counts.decoder == sum(p.numel() for p in net.aspp.parameters()) + \
        sum(p.numel() for p in net.classifier.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(net.train()(x), y)
    before = net.classifier.weight.detach().clone()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, net.classifier.weight)
    with pytest.raises(ValueError, match="batch size >= 2"):
        net(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_full_size_encoder_matches_the_paper():
    """Table 1 counts 2.22M encoder parameters for MobileNetV2 (width 1.0), dilation does not change that."""
    net = DeepLabV3(num_classes=21, aspp_channels=8)
    assert count_parameters(net).encoder == 2_223_872
