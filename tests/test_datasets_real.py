"""ADE20K, MSRA-B, DUTS, ECSSD and BSDS500 read from tiny copies of their real on-disk layouts, and the registry
(nni_sparsemask.data.datasets) with its task and root checks."""
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from nni_sparsemask.data.ade20k import ADE20K, ADE20K_CLASSES, load_ade_mask
from nni_sparsemask.data.bsds500 import BSDS500, edge_target, load_bsds_boundaries
from nni_sparsemask.data.datasets import (DATASETS, build_dataset, check_root, check_task, class_names,
                                          num_classes)
from nni_sparsemask.data.saliency import DUTS, ECSSD, MSRAB, load_binary_mask
from nni_sparsemask.data.transforms import eval_transform, train_transform

from helpers import H, W, _ade_label, _boundaries, _gt_mat, _jpg, _png, write_real_fixtures  # noqa: E402


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_real_fixtures(tmp_path_factory.mktemp("real"))


# ------------------------------------------------------------------------------------------------ ADE20K
def test_ade20k_loads_and_shifts_labels(roots):
    train, val = ADE20K(roots["ade20k"], "train"), ADE20K(roots["ade20k"] / "ADEChallengeData2016", "val")
    assert (len(train), len(val)) == (3, 2) and train.num_classes == 150 == len(ADE20K_CLASSES)
    assert train.ids[0] == "ADE_train_00000000" and ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    image, target = train[1]
    assert image.mode == "RGB" and image.size == (W, H) and target.mode == "L"
    lab = np.array(target)
    assert lab[0, 0] == 255 and lab[0, 10] == 1 and lab[20, 25] == 149  # 0 -> ignore, 2 -> 1, 150 -> 149
    assert set(np.unique(lab)) == {1, 149, 255}
    img_t, tgt_t = ADE20K(roots["ade20k"], "val", transform=eval_transform())[0]
    assert img_t.shape == (3, H, W) and img_t.dtype == torch.float32
    assert tgt_t.shape == (H, W) and tgt_t.dtype == torch.int64 and set(tgt_t.unique().tolist()) == {0, 149, 255}
    img_c, tgt_c = ADE20K(roots["ade20k"], transform=train_transform(crop_size=16))[0]
    assert img_c.shape == (3, 16, 16) and tgt_c.shape == (16, 16)
    assert pickle.loads(pickle.dumps(train)).samples == train.samples


def test_ade20k_refuses_bad_annotations(tmp_path):
    bad = tmp_path / "bad.png"
    _png(bad, np.full((H, W), 151, np.uint8))
    with pytest.raises(ValueError, match=r"bad\.png: label values \[151\]"):
        load_ade_mask(bad)
    _png(bad, np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match=r"bad\.png: annotation PNG has mode 'RGB'"):
        load_ade_mask(bad)


def test_ade20k_refuses_partial_copies_and_other_layouts(tmp_path, roots):
    ade = tmp_path / "ADEChallengeData2016"
    _jpg(ade / "images" / "training" / "a.jpg", 0)
    _jpg(ade / "images" / "training" / "b.jpg", 1)
    _png(ade / "annotations" / "training" / "a.png", _ade_label(0))
    with pytest.raises(FileNotFoundError, match=r"1 images in .* have no \*\.png annotation .* e\.g\. b"):
        ADE20K(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"incomplete, missing: .*images/validation") as err:
        ADE20K(tmp_path, "val")
    assert "found in" in str(err.value) and "ADEChallengeData2016/annotations/{training,validation}" in str(err.value)
    with pytest.raises(ValueError, match="ADE20K has split"):
        ADE20K(roots["ade20k"], "test")
    _png(ade / "annotations" / "training" / "b.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png: annotation is 25x32 but image .*b\.jpg is 24x32"):
        ADE20K(tmp_path, "train")[1]


# ------------------------------------------------------------------------------------------------ saliency
def test_msrab_splits_and_binary_targets(roots):
    train, val, test, every = (MSRAB(roots["msrab"], s) for s in ("train", "val", "test", "all"))
    assert (train.ids, val.ids, test.ids, every.ids) == (["0_0", "0_2"], ["0_1"], ["0_1"], ["0_0", "0_1", "0_2"])
    image, target = train[0]
    lab = np.array(target)
    assert image.size == (W, H) and lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    assert lab[4, 4] == 1 and lab[0, 0] == 0 and train.num_classes == 2
    flat = MSRAB(roots["msrab_flat"], "all", transform=eval_transform())
    img_t, tgt_t = flat[1]
    assert len(flat) == 2 and img_t.shape == (3, H, W) and tgt_t.dtype == torch.int64
    assert set(tgt_t.unique().tolist()) == {0, 1}


def test_duts_and_ecssd(roots):
    tr, te = DUTS(roots["duts"], "train"), DUTS(roots["duts"] / "DUTS-TE", "test")
    assert (len(tr), len(te)) == (3, 2) and tr.ids[0] == "ILSVRC_0"
    ecssd = ECSSD(roots["ecssd"], transform=eval_transform(pad_to=40))
    img, tgt = ecssd[0]
    assert len(ecssd) == 2 and ecssd.ids == ["0001", "0002"] and img.shape == (3, 40, 40)
    assert set(tgt.unique().tolist()) == {0, 1, 255}  # 255 only from the padding
    batch = next(iter(torch.utils.data.DataLoader(DUTS(roots["duts"], transform=eval_transform()), batch_size=3)))
    assert batch[0].shape == (3, 3, H, W) and batch[1].shape == (3, H, W)
    with pytest.raises(ValueError, match="ECSSD has split"):
        ECSSD(roots["ecssd"], "train")


@pytest.mark.parametrize("arr, mode, ok", [
    (np.array([[0, 255], [255, 0]], np.uint8), None, {0, 1}),
    (np.array([[0, 1], [1, 1]], np.uint8), None, {0, 1}),
    (np.zeros((2, 2), np.uint8), None, {0}),
    (np.dstack([np.array([[0, 255], [0, 0]], np.uint8)] * 3), None, {0, 1}),  # a grey mask saved as RGB
    (np.array([[255, 0], [0, 0]], np.uint8), "1", {0, 1}),  # a 1-bit PNG
])
def test_binary_masks_that_load(tmp_path, arr, mode, ok):
    _png(tmp_path / "m.png", arr, mode)
    assert set(np.unique(load_binary_mask(tmp_path / "m.png")).tolist()) == ok


@pytest.mark.parametrize("arr, message", [
    (np.array([[0, 255], [128, 128]], np.uint8), r"m\.png: saliency mask is not binary: values \[128\] besides 0 "
                                                 r"and 255 in 2 of 4 pixels"),
    (np.array([[0, 255], [1, 255]], np.uint8), r"m\.png: saliency mask is not binary: values \[1\] besides 0 and 255"),
    (np.dstack([np.array([[0, 255]], np.uint8), np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8)]),
     r"m\.png: saliency mask is a colour \(RGB\) image"),
])
def test_non_binary_masks_are_refused_naming_the_file(tmp_path, arr, message):
    _png(tmp_path / "m.png", arr)
    with pytest.raises(ValueError, match=message):
        load_binary_mask(tmp_path / "m.png")


def test_saliency_layout_errors(tmp_path, roots):
    (tmp_path / "MSRA-B" / "image").mkdir(parents=True)
    (tmp_path / "MSRA-B" / "annotation").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing: .*train_cvpr2013\.txt.*found in"):
        MSRAB(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"no \*\.jpg images in"):
        MSRAB(tmp_path, "all")
    lst = tmp_path / "MSRA-B" / "valid_cvpr2013.txt"
    lst.write_text("9_9.png\n")
    with pytest.raises(FileNotFoundError, match=r"1 ids of the split list have neither image nor annotation, e\.g\. "
                                                r"9_9"):
        MSRAB(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"(?s)no DUTS layout found .*found in .*: MSRA-B/\n.*DUTS-TR-Image"):
        DUTS(tmp_path, "train")


# ------------------------------------------------------------------------------------------------ BSDS500
def test_bsds500_hed_target_and_annotators(roots):
    train = BSDS500(roots["bsds500"], "train")
    assert len(train) == 2 and train.ids == ["train0", "train1"] and train.num_classes == 2
    image, target = train[0]
    lab = np.array(target)
    assert image.size == (W, H) and lab.shape == (H, W)
    # 3 annotators: row 5 by 3/3 and row 10 by 2/3 are edges (>= 0.5 of them), row 15 by 1/3 is not
    assert lab[5].tolist() == [1] * W and lab[10].tolist() == [1] * W and lab[15].tolist() == [0] * W
    assert lab.sum() == 2 * W
    img_t, tgt_t, b = BSDS500(roots["bsds500"], "test", transform=eval_transform(pad_to=40), with_boundaries=True)[1]
    assert img_t.shape == (3, 40, 40) and tgt_t.shape == (40, 40)
    assert b.shape == (4, W, H) and b.dtype == torch.uint8 and b.sum() == 4 * H + 2 * H + H  # portrait image
    soft = BSDS500(roots["bsds500"] / "BSR", "train", ignore_uncertain=True, threshold=0.7)
    lab = np.array(soft[0][1])
    assert lab[5, 0] == 1 and lab[10, 0] == 255 and lab[15, 0] == 255 and lab[0, 0] == 0
    assert len(BSDS500(roots["bsds500"], "trainval")) == 3
    with pytest.raises(ValueError, match=r"with_boundaries=True keeps .* 24x32, but the transform made the target "
                                         r"16x16"):
        BSDS500(roots["bsds500"], "train", transform=train_transform(crop_size=16), with_boundaries=True)[0]
    maps = _boundaries(4)
    assert edge_target(maps, 0.5).sum() == 2 * W and edge_target(maps, 0.25).sum() == 3 * W


def test_bsds500_refuses_bad_mat_files(tmp_path):
    path = tmp_path / "x.mat"
    _gt_mat(path, _boundaries(2), field="Edges")
    with pytest.raises(ValueError, match=r"x\.mat: annotator 1 of 2 in groundTruth has no Boundaries field "
                                         r"\(fields: \['Segmentation', 'Edges'\]\)"):
        load_bsds_boundaries(path)
    scipy.io.savemat(path, {"gt": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"x\.mat: no groundTruth variable \(found \['gt'\]\)"):
        load_bsds_boundaries(path)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Boundaries": np.full((2, 2), 2, np.uint8)}
    scipy.io.savemat(path, {"groundTruth": cell})
    with pytest.raises(ValueError, match=r"x\.mat: Boundaries of annotator 1 holds \[2\], expected 0 and 1"):
        load_bsds_boundaries(path)
    path.write_text("not a mat file")
    with pytest.raises(ValueError, match=r"x\.mat: not a readable MATLAB file"):
        load_bsds_boundaries(path)
    assert load_bsds_boundaries(_write_ok(tmp_path)).shape == (3, H, W)


def _write_ok(tmp_path):
    _gt_mat(tmp_path / "ok.mat", _boundaries(3))
    return tmp_path / "ok.mat"


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_tasks_and_classes():
    assert set(DATASETS) == {"ade20k", "msrab", "duts", "ecssd", "bsds500", "voc", "digitscenes"}
    assert check_task("ade20k", "segmentation").cls is ADE20K
    assert (num_classes("ade20k", "segmentation"), num_classes("voc", "segmentation"),
            num_classes("duts", "saliency"), num_classes("bsds500", "edges")) == (150, 21, 2, 2)
    from nni_sparsemask.data.scenes import NUM_CLASSES
    assert DATASETS["digitscenes"].num_classes == NUM_CLASSES
    assert class_names("bsds500", "edges") == ["background", "edge"]
    with pytest.raises(ValueError, match=r"^dataset 'ade20k' supports task segmentation only, not task 'edges'$"):
        check_task("ade20k", "edges")
    with pytest.raises(ValueError, match=r"^dataset 'digitscenes' supports tasks segmentation, saliency, edges, "
                                         r"classification, not task 'depth'$"):
        check_task("digitscenes", "depth")
    with pytest.raises(ValueError, match="unknown dataset 'coco'; use one of ade20k, msrab"):
        check_task("coco", "segmentation")


def test_check_root_and_build(roots, tmp_path):
    assert check_root("ade20k", roots["ade20k"], "val") == roots["ade20k"] / "ADEChallengeData2016"
    assert check_root("bsds500", roots["bsds500"]) == roots["bsds500"] / "BSR" / "BSDS500" / "data"
    assert check_root("duts", roots["duts"], "test") == roots["duts"]
    assert check_root("ecssd", roots["ecssd"]) == roots["ecssd"] / "ECSSD"  # evaluation only: its test split
    assert check_root("msrab", roots["msrab_flat"], "all") == roots["msrab_flat"] / "MSRA-B"
    assert check_root("digitscenes", None) is None
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for name, expected in (("ade20k", "images/{training,validation}"), ("bsds500", "groundTruth/{train,val,test}"),
                           ("ecssd", "ground_truth_mask"), ("msrab", "{train,valid,test}_cvpr2013.txt"),
                           ("voc", "SegmentationClass")):
        with pytest.raises(FileNotFoundError) as err:
            check_root(name, tmp_path)
        assert f"found in {tmp_path}: notes.txt, photos/" in str(err.value) and expected in str(err.value), name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_root("duts", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs its root folder"):
        check_root("ade20k", None)
    with pytest.raises(ValueError, match="duts has split"):
        check_root("duts", roots["duts"], "val")
    ds = build_dataset("bsds500", roots["bsds500"], "test", task="edges", transform=eval_transform(),
                       with_boundaries=True)
    assert len(ds) == 2 and len(ds[0]) == 3
    assert len(build_dataset("msrab", roots["msrab"])) == 2  # its training split
    with pytest.raises(ValueError, match="supports task saliency only"):
        build_dataset("ecssd", roots["ecssd"], task="segmentation")
