"""The mobile DeepLabV3 of Table 1 (the default head) against the full ASPP (``head="aspp"``)."""
import pytest
import torch
from torch import nn

from nni_sparsemask.baselines.deeplab import ASPP, DeepLabV3
from nni_sparsemask.measure.deploy import inference_form
from nni_sparsemask.measure.params import count_parameters, format_params
from nni_sparsemask.run.registry import build_decoder

TINY = {"width_mult": 0.25}

#: decoder parameters at MobileNetV2 width 1.0 (E_L: 1280 channels), 256 head channels, 21 classes
MOBILE_DECODER = 667_157
ASPP_DECODER = 9_838_869


def test_the_mobile_head_has_table_1s_067m_decoder_parameters():
    """Table 1 lists mobile DeepLab-V3 at "2.22+0.67M". The default head on MobileNetV2 1.0 (E_L has 1280 channels),
    256 channels and 21 classes counts 667,157 decoder parameters (``measure.params.count_parameters``: everything
    but ``model.encoder``), asserted exactly and, against the paper's two decimals, within 0.005M of 0.67M:

    * ASPP's 1x1 branch: conv 1280 -> 256 without bias (327,680) + BN (2 x 256 = 512);
    * the image-pooling branch: global average pool, conv 1280 -> 256 without bias (327,680) + BN (512);
    * their concatenation (512 channels) -> dropout -> the 1x1 classifier 512 -> 21 with bias (10,752 + 21).

    327,680 + 512 + 327,680 + 512 + 10,773 = 667,157. No 3x3 atrous branch, no projection after the
    concatenation (with a 512 -> 256 projection + BN and a 256 -> 21 classifier it would be 793,365,
    0.79M: not the paper's count).
    """
    net = DeepLabV3(num_classes=21)  # head="mobile", output stride 16, 256 channels
    assert net.head == "mobile" and net.output_stride == 16
    count = count_parameters(net)
    assert count.decoder == MOBILE_DECODER == 2 * (1280 * 256 + 2 * 256) + 512 * 21 + 21
    assert count.decoder == pytest.approx(0.67e6, abs=0.005e6)
    assert count.encoder == 2_223_872 and format_params(count) == "2.22+0.67M"


def test_the_full_aspp_is_still_there_and_much_larger():
    """``head="aspp"``: 1x1 + three 3x3 atrous (rates 6/12/18) + image pooling, 5 x 256 -> 256 projection, 256 -> 21
    classifier: 3 x 1280 x 256 x 9 + 3 x 1280 x 256 (1x1, pooling, projection) + 6 BN x 512 + 256 x 21 + 21."""
    net = DeepLabV3(num_classes=21, head="aspp")
    assert net.aspp.rates == (6, 12, 18)
    count = count_parameters(net)
    assert count.decoder == ASPP_DECODER == 3 * 1280 * 256 * 9 + 3 * 1280 * 256 + 6 * 512 + 256 * 21 + 21
    assert count.decoder > 14 * MOBILE_DECODER
    assert format_params(count) == "2.22+9.84M"


def test_mobile_head_layers():
    net = DeepLabV3(num_classes=5, aspp_channels=8, backbone_kwargs=TINY)
    head = net.aspp
    assert isinstance(head, ASPP) and head.rates == () and len(head.branches) == 2
    conv = head.branches[0][0]
    assert conv.kernel_size == (1, 1) and conv.in_channels == net.encoder.feature_info[-1].channels
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in head.modules())
    assert isinstance(head.project, nn.Dropout) and head.out_channels == 16  # concat of two 8-channel branches
    assert net.classifier.in_channels == 16 and net.classifier.out_channels == 5


def test_mobile_head_forward_training_and_deployment_form():
    torch.manual_seed(0)
    net = DeepLabV3(num_classes=3, aspp_channels=8, backbone_kwargs=TINY)
    x, y = torch.randn(2, 3, 40, 56), torch.randint(0, 3, (2, 40, 56))
    loss = nn.functional.cross_entropy(net.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss) and net.aspp.branches[1].conv[0].weight.grad is not None
    with pytest.raises(ValueError, match="batch size >= 2"):  # BN on the pooled 1x1 map
        net(torch.randn(1, 3, 32, 32))
    net.eval()
    with torch.no_grad():
        out = net(x)
        deployed = inference_form(net)(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 3, 40, 56)
    assert torch.allclose(out, deployed, atol=1e-4, rtol=1e-4)  # BN folded in both branches


def test_bad_head_and_rates_are_refused():
    with pytest.raises(ValueError, match="head must be one of mobile, aspp, got 'full'"):
        DeepLabV3(num_classes=3, head="full", backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="atrous_rates apply to head='aspp' only"):
        DeepLabV3(num_classes=3, atrous_rates=(6, 12, 18), backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="must not be empty with head='aspp'"):
        DeepLabV3(num_classes=3, head="aspp", atrous_rates=(), backbone_kwargs=TINY)


def test_the_registry_builds_the_mobile_head():
    net = build_decoder("deeplabv3", num_classes=3, decoder_channels=8, backbone_kwargs=TINY)
    assert isinstance(net, DeepLabV3) and net.head == "mobile" and net.aspp.out_channels == 16
