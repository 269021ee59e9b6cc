import pytest
import torch
from nni.mutable import CategoricalMultiple

from nni_sparsemask import FDNSpace
from nni_sparsemask.fdn.connectivity import candidate_names
from helpers import TINY


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return FDNSpace(num_classes=5, decoder_channels=8, **TINY)


def test_candidate_sets_match_the_paper_for_nine_stages(space):
    L = 9
    sizes = {label: len(space.candidates(label)) for label in space.labels()}
    assert sizes == {f"D{l}": 2 * (L - l) + 2 for l in range(1, L + 1)}
    # each candidate is an independent on/off bit: 2^(L(L+1)) architectures, 2^90 for MobileNetV2
    assert sum(sizes.values()) == L * (L + 1) == 90
    assert space.candidates("D8") == ["E8", "E9", "D9", "G"]
    assert space.candidates("D3") == ["E3", "E4", "E5", "E6", "E7", "E8", "E9", "D4", "D5", "D6", "D7", "D8", "D9", "G"]
    assert candidate_names(9, 9) == ["E9", "G"]


def test_every_stage_is_a_multi_input_choice(space):
    mutables = space.simplify()
    assert sorted(mutables) == sorted(space.labels())
    for label, m in mutables.items():
        assert isinstance(m, CategoricalMultiple) and m.n_chosen is None
        assert list(m.values) == list(range(len(space.candidates(label))))


@pytest.mark.parametrize("size", [(32, 32), (50, 70), (33, 47)])
def test_dense_mode_gives_logits_at_any_input_size(space, size):
    out = space(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)


def test_frozen_architecture_runs_only_the_chosen_edges(space):
    # D1 reads E1 and D9; D9 reads G; every other stage is empty (dead)
    sample = {label: [] for label in space.labels()}
    sample["D9"] = [1]                              # G
    sample["D1"] = [0, space.candidates("D1").index("D9")]
    frozen = space.freeze(sample)
    out = frozen(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5, 32, 32)
    sample["D1"] = [space.candidates("D1").index("D5")]  # D5 is dead: nothing reaches the head
    with pytest.raises(RuntimeError, match="D1 has no live input"):
        space.freeze(sample)(torch.randn(2, 3, 32, 32))


def test_connectivity_from_weights_prunes_at_threshold(space):
    weights = {label: [0.0] * len(space.candidates(label)) for label in space.labels()}
    weights["D1"][0] = 0.9   # E1
    weights["D1"][-1] = 0.5  # G
    weights["D2"][0] = 0.8   # D2 is read by nobody: dropped
    conn = space.connectivity_from_weights(weights, threshold=1e-3)
    assert conn.stages() == ["D1"] and conn.inputs("D1") == ["E1", "G"]
    full = space.connectivity_from_weights(weights)
    assert full.num_edges == 90


@pytest.mark.parametrize("kwargs,match", [
    ({"backbone": "nope"}, "unknown backbone"),
    ({"num_classes": 0}, "num_classes"),
    ({"decoder_channels": 0}, "decoder_channels"),
])
def test_bad_space_arguments(kwargs, match):
    args = dict(num_classes=3, decoder_channels=4, **TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FDNSpace(**args)


def test_unknown_stage_label(space):
    with pytest.raises(ValueError, match="unknown decoder stage 'D10'"):
        space.candidates("D10")


def test_wrong_image_channels(space):
    with pytest.raises(ValueError, match="expects images"):
        space(torch.randn(2, 4, 32, 32))
