"""sparsemask export: the trained network of a tiny retrain run as ONNX (run in ONNX Runtime), TorchScript and an
ExportedProgram, BN folded, at input sizes other than the traced one; and the refusals, before anything is
written."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from nni_sparsemask.cli import main
from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.fdn.connectivity import Connectivity, Edge
from nni_sparsemask.measure.export import FORMATS, SUFFIXES, export_network, load_exported, onnx_op_counts
from nni_sparsemask.run.config import DataConfig, ModelConfig, TrainConfig
from nni_sparsemask.run.steps import load_run_network, run_retrain

MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=8)
DATA = DataConfig(image_size=32, train_scenes=16, val_scenes=4, batch_size=8)
TOL = 1e-4


#: a searched-looking decoder with every case of the fusion: a stage fed by G alone (broadcast), one with an
#: input at its own resolution (not resized), two inputs of one resolution (E5, D5: summed, upsampled once) and G,
#: and an output stage with no input at its resolution. Smaller than the dense FDN, so the exports are quicker.
EDGES = [("D5", "G"), ("D3", "E3"), ("D3", "E5"), ("D3", "D5"), ("D3", "G"), ("D1", "E2"), ("D1", "D3"), ("D1", "G")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished retrain run (1 epoch on 16 DigitScenes images) of the decoder :data:`EDGES`."""
    base = tmp_path_factory.mktemp("export")
    info = build_backbone("convnet", **MODEL.backbone_kwargs).feature_info
    Connectivity("convnet", info, [Edge(t, s) for t, s in EDGES], backbone_kwargs=MODEL.backbone_kwargs,
                 meta={"num_classes": DATA.num_classes}).to_json(base / "connectivity.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
        run_retrain(base / "run", DATA, MODEL, TrainConfig(epochs=1, learning_rate=0.01),
                    connectivity=base / "connectivity.json", fps_size=32, fps_batch=1, fps_seconds=0.05,
                    progress=False, accelerator="cpu", log=lambda s: None)
    return base / "run"


@pytest.fixture(scope="module")
def net(run_dir):
    return load_run_network(run_dir)[0].eval()


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "net.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out


def _reference(net, size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        return x, net(x)


def test_onnx_runs_in_onnxruntime_at_two_sizes(onnx_file, net):
    import onnx

    dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3] and dims[2].dim_param and dims[3].dim_param  # H, W symbolic
    run = load_exported("onnx", onnx_file)
    for size in [(32, 32), (48, 64)]:
        x, ref = _reference(net, size)
        y = run(x.numpy())
        assert y.shape == tuple(ref.shape)
        assert np.abs(y - ref.numpy()).max() <= TOL


@pytest.mark.parametrize("fmt,sizes", [("torchscript", [(32, 32), (48, 64)]),
                                       ("exported-program", [(48, 64), (96, 80)])])
def test_torchscript_and_exported_program_round_trip(net, tmp_path, fmt, sizes):
    path = export_network(net, fmt, tmp_path / f"net{SUFFIXES[fmt]}")
    loaded = load_exported(fmt, path)
    for size in sizes:
        x, ref = _reference(net, size)
        with torch.no_grad():
            y = loaded(x)
        assert y.shape == ref.shape and (y - ref).abs().max().item() <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_exported_form_has_bn_folded_and_leaves_the_network_alone(net):
    from nni_sparsemask.measure.export import export_form
    form = export_form(net)
    assert type(form) is type(net)  # PrunedFDN's own forward, no wrapper of it
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in form.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_fuse_by_reduction_keys_equals_fuse_by_shape():
    """PrunedFDN's stages group by encoder reduction (the export reads no shape); by shape it is the same sum."""
    from nni_sparsemask.fdn.fusion import BROADCAST, FusionStage, fuse

    torch.manual_seed(0)
    xs = [torch.randn(1, 4, *s) for s in [(7, 9), (13, 17), (4, 5), (7, 9), (1, 1)]]
    keys = [8, 4, 16, 8, BROADCAST]
    assert torch.allclose(fuse(xs, (13, 17), keys, target=4), fuse(xs, (13, 17)), atol=1e-6)
    with pytest.raises(ValueError, match="one per tensor and the target's key"):
        fuse(xs, (13, 17), keys[:-1], target=4)
    with pytest.raises(ValueError, match="one per tensor and the target's key"):
        fuse(xs, (13, 17), keys)  # no target
    with pytest.raises(ValueError, match="needs as many keys and a target key"):
        FusionStage([4, 4], 8, keys=[2], target=2)


def test_onnxruntime_graph_optimisation_counts(onnx_file, tmp_path):
    """What ONNX Runtime does with "1x1 convolutions at their source resolution + bilinear upsampling + sum"
    (benchmarks/RESULTS.md, "ONNX Runtime and the fusion pattern"): every convolution stays one node (another
    layout or fused with its activation, never merged with another) and every Resize stays, unfused."""
    before, after = onnx_op_counts(onnx_file, tmp_path / "optimized.onnx")
    assert before["Resize"] >= 1 and before["Conv"] >= 1 and before["Add"] >= 1
    assert (tmp_path / "optimized.onnx").is_file() and sum(after.values()) > 0

    def convolutions(counts):
        return sum(n for op, n in counts.items() if op.split(":")[-1] in ("Conv", "FusedConv"))

    for level in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        before, after = onnx_op_counts(onnx_file, level=level)
        assert convolutions(after) == convolutions(before) and after["Resize"] == before["Resize"], level
        assert after.get("Add", 0) <= before["Add"]
    extended = onnx_op_counts(onnx_file, level="ORT_ENABLE_EXTENDED")[1]
    assert extended.get("com.microsoft:FusedConv", 0) >= 1  # the encoder's convolution + ReLU


# ------------------------------------------------------------------------------------ decoders with their own head
@pytest.fixture(scope="module")
def smp_run_dir(tmp_path_factory):
    """A finished retrain run of the smp peer U-Net (1 epoch on 16 DigitScenes images, widths 8, 4, 2, 1, 1)."""
    pytest.importorskip("segmentation_models_pytorch")
    base = tmp_path_factory.mktemp("export-smp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
        run_retrain(base / "run", DATA, MODEL, TrainConfig(epochs=1, learning_rate=0.01), decoder="smp-unet",
                    fps_size=32, fps_batch=1, fps_seconds=0.05, progress=False, accelerator="cpu", log=lambda s: None)
    return base / "run"


@pytest.mark.slow  # the ONNX export alone is 8-12 s of CPU (torch.export + onnxscript); the trace test below is quick
def test_an_smp_peer_run_exports_to_onnx_at_any_size(smp_run_dir, tmp_path):
    """The peer's forward pads the input to a multiple of 32 and crops the logits back: both follow the symbolic
    size (50 x 70 is padded to 64 x 96)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = load_run_network(smp_run_dir)[0].eval()
    assert type(net).__name__ == "SMPNetwork"
    out = tmp_path / "unet.onnx"
    assert main(["export", str(smp_run_dir), "--format", "onnx", "--out", str(out)]) == 0
    run = load_exported("onnx", out)
    for size in [(64, 64), (50, 70)]:
        x, ref = _reference(net, size)
        y = run(x.numpy())
        assert y.shape == tuple(ref.shape) and np.abs(y - ref.numpy()).max() <= TOL


def test_smp_peers_and_deeplabv3_trace_at_any_size():
    """TorchScript (quick) of every smp peer and of mobile DeepLabV3 at sizes other than the traced one; PAN's
    pyramid attention resizes a deep map under 8 px up to 8 (a clamp on the recorded side)."""
    pytest.importorskip("segmentation_models_pytorch")
    from nni_sparsemask.measure.export import export_form
    from nni_sparsemask.run.registry import build_decoder

    torch.manual_seed(0)
    nets = {p: build_decoder(f"smp-{p}", MODEL.backbone, 3, 8, backbone_kwargs=MODEL.backbone_kwargs)
            for p in ("unet", "fpn", "deeplabv3plus", "pan", "linknet")}
    nets["deeplabv3"] = build_decoder("deeplabv3", "mobilenet_v2", 3, 8, backbone_kwargs={"width_mult": 0.35})
    for name, net in nets.items():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(export_form(net.eval()), torch.randn(1, 3, 64, 64), check_trace=False)
            for size in [(50, 70)] + [(300, 260)] * (name == "pan"):  # PAN: a deep map over 8 px too
                x, ref = _reference(net, size)
                assert (traced(x) - ref).abs().max().item() <= TOL, (name, size)


# ------------------------------------------------------------------------------------------------ refusals
def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsemask export: error: ") and "\n" not in err
    return err


def test_a_run_without_a_trained_network_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "net.pt"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.json", unfinished / "config.json")  # no model.pt
    assert "sparsemask retrain" in _refused(capsys, ["export", str(unfinished), "--format", "torchscript",
                                                     "--out", str(out)])
    search = tmp_path / "search"
    search.mkdir()
    (search / "config.json").write_text(json.dumps({"command": "search"}))
    err = _refused(capsys, ["export", str(search), "--format", "torchscript", "--out", str(out)])
    assert "'search' run" in err and "sparsemask retrain" in err
    err = _refused(capsys, ["export", str(tmp_path / "nowhere"), "--format", "torchscript", "--out", str(out)])
    assert "not a run directory" in err and "sparsemask retrain" in err
    assert not out.exists()


def test_unknown_format_and_existing_out_are_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "net.bin"
    err = _refused(capsys, ["export", str(run_dir), "--format", "tflite", "--out", str(out)])
    assert all(f in err for f in FORMATS)
    assert not out.exists()
    out.write_text("keep me")
    err = _refused(capsys, ["export", str(run_dir), "--format", "torchscript", "--out", str(out)])
    assert "--overwrite" in err and out.read_text() == "keep me"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"keep me" and "[export]" in capsys.readouterr().out


def test_a_network_without_a_symbolic_form_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="cannot export a Conv2d"):
        export_network(torch.nn.Conv2d(3, 3, 1), "torchscript", tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_edge_nms_on_a_segmentation_run_is_refused_before_scoring(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--edge-nms", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsemask evaluate: error: ") and "is a segmentation run" in err
    assert not list(run_dir.glob("evaluate*.json"))
