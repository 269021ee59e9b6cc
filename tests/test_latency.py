"""Cost tables (measure/latency.py): counted tables predict inference_cost of build_pruned exactly; latency
tables are timed on the real operations; tables are keyed, cached and refused for another setting."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nni_sparsemask.baselines.samplers import random_connectivities
from nni_sparsemask.fdn.backbones import build_backbone
from nni_sparsemask.fdn.connectivity import Connectivity
from nni_sparsemask.fdn.costmodel import connectivity_cost, expected_cost
from nni_sparsemask.fdn.pruned import build_pruned
from nni_sparsemask.measure import latency
from nni_sparsemask.measure.cost import inference_cost
from nni_sparsemask.measure.latency import CostKey, CostTable, cost_table_path, load_cost_table, profile_space

ROOT = Path(__file__).resolve().parents[1]
CONVNET = ("convnet", {"widths": [4, 8, 8, 8, 8]})
SMALL = dict(decoder_channels=8, num_classes=3)


def _info(backbone, kwargs):
    return build_backbone(backbone, **kwargs).feature_info


@pytest.mark.parametrize("backbone,kwargs,size", [
    (*CONVNET, 32),  # the deepest stages are 1x1 there, grouped with G
    (*CONVNET, 37),  # odd sizes: the real shapes, not size / reduction
    ("mobilenet_v2", {"width_mult": 0.25}, 32),  # stages of equal resolution share a group
])
def test_counted_tables_predict_the_pruned_network_exactly(backbone, kwargs, size):
    encoder = build_backbone(backbone, **kwargs)  # built once (MobileNetV2 takes seconds): shared, never changed
    info = encoder.feature_info
    tables = {k: profile_space(encoder, k, size, backbone_kwargs=kwargs, **SMALL) for k in ("bytes", "flops", "ops")}
    assert tables["bytes"].key.backbone == backbone
    conns = [Connectivity.dense(backbone, info, backbone_kwargs=kwargs)]
    conns += random_connectivities(backbone, info, 4, density=0.3, seed=1, backbone_kwargs=kwargs)
    for conn in conns:
        real = inference_cost(build_pruned(conn, 3, 8, encoder=encoder), size, inference=True)
        assert tables["bytes"].predict(conn) == real.bytes_written
        assert tables["flops"].predict(conn) == real.flops
        assert tables["ops"].predict(conn) == real.ops
    # the decoder part alone: the dense FDN less the encoder and head
    dense = conns[0]
    assert tables["bytes"].predict(dense, include_base=False) == pytest.approx(
        inference_cost(build_pruned(dense, 3, 8, encoder=encoder), size, inference=True).bytes_written
        - tables["bytes"].costs.base)


def test_a_latency_table_times_every_operation():
    backbone, kwargs = CONVNET
    table = profile_space(_info(*CONVNET), "latency", 32, backbone=backbone, backbone_kwargs=kwargs,
                          min_run_time=0.005, **SMALL)
    assert table.costs.unit == "s" and table.key.device.startswith("cpu:") and table.key.threads >= 1
    prims = table.primitives
    assert set(prims["conv"]) == {f"E{l}" for l in range(1, 6)} | {f"D{l}" for l in range(1, 6)} | {"G"}
    assert set(prims["upsample"]) == {"8x8->16x16", "4x4->16x16", "2x2->16x16", "4x4->8x8", "2x2->8x8",
                                      "2x2->4x4"}  # 1x1 sources are broadcast, never resized
    values = [*prims["conv"].values(), *prims["add"].values(), *prims["iadd"].values(),
              *prims["upsample"].values(), prims["encoder"], prims["head"]]
    assert all(0 < v < 1 for v in values)
    w = {label: torch.full((len(table.costs.edge[label]),), 0.5, requires_grad=True) for label in table.costs.edge}
    expected_cost(w, table).backward()
    assert all(torch.isfinite(t.grad).all() for t in w.values())


def test_profile_space_takes_an_fdn_space():
    from nni_sparsemask.fdn.space import FDNSpace

    space = FDNSpace(CONVNET[0], num_classes=3, decoder_channels=8, backbone_kwargs=CONVNET[1])
    table = profile_space(space, "bytes", 32)
    assert table.key.backbone == "convnet" and table.key.decoder_channels == 8 and table.key.num_classes == 3
    assert table.key.backbone_kwargs == {"widths": [4, 8, 8, 8, 8]}
    conn = space.dense_connectivity()
    assert table.predict(conn) == inference_cost(build_pruned(conn, 3, 8), 32, inference=True).bytes_written


def _key(**over):
    base = dict(kind="latency", backbone="convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]},
                feature_info=[[4, 2], [8, 4], [8, 8], [8, 16], [8, 32]], decoder_channels=8, num_classes=3,
                input_size=[32, 32], device="cpu:X", threads=2)
    return CostKey(**{**base, **over})


def test_save_load_and_a_table_for_another_setting_is_refused(tmp_path):
    table = profile_space(_info(*CONVNET), "bytes", 32, backbone=CONVNET[0], backbone_kwargs=CONVNET[1], **SMALL)
    path = table.save(tmp_path / "t.json")
    back = load_cost_table(path, table.key)
    assert back.costs == table.costs and back.key == table.key and back.primitives == table.primitives
    with pytest.raises(FileExistsError, match="overwrite"):
        table.save(path)
    with pytest.raises(ValueError, match=r"another setting \(input_size: table \[32, 32\], wanted \[256, 256\]\)"):
        load_cost_table(path, CostKey(**{**vars(table.key), "input_size": [256, 256]}))
    with pytest.raises(ValueError, match="kind: table 'bytes', wanted 'latency'.*device: table '', wanted 'cpu:X'"):
        load_cost_table(path, CostKey(**{**vars(table.key), "kind": "latency", "device": "cpu:X"}))
    with pytest.raises(ValueError, match="decoder_channels: table 8, wanted 64"):
        load_cost_table(path, CostKey(**{**vars(table.key), "decoder_channels": 64}))
    with pytest.raises(FileNotFoundError, match="cost table not found"):
        load_cost_table(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="corrupt JSON"):
        load_cost_table(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema_version": 1, "key": {}}))
    with pytest.raises(ValueError, match="malformed cost table"):
        load_cost_table(tmp_path / "other.json")


def test_keys_differ_by_device_and_name_the_mismatch():
    assert _key().mismatches(_key()) == []
    assert _key().mismatches(_key(device="cuda:NVIDIA H200")) == ["device: table 'cpu:X', wanted 'cuda:NVIDIA H200'"]
    assert _key().digest() != _key(threads=1).digest()
    with pytest.raises(ValueError, match="unknown cost kind 'time'"):
        _key(kind="time")


def test_the_cache_profiles_once_per_key(tmp_path, monkeypatch):
    args = dict(backbone=CONVNET[0], backbone_kwargs=CONVNET[1], cache_dir=tmp_path, **SMALL)
    first = profile_space(_info(*CONVNET), "ops", 32, **args)
    assert cost_table_path(tmp_path, first.key).is_file()

    def boom(kind):
        raise AssertionError("profiled again instead of reading the cache")

    monkeypatch.setattr(latency, "_counter", boom)
    again = profile_space(_info(*CONVNET), "ops", 32, **args)
    assert again.costs == first.costs
    with pytest.raises(AssertionError, match="profiled again"):  # another size is another key
        profile_space(_info(*CONVNET), "ops", 64, **args)
    with pytest.raises(AssertionError, match="profiled again"):
        profile_space(_info(*CONVNET), "ops", 32, refresh=True, **args)


def test_profile_space_bad_arguments():
    info = _info(*CONVNET)
    with pytest.raises(ValueError, match="unknown cost kind 'seconds'"):
        profile_space(info, "seconds", 32, backbone="convnet", **SMALL)
    with pytest.raises(ValueError, match="needs backbone="):
        profile_space(info, "bytes", 32, **SMALL)
    with pytest.raises(ValueError, match="is not that of backbone 'convnet'"):
        profile_space(info, "bytes", 32, backbone="convnet", **SMALL)  # default widths differ
    with pytest.raises(ValueError, match="needs decoder_channels= and num_classes="):
        profile_space(info, "bytes", 32, backbone="convnet", backbone_kwargs=CONVNET[1])


def test_connectivity_cost_of_the_table_equals_predict_without_base():
    table = profile_space(_info(*CONVNET), "bytes", 32, backbone=CONVNET[0], backbone_kwargs=CONVNET[1], **SMALL)
    conn = random_connectivities(*CONVNET[:1], _info(*CONVNET), 1, seed=3, backbone_kwargs=CONVNET[1])[0]
    assert connectivity_cost(conn, table) == table.predict(conn, include_base=False)
    assert table.predict(conn) == connectivity_cost(conn, table) + table.costs.base


def test_the_cost_predictor_benchmark_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("cost_predictor", ROOT / "benchmarks" / "cost_predictor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--backbone", "convnet", "--backbone-kwargs", '{"widths": [4, 8, 8, 8, 8]}',
                          "--size", "32", "--decoder-channels", "8", "--num-classes", "3", "--random", "3",
                          "--rounds", "1", "--seconds", "0.02", "--op-seconds", "0.005",
                          "--json", str(tmp_path / "r.json")])
    names = [r["name"] for r in result["rows"]]
    assert names[:4] == ["fcn", "unet", "sparseacn", "fdn"] and len(names) == 7
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 and r["bytes"] > 0 for r in result["rows"])
    assert -1 <= result["spearman"]["latency"] <= 1 and -1 <= result["spearman"]["bytes"] <= 1
    assert (tmp_path / "r.json").is_file()
    with pytest.raises(SystemExit, match="r.json exists"):
        module.main(["--json", str(tmp_path / "r.json")])
