import pytest
import torch
from torchvision.models import mobilenet_v2

from nni_sparsemask.fdn.backbones import available_backbones, build_backbone
from helpers import MNV2_INFO, RESNET_INFO


def test_mobilenet_v2_has_the_papers_nine_stages():
    enc = build_backbone("mobilenet_v2")
    assert [(f.channels, f.reduction) for f in enc.feature_info] == [(f.channels, f.reduction) for f in MNV2_INFO]


def test_width_mult_narrows_channels_but_keeps_reductions():
    enc = build_backbone("mobilenet_v2", width_mult=0.25)
    assert [f.reduction for f in enc.feature_info] == [f.reduction for f in MNV2_INFO]
    assert enc.feature_info[0].channels == 8 and enc.feature_info[4].channels == 16


@pytest.mark.parametrize("name,channels", [
    ("resnet18", [64, 64, 128, 256, 512]),
    ("resnet50", [64, 256, 512, 1024, 2048]),
    ("vgg16", [64, 128, 256, 512, 512]),
])
def test_resnet_and_vgg_split_into_five_stages(name, channels):
    enc = build_backbone(name)
    assert [f.channels for f in enc.feature_info] == channels
    assert [f.reduction for f in enc.feature_info] == [f.reduction for f in RESNET_INFO]


def test_forward_returns_stages_and_global_feature_at_odd_sizes():
    enc = build_backbone("mobilenet_v2", width_mult=0.25).eval()
    feats, g = enc(torch.randn(2, 3, 50, 70))
    assert len(feats) == 9
    assert feats[0].shape[-2:] == (25, 35) and feats[-1].shape[-2:] == (2, 3)
    assert g.shape == (2, feats[-1].shape[1], 1, 1)
    assert torch.allclose(g[:, :, 0, 0], feats[-1].mean((2, 3)))


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="known backbones: .*mobilenet_v2.*resnet18"):
        build_backbone("efficientnet_b9")
    assert {"mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "vgg16_bn"} <= set(available_backbones())


def test_bad_backbone_argument_is_a_value_error():
    with pytest.raises(ValueError, match="width_mult"):
        build_backbone("mobilenet_v2", width_mult=0)
    with pytest.raises(ValueError, match="bad arguments"):
        build_backbone("resnet18", no_such_arg=1)


def test_wrong_channel_count_is_rejected():
    enc = build_backbone("mobilenet_v2", width_mult=0.25)
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, H, W\)"):
        enc(torch.randn(1, 1, 32, 32))


def test_weights_from_a_local_file_are_loaded(tmp_path):
    ref = mobilenet_v2(width_mult=0.25)
    path = tmp_path / "mnv2.pth"
    torch.save(ref.state_dict(), path)
    enc = build_backbone("mobilenet_v2", weights=str(path), width_mult=0.25)
    assert torch.equal(enc.stages[0][0][0].weight, ref.features[0][0].weight)
    assert torch.equal(enc.stages[8][0][0].weight, ref.features[18][0].weight)


def test_missing_or_uncached_weights_never_fall_back_to_random(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not cached"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="unknown weights"):
        build_backbone("resnet18", weights="NO_SUCH_WEIGHTS")


def test_weights_file_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(mobilenet_v2(width_mult=0.5).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit backbone .*size mismatch"):
        build_backbone("mobilenet_v2", weights=str(path), width_mult=0.25)


def test_convnet_for_cpu_demos_and_its_weights_round_trip(tmp_path):
    enc = build_backbone("convnet", widths=(4, 8, 12))
    assert [(f.channels, f.reduction) for f in enc.feature_info] == [(4, 2), (8, 4), (12, 8)]
    path = tmp_path / "convnet.pth"
    torch.save(enc.state_dict(), path)
    again = build_backbone("convnet", weights=str(path), widths=(4, 8, 12))
    assert torch.equal(again.stages[2][0].weight, enc.stages[2][0].weight)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("convnet", weights=str(path), widths=(4, 8, 16))
    with pytest.raises(ValueError, match="positive"):
        build_backbone("convnet", widths=(4, 0))


@pytest.mark.parametrize("name,kwargs", [("mobilenet_v2", {"width_mult": 0.25}), ("resnet18", {})])
def test_an_encoders_own_state_dict_loads_into_torchvision_backbones(tmp_path, name, kwargs):
    # what `sparsemask pretrain` saves: the Encoder's state_dict (keys stages.*), not the torchvision model's
    torch.manual_seed(0)
    enc = build_backbone(name, **kwargs)
    path = tmp_path / "enc.pt"
    torch.save(enc.state_dict(), path)
    torch.manual_seed(1)
    loaded = build_backbone(name, weights=path, **kwargs)
    for (k, a), (_, b) in zip(enc.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="does not fit backbone 'mobilenet_v2'"):
        build_backbone("mobilenet_v2", weights=path, width_mult=0.5) if name == "mobilenet_v2" else \
            build_backbone("mobilenet_v2", weights=path)
