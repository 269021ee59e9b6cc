import json

import pytest

from nni_sparsemask.fdn.connectivity import SCHEMA_VERSION, Connectivity, Edge
from helpers import MNV2_INFO, RESNET_INFO, small_info


def conn_of(edges, info=None, **kw):
    return Connectivity("mobilenet_v2", info or MNV2_INFO, [Edge(*e) for e in edges], **kw)


def test_dense_connectivity_has_every_edge():
    dense = Connectivity.dense("mobilenet_v2", MNV2_INFO)
    assert dense.num_edges == 90
    assert dense.inputs("D9") == ["E9", "G"]
    assert dense.stages() == [f"D{l}" for l in range(9, 0, -1)]


def test_json_round_trip_keeps_everything(tmp_path):
    history = [{"D4": [0.5] * 2, "D1": [0.4] * 8}]
    conn = Connectivity.from_weights("x", small_info(), {"D4": [0.9, 0.1], "D1": [0.2] * 8}, history=history,
                                     backbone_kwargs={"width_mult": 0.5}, meta={"loss": "sparsemask"})
    path = tmp_path / "c.json"
    conn.to_json(path)
    back = Connectivity.from_json(path)
    assert back == conn
    assert Connectivity.from_json(conn.to_json()) == conn
    with pytest.raises(FileExistsError, match="overwrite"):
        conn.to_json(path)
    conn.to_json(path, overwrite=True)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: "{not json", "corrupt JSON"),
    (lambda d: dict(d, schema_version=99), "unsupported schema_version 99"),
    (lambda d: {k: v for k, v in d.items() if k != "edges"}, "missing field.*edges"),
    (lambda d: dict(d, edges=[{"target": "D7", "source": "E1"}]), "unknown decoder stage in edge target 'D7'"),
    (lambda d: dict(d, edges=[{"target": "D3", "source": "E2"}]), r"edge E2 -> D3 is not allowed.*E3, E4"),
    (lambda d: dict(d, edges=[{"target": "D1", "source": "X5"}]), "edge X5 -> D1 is not allowed"),
    (lambda d: dict(d, edges=[{"target": "D1", "source": "D1"}]), "edge D1 -> D1 is not allowed"),
    (lambda d: dict(d, edges=[{"target": "D1", "source": "E1"}] * 2), "appears twice"),
    (lambda d: dict(d, history=[{"D4": [0.1]}]), "history epoch 0, D4: 1 weights"),
    (lambda d: dict(d, edges=[{"target": "D1"}]), "malformed"),
])
def test_from_json_rejects_bad_content(mutate, match):
    data = Connectivity.dense("x", small_info()).to_dict()
    bad = mutate(data)
    text = bad if isinstance(bad, str) else json.dumps(bad)
    with pytest.raises(ValueError, match=match):
        Connectivity.from_json(text)


def test_from_json_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Connectivity.from_json(tmp_path / "nope.json")


def test_schema_version_is_written():
    assert Connectivity.dense("x", small_info()).to_dict()["schema_version"] == SCHEMA_VERSION


def test_prune_drops_weak_edges_and_orphaned_chains():
    info = small_info()
    # D1 <- E1 (kept), D1 <- D2 (weak: dropped). Then D2 is read by nobody -> dropped, which orphans D3 (only D2
    # read it) -> dropped, and so on: only D1 <- E1 remains.
    conn = conn_of([("D1", "E1", 0.9), ("D1", "D2", 1e-4), ("D2", "D3", 0.8), ("D3", "E3", 0.7), ("D4", "G", 0.9),
                    ("D3", "D4", 0.6)], info)
    pruned = conn.prune(1e-3)
    assert pruned.edges == [Edge("D1", "E1", 0.9)]
    assert pruned.meta["threshold"] == 1e-3


def test_prune_drops_stages_without_inputs_and_their_out_edges():
    info = small_info()
    # D3's only input is weak: D3 has no inputs -> its edge into D2 goes -> D2 has no inputs -> its edge into D1 goes
    conn = conn_of([("D1", "E1", 0.9), ("D1", "D2", 0.9), ("D2", "D3", 0.9), ("D3", "E3", 1e-5)], info)
    assert conn.prune(1e-3).edges == [Edge("D1", "E1", 0.9)]


def test_output_without_inputs_is_an_error():
    conn = conn_of([("D1", "E1", 1e-4), ("D2", "E2", 0.9)], small_info())
    with pytest.raises(ValueError, match="output stage D1 without inputs"):
        conn.prune(1e-3)
    with pytest.raises(ValueError, match="threshold"):
        conn.prune(1.5)


def test_duplicate_stages_of_equal_resolution_are_merged_into_the_deeper_one():
    # MobileNetV2: E5 and E6 are both at stride 16; D5 and D6 read the same {E6, G}
    conn = conn_of([("D6", "E6", 1), ("D6", "G", 1), ("D5", "E6", 1), ("D5", "G", 1),
                    ("D1", "E1", 1), ("D1", "D5", 1), ("D1", "D6", 0.5)])
    pruned = conn.prune(1e-3)
    assert pruned.stages() == ["D6", "D1"]
    assert pruned.inputs("D1") == ["E1", "D6"]
    assert pruned.weight("D1", "D6") == 1  # the duplicate edges kept the larger weight
    # same inputs but different resolutions are not duplicates
    other = conn_of([("D4", "G", 1), ("D3", "G", 1), ("D1", "D3", 1), ("D1", "D4", 1)])
    assert other.prune(1e-3).stages() == ["D4", "D3", "D1"]
    assert len(conn.prune(1e-3, merge_duplicates=False).stages()) == 3


def test_transfer_to_resnet_matches_stages_by_resolution():
    conn = conn_of([("D9", "G", 1), ("D8", "E8", 1), ("D5", "E6", 1), ("D5", "D9", 1), ("D3", "E3", 1),
                    ("D1", "E2", 1), ("D1", "D3", 1), ("D1", "D5", 1), ("D1", "D8", 1), ("D1", "G", 1)])
    moved = conn.transfer("resnet18", RESNET_INFO)
    assert moved.backbone == "resnet18" and moved.num_stages == 5
    # s32 stages (E7..E9 / D7..D9) -> 5, s16 (E5, E6) -> 4, s8 -> 3, s4 -> 2, s2 (E1, E2) -> 1
    assert moved.inputs("D5") == ["E5", "G"]                # D9 <- G and D8 <- E8 merged (both now D5)
    assert moved.inputs("D4") == ["E4", "D5"]
    assert moved.inputs("D2") == ["E2"]
    assert moved.inputs("D1") == ["E1", "D2", "D4", "D5", "G"]
    assert moved.meta["transferred_from"] == "mobilenet_v2"


def test_transfer_drops_stages_without_a_match():
    info = small_info(reductions=(2, 4, 8, 16))
    conn = conn_of([("D4", "E4", 1), ("D1", "D4", 1), ("D1", "E1", 1)], info)
    moved = conn.transfer("y", small_info(reductions=(2, 4, 8), channels=(3, 3, 3)))
    assert moved.edges == [Edge("D1", "E1", 1)]
