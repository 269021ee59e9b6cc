"""The peer decoders of segmentation_models_pytorch on this project's encoders (baselines/smp_peers.py): each builds
on the convnet and on MobileNetV2, gives logits at the input size and trains; a backbone without the strides a
decoder reads is one clear error; ``retrain --decoder smp-fpn`` runs end to end."""
import json
from importlib.util import find_spec

import pytest
import torch

from nni_sparsemask.baselines.smp_peers import PEERS, select_stages
from nni_sparsemask.fdn.backbones import FeatureInfo, build_backbone
from nni_sparsemask.measure.params import count_parameters
from nni_sparsemask.run.registry import DECODERS, build_decoder, decoder_connectivity

needs_smp = pytest.mark.skipif(find_spec("segmentation_models_pytorch") is None,
                               reason="segmentation-models-pytorch is not installed: pip install "
                                      "'nni-sparsemask[peers]' (it is in the dev extra)")

CONVNET = ("convnet", {"widths": [4, 6, 8, 10, 12]})
MOBILENET = ("mobilenet_v2", {"width_mult": 0.35})
TINY_MODEL = ["--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}', "--backbone-weights",
              "none", "--decoder-channels", "8"]
TINY_DATA = ["--image-size", "32", "--train-scenes", "32", "--val-scenes", "8", "--batch-size", "8"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second thread only waits (and on a busy machine spins) on the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_peers_are_registered_as_heads_of_their_own():
    names = [f"smp-{p}" for p in ("unet", "fpn", "deeplabv3plus", "pan", "linknet")]
    assert set(names) <= set(DECODERS) and list(PEERS) == [n[4:] for n in names]
    for name in names:
        assert not DECODERS[name].in_fdn_space
    with pytest.raises(ValueError, match="'smp-fpn' is not a point of the FDN space"):
        decoder_connectivity("smp-fpn", *CONVNET[:1], backbone_kwargs=CONVNET[1])


def test_the_deepest_stage_of_each_stride_is_read():
    info = build_backbone("mobilenet_v2").feature_info  # 32/s2, 16/s2, 24/s4, 32/s8, 64/s16, 96/s16, 160/s32, ...
    assert select_stages(info, "unet") == [1, 2, 3, 5, 8]  # 16 ch at s2, 24, 32, 96 at s16, 1280 at s32
    assert [info[i].channels for i in select_stages(info, "unet")] == [16, 24, 32, 96, 1280]
    assert select_stages(info, "fpn") == [None, 2, 3, 5, 8]
    assert select_stages(info, "deeplabv3plus") == [None, 2, None, None, 8]


@pytest.mark.parametrize("peer,missing", [("unet", "16, 32"), ("linknet", "16, 32"), ("fpn", "16, 32"),
                                          ("deeplabv3plus", "32"), ("pan", "16, 32")])
def test_a_backbone_without_the_strides_a_decoder_reads_is_refused(peer, missing):
    info = [FeatureInfo(4, 2), FeatureInfo(6, 4), FeatureInfo(8, 8)]
    with pytest.raises(ValueError, match=rf"smp-{peer} needs encoder features at stride\(s\) {missing} .*"
                                         rf"'convnet' has stages at stride\(s\) 2, 4, 8"):
        select_stages(info, peer, "backbone 'convnet'")


@needs_smp
def test_build_refuses_the_strides_and_unknown_peers():
    with pytest.raises(ValueError, match=r"smp-unet needs encoder features at stride\(s\) 16, 32"):
        build_decoder("smp-unet", "convnet", 3, backbone_kwargs={"widths": [4, 6, 8]})
    from nni_sparsemask.baselines.smp_peers import build_smp_network
    with pytest.raises(ValueError, match="unknown smp peer decoder 'segnet'"):
        build_smp_network("segnet", *CONVNET[:1], backbone_kwargs=CONVNET[1])


@needs_smp
@pytest.mark.parametrize("backbone,kwargs", [CONVNET, MOBILENET], ids=["convnet", "mobilenet_v2"])
@pytest.mark.parametrize("peer", PEERS)
def test_every_peer_gives_input_size_logits_and_trains_one_step(peer, backbone, kwargs):
    torch.manual_seed(0)
    net = build_decoder(f"smp-{peer}", backbone, num_classes=3, decoder_channels=16, backbone_kwargs=kwargs)
    assert isinstance(net.encoder, torch.nn.Module)
    count = count_parameters(net)
    print(f"smp-{peer} on {backbone} {kwargs}: {count} ({count.decoder} decoder parameters)")
    assert count.decoder > 0 and count.encoder == sum(p.numel() for p in net.encoder.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    net.train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in net.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("encoder.") for n in changed) and any(not n.startswith("encoder.") for n in changed)
    net.eval()
    with torch.no_grad():
        for size in ((32, 32), (50, 70)):  # a side that is no multiple of 32 is padded and cropped back
            out = net(torch.randn(1, 3, *size))
            assert out.shape == (1, 3, *size) and torch.isfinite(out).all()


@needs_smp
def test_smp_defaults_are_the_widths_when_none_are_given():
    net = build_decoder("smp-fpn", *CONVNET[:1], num_classes=3, backbone_kwargs=CONVNET[1])
    assert net.decoder_channels == 256 and DECODERS["smp-pan"].default_channels == 32


@needs_smp
def test_retrain_smp_fpn_end_to_end_and_evaluate_again(tmp_path, capsys, isolated_cache):
    from nni_sparsemask.cli import main
    from nni_sparsemask.run.steps import load_run_network

    run = tmp_path / "fpn"
    assert main(["retrain", "--decoder", "smp-fpn", "--out", str(run), "--epochs", "1", "--fps-size", "32",
                 "--no-progress", "--head-channels", "8"] + TINY_MODEL + TINY_DATA) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "smp-fpn" and metrics["edges"] is None and 0.0 <= metrics["miou"] <= 1.0
    assert not (run / "connectivity.json").exists()  # a head of its own: no FDN edges
    net, data, _ = load_run_network(run)  # rebuilt from config.json alone
    assert type(net).__name__ == "SMPNetwork" and net.peer == "fpn" and net.decoder_channels == 8
    assert json.loads((run / "config.json").read_text())["head_channels"] == 8
    assert main(["evaluate", str(run), "--fps-size", "32", "--device", "cpu", "--no-progress"]) == 0
    assert (run / "evaluate.json").is_file()
    # smp FPN trains at the encoder's learning rate (1x), recorded, and what the optimizer got
    assert json.loads((run / "config.json").read_text())["train"]["decoder_lr_mult"] == 1.0
    assert _initial_lrs(run) == {"encoder": 0.02, "decoder": 0.02}


def _initial_lrs(run):
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {g["name"]: g["initial_lr"] for g in state["optimizer_states"][0]["param_groups"]}


@pytest.mark.parametrize("decoder,given,used", [("fcn", None, 10.0), ("smp-pan", None, 1.0), ("smp-pan", 3.0, 3.0),
                                                ("smp-deeplabv3plus", None, 10.0), ("fcn", 1.0, 1.0)])
def test_the_decoder_learning_rate_is_the_decoders_own_unless_given(tmp_path, capsys, isolated_cache, decoder, given,
                                                                    used):
    """The paper's 10x for the FDN space's decoders, each smp peer's own (1x for PAN, which did not learn at 10x;
    10x for DeepLabV3+), and --decoder-lr-mult over either; config.json records the multiplier the optimizer got."""
    if decoder.startswith("smp-") and find_spec("segmentation_models_pytorch") is None:
        pytest.skip("segmentation-models-pytorch is not installed")
    from nni_sparsemask.cli import main

    run = tmp_path / "run"
    extra = [] if given is None else ["--decoder-lr-mult", str(given)]
    assert main(["retrain", "--decoder", decoder, "--out", str(run), "--epochs", "1", "--lr", "0.01", "--fps-size",
                 "32", "--no-progress"] + extra + TINY_MODEL + TINY_DATA) == 0
    assert json.loads((run / "config.json").read_text())["train"]["decoder_lr_mult"] == used
    assert _initial_lrs(run) == pytest.approx({"encoder": 0.01, "decoder": 0.01 * used})


def test_a_head_of_its_own_keeps_its_width_whatever_c_dec_is(tmp_path, capsys):
    from nni_sparsemask.cli import main
    from nni_sparsemask.run.config import ModelConfig
    from nni_sparsemask.run.pipeline import build_network, head_width

    model = ModelConfig(backbone=CONVNET[0], backbone_kwargs=CONVNET[1], backbone_weights=None, decoder_channels=8)
    if find_spec("segmentation_models_pytorch") is not None:
        # C_dec 8 read as smp U-Net's width would leave it 8/16 -> 1 channel before its head
        assert build_network(model, 3, decoder="smp-unet").decoder_channels == 256
        assert build_network(model, 3, decoder="smp-unet", head_channels=16).decoder_channels == 16
    assert head_width("smp-pan") == 32 and head_width("deeplabv3", 64) == 64
    assert head_width("unet") is None and head_width(None) is None  # FDN space: C_dec is the width
    for bad, says in ((["--decoder", "unet", "--head-channels", "8"], "not of unet"),
                      (["--decoder", "smp-fpn", "--head-channels", "0"], "must be an integer >= 1")):
        assert main(["retrain", "--out", str(tmp_path / "bad"), "--epochs", "1", "--no-progress"] + bad + TINY_MODEL
                    + TINY_DATA) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@needs_smp
def test_a_run_written_before_the_head_width_was_recorded_is_rebuilt_at_c_dec(tmp_path, isolated_cache):
    from nni_sparsemask.cli import main
    from nni_sparsemask.run.config import DataConfig, ModelConfig, TrainConfig
    from nni_sparsemask.run.steps import load_run_network, run_retrain

    run = tmp_path / "old"
    assert main(["retrain", "--decoder", "smp-linknet", "--out", str(run), "--epochs", "1", "--fps-size", "32",
                 "--no-progress", "--head-channels", "8"] + TINY_MODEL + TINY_DATA) == 0
    config = json.loads((run / "config.json").read_text())
    del config["head_channels"]  # as earlier versions wrote it: they built the head at C_dec (8 here)
    (run / "config.json").write_text(json.dumps(config))
    net, _, _ = load_run_network(run)  # the weights load: same shapes
    assert net.decoder_channels == 8
    with pytest.raises(ValueError, match="differs in head_channels\\)"):  # resuming would build another network
        run_retrain(run, DataConfig(**config["data"]), ModelConfig(**config["model"]), TrainConfig(**config["train"]),
                    decoder="smp-linknet", fps_size=32, resume=True, progress=False, log=lambda s: None)


@needs_smp
def test_retrain_refuses_a_backbone_without_the_strides_before_the_run_directory(tmp_path, capsys, isolated_cache):
    from nni_sparsemask.cli import main

    argv = ["retrain", "--decoder", "smp-unet", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress",
            "--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8]}', "--backbone-weights", "none"]
    assert main(argv + TINY_DATA) == 2
    assert "smp-unet needs encoder features at stride(s) 16, 32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@needs_smp
def test_decoder_fps_times_the_peers_as_rows(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "decoder_fps", Path(__file__).resolve().parents[1] / "benchmarks" / "decoder_fps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    conn = decoder_connectivity("unet", "convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]})
    (tmp_path / "connectivity.json").write_text(conn.to_json())
    result = bench.main([str(tmp_path), "--size", "64", "--decoder-channels", "8", "--rounds", "1", "--seconds",
                         "0.01", "--peers"])
    timed = {r["network"] for r in result["rows"] if r["fps"] > 0}
    assert {f"smp-{p}" for p in PEERS} <= timed
    assert {c["network"] for c in result["costs"]} >= {f"smp-{p}" for p in PEERS}


@needs_smp
@pytest.mark.parametrize("peer", ["unet", "fpn", "linknet"])
@pytest.mark.parametrize("backbone,kwargs", [("convnet", {"widths": [16, 32, 48, 64, 96]}), ("mobilenet_v2", {})])
def test_the_narrowest_width_is_the_narrowest_convolution_of_the_built_decoder(peer, backbone, kwargs):
    """U-Net, FPN and Linknet have no attention maps or depthwise layers: their narrowest convolution is the width
    every pixel's features pass through, and narrowest_channels must name it without building the network."""
    import warnings

    from nni_sparsemask.baselines.smp_peers import build_smp_network, narrowest_channels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_smp_network(peer, backbone, 21, backbone_kwargs=kwargs)
    channels = [3] + [0 if i is None else net.encoder.feature_info[i].channels for i in net.stage_index]
    convs = [m.out_channels for m in net.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    width, _ = narrowest_channels(peer, channels, net.decoder_channels)
    assert width == min(convs)
    assert width == {"unet": 16, "fpn": 128, "linknet": 4}[peer]  # 16 channels at stride 2 on both encoders


@needs_smp
def test_a_peer_narrower_than_half_its_classes_warns_with_what_to_change():
    from nni_sparsemask.baselines.smp_peers import build_smp_network

    demo = {"widths": [16, 32, 48, 64, 96]}
    with pytest.warns(UserWarning, match=r"smp-linknet on backbone 'convnet' narrows to 4 channels \(its block 5 of "
                                         r"5, .*stride-2 features' 16 channels.*fewer than half its 11 classes.*at "
                                         r"least 24 channels at stride 2"):
        build_smp_network("linknet", "convnet", 11, backbone_kwargs=demo)
    with pytest.warns(UserWarning, match=r"smp-pan .* narrows to 4 channels .*--head-channels"):
        build_smp_network("pan", "convnet", 11, 4, backbone_kwargs=demo)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # smp's U-Net at its default width on VOC's classes, and Linknet with 3
        build_smp_network("unet", "mobilenet_v2", 21)
        build_smp_network("linknet", "convnet", 3, backbone_kwargs=demo)
