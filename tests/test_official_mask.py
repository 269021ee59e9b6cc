"""Importing the official code's search result (a bool (L, L, 2) mask) as a Connectivity.

tests/data/mask_thres_0.001.npy is a copy of the mask published with the paper's code (MobileNetV2, VOC)."""
from pathlib import Path

import numpy as np
import pytest

from nni_sparsemask.fdn.connectivity import Connectivity, convert_official_mask
from nni_sparsemask.fdn.pruned import build_pruned, decoder_parameter_count
from nni_sparsemask.measure.params import count_parameters
from helpers import MNV2_INFO, small_info

MASK = Path(__file__).parent / "data" / "mask_thres_0.001.npy"

#: the published decoder, read off the mask by hand (decoder index i = D_{9-i}, encoder map j = E_{9-j},
#: [i, 0, 1] = G, [i, j >= 1, 1] = D_{10-j})
PUBLISHED = {
    "D8": ["E9", "G"],
    "D7": ["E7", "G"],
    "D6": ["E6", "G"],
    "D1": ["E1", "E6", "E7", "E8", "E9", "D6", "D7", "D8", "G"],
}


def test_the_published_mask_is_the_papers_decoder():
    conn = Connectivity.from_official_mask(MASK, feature_info=MNV2_INFO)
    assert {s: conn.inputs(s) for s in conn.stages()} == PUBLISHED
    assert conn.num_edges == 15 and conn.output == "D1" and conn.backbone == "mobilenet_v2"
    assert all(e.weight == 1.0 for e in conn.edges)
    assert conn.meta["mask_file"] == str(MASK)


def test_the_published_decoder_has_table_1s_056m_parameters():
    conn = Connectivity.from_official_mask(MASK, feature_info=MNV2_INFO)  # build_pruned checks it against 1.0
    count = count_parameters(build_pruned(conn, num_classes=21, decoder_channels=64))
    assert count.decoder == pytest.approx(0.56e6, abs=0.005e6)
    assert count.decoder == decoder_parameter_count(conn, 21, 64)
    assert f"{count.encoder / 1e6:.2f}" == "2.22"  # Table 1: 2.22+0.56M


def _all_allowed(L=4):
    mask = np.zeros((L, L, 2), dtype=bool)
    for i in range(L):
        mask[i, : i + 1, :] = True  # j <= i on both channels: exactly T_l
    return mask


def _edges(conn):
    return {(s, src) for s in conn.stages() for src in conn.inputs(s)}


def test_every_allowed_entry_on_is_the_dense_fdn():
    conn = Connectivity.from_official_mask(_all_allowed(), "x", feature_info=small_info())
    assert _edges(conn) == _edges(Connectivity.dense("x", small_info()))


@pytest.mark.parametrize("entry,target,source", [
    ((0, 0, 0), "D4", "E4"), ((0, 0, 1), "D4", "G"), ((1, 1, 0), "D3", "E3"), ((1, 1, 1), "D3", "D4"),
    ((3, 0, 0), "D1", "E4"), ((3, 3, 0), "D1", "E1"), ((3, 1, 1), "D1", "D4"), ((3, 3, 1), "D1", "D2"),
    ((2, 0, 1), "D2", "G"), ((2, 2, 1), "D2", "D3"),
])
def test_each_entry_maps_to_its_edge(entry, target, source):
    mask = _all_allowed()
    mask[entry] = False  # the dense FDN less exactly this edge (every stage keeps other inputs)
    conn = Connectivity.from_official_mask(mask, "x", feature_info=small_info())
    lost = _edges(Connectivity.dense("x", small_info())) - _edges(conn)
    assert (target, source) in lost
    # only D1 reads D2: without that edge D2 is dead and pruned with its inputs
    assert lost - {(target, source)} == ({("D2", s) for s in ("E2", "E3", "E4", "D3", "D4", "G")}
                                         if (target, source) == ("D1", "D2") else set())


def test_integer_and_float_zero_one_masks_are_accepted():
    mask = np.load(MASK)
    for dtype in (np.int64, np.uint8, np.float32):
        conn = Connectivity.from_official_mask(mask.astype(dtype), feature_info=MNV2_INFO)
        assert {s: conn.inputs(s) for s in conn.stages()} == PUBLISHED


def test_a_mask_for_another_backbone_says_the_expected_shape():
    with pytest.raises(ValueError, match=r"shape \(9, 9, 2\).*'convnet' has 5 stages: expected \(5, 5, 2\)"):
        Connectivity.from_official_mask(MASK, "convnet")
    with pytest.raises(ValueError, match=r"shape \(5, 5, 2\).*'mobilenet_v2' has 9 stages: expected \(9, 9, 2\)"):
        Connectivity.from_official_mask(np.zeros((5, 5, 2), bool), feature_info=MNV2_INFO)
    with pytest.raises(ValueError, match=r"expected \(4, 4, 2\)"):
        Connectivity.from_official_mask(np.zeros((4, 4)), "x", feature_info=small_info())


@pytest.mark.parametrize("value", [2, 0.5, np.nan, -1])
def test_values_other_than_zero_one_are_refused(value):
    mask = np.load(MASK).astype(float)
    mask[8, 8, 0] = value
    with pytest.raises(ValueError, match="expected a bool \\(or 0/1\\) array"):
        Connectivity.from_official_mask(mask, feature_info=MNV2_INFO)


def test_an_edge_the_fdn_cannot_have_is_refused():
    mask = np.load(MASK)
    mask[1, 3, 0] = True  # D8 reading E6: a shallower encoder map
    with pytest.raises(ValueError, match=r"mask\[1, 3, 0\] is set: D8 would read E6, a shallower encoder map; "
                                         r"the FDN lets D8 read only E8, E9, D9, G"):
        Connectivity.from_official_mask(mask, feature_info=MNV2_INFO)
    mask = np.load(MASK)
    mask[2, 4, 1] = True  # D7 reading D6
    with pytest.raises(ValueError, match="D7 would read D6, a shallower decoder stage"):
        Connectivity.from_official_mask(mask, feature_info=MNV2_INFO)


def test_a_mask_that_feeds_nothing_to_the_head_is_refused():
    mask = np.load(MASK)
    mask[8] = False
    with pytest.raises(ValueError, match="output stage D1 without inputs"):
        Connectivity.from_official_mask(mask, feature_info=MNV2_INFO)


def test_missing_and_non_npy_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="official mask file not found"):
        Connectivity.from_official_mask(tmp_path / "nope.npy", feature_info=MNV2_INFO)
    text = tmp_path / "mask.json"
    text.write_text("{}")
    with pytest.raises(ValueError, match="is not a .npy array file"):
        Connectivity.from_official_mask(text, feature_info=MNV2_INFO)
    fake = tmp_path / "fake.npy"
    fake.write_text("not numpy")
    with pytest.raises(ValueError, match="is not a .npy array file"):
        Connectivity.from_official_mask(fake, feature_info=MNV2_INFO)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="is not a .npy array file"):
        Connectivity.from_official_mask(pickled, feature_info=MNV2_INFO)


def test_convert_writes_the_connectivity_and_refuses_to_overwrite(tmp_path):
    mask = tmp_path / "mask.npy"
    np.save(mask, _all_allowed(5))
    out = tmp_path / "connectivity.json"
    conn = convert_official_mask(mask, out, "convnet", backbone_kwargs={"widths": [4, 8, 8, 8, 8]})
    assert Connectivity.from_json(out) == conn
    assert conn.backbone == "convnet" and conn.backbone_kwargs == {"widths": [4, 8, 8, 8, 8]}
    assert conn.num_edges == Connectivity.dense("convnet", conn.feature_info).num_edges
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_official_mask(mask, out, "convnet")
    out.write_text("old")
    convert_official_mask(mask, out, "convnet", overwrite=True, backbone_kwargs={"widths": [4, 8, 8, 8, 8]})
    assert Connectivity.from_json(out) == conn
    with pytest.raises(FileNotFoundError):
        convert_official_mask(tmp_path / "none.npy", tmp_path / "other.json", "convnet")
    with pytest.raises(ValueError, match="expected \\(5, 5, 2\\)"):
        convert_official_mask(MASK, tmp_path / "other.json", "convnet")
    assert not (tmp_path / "other.json").exists()
