import pickle

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image

from nni_sparsemask.data.transforms import eval_transform
from nni_sparsemask.data.voc import (NUM_CLASSES, VOCSegmentation, load_sbd_mask, load_voc_mask, train_aug_ids)

H, W = 6, 8
VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005"]
SBD_TRAIN = ["2007_000002", "2007_000004", "2008_000006", "2008_000007"]
SBD_VAL = ["2008_000008", "2007_000003"]
# (SBD train U SBD val U VOC train) - VOC val
EXPECTED_AUG = ["2007_000001", "2007_000002", "2007_000003", "2008_000006", "2008_000007", "2008_000008"]


def _palette():
    pal = [0] * (256 * 3)
    pal[3:6] = [128, 0, 0]
    pal[15 * 3:15 * 3 + 3] = [192, 128, 128]
    pal[255 * 3:255 * 3 + 3] = [224, 224, 192]
    return pal


def _write_jpg(path, seed, size=(H, W)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=95)


def _write_png(path, label):
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.astype(np.uint8).tobytes())
    im.putpalette(_palette())
    im.save(path)


def _write_mat(path, label):
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(label.shape, dtype=np.uint8)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": label.astype(np.uint8), "Boundaries": boundaries,
                                      "CategoriesPresent": present}})


def voc_label(i):  # person (15) block, aeroplane (1) stripe, border 255
    lab = np.zeros((H, W), np.uint8)
    lab[1:4, 1:4] = 15
    lab[5, :] = 1
    lab[0, i % W] = 255
    return lab


def sbd_label(i):  # cat (8) block, no ignore border
    lab = np.zeros((H, W), np.uint8)
    lab[2:, 4:] = 8
    lab[0, 0] = i % 5
    return lab


@pytest.fixture()
def roots(tmp_path):
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for n, i in enumerate(VOC_TRAIN + VOC_VAL):
        _write_jpg(voc / "JPEGImages" / f"{i}.jpg", n)
        _write_png(voc / "SegmentationClass" / f"{i}.png", voc_label(n))
    _write_jpg(voc / "JPEGImages" / "2008_000006.jpg", 99)  # a VOC photo without a VOC mask (as in reality)
    seg = voc / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (seg / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (seg / "trainval.txt").write_text("\n".join(VOC_TRAIN + VOC_VAL) + "\n")

    sbd = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    for n, i in enumerate(sorted(set(SBD_TRAIN + SBD_VAL))):
        _write_jpg(sbd / "img" / f"{i}.jpg", 100 + n)
        _write_mat(sbd / "cls" / f"{i}.mat", sbd_label(n))
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return tmp_path / "voc", tmp_path / "sbd"


def test_train_aug_id_arithmetic():
    assert train_aug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL) == EXPECTED_AUG
    # every VOC val id is removed (even one listed in SBD), duplicates collapse, the order is sorted
    ids = train_aug_ids(["a", "b"], ["b", "c"], ["c", "d", "d"], ["a"])
    assert ids == ["a", "d"]


def test_voc_splits_and_class_values(roots):
    voc_root, _ = roots
    train = VOCSegmentation(voc_root, "train")
    assert train.ids == VOC_TRAIN and len(train) == 3
    assert len(VOCSegmentation(voc_root, "val")) == 2
    assert len(VOCSegmentation(voc_root / "VOCdevkit" / "VOC2012", "trainval")) == 5  # deeper root accepted
    image, mask = train[1]
    assert image.mode == "RGB" and image.size == (W, H)
    assert np.array_equal(np.array(mask), voc_label(1))  # palette indices, 255 kept
    assert set(np.unique(np.array(mask)).tolist()) == {0, 1, 15, 255}
    assert NUM_CLASSES == 21


def test_train_aug_sources_and_labels(roots):
    voc_root, sbd_root = roots
    ds = VOCSegmentation(voc_root, "train_aug", sbd_root=sbd_root)
    assert ds.ids == EXPECTED_AUG
    by_id = {s.id: s for s in ds.samples}
    assert by_id["2007_000002"].mask_format == "png"          # in both: VOC label by default
    assert by_id["2008_000007"].mask_format == "mat"          # SBD only
    assert "JPEGImages" in by_id["2008_000006"].image         # VOC photo preferred when present
    assert by_id["2008_000006"].mask_format == "mat"
    assert "benchmark_RELEASE" in by_id["2008_000007"].image
    sbd_ids = sorted(set(SBD_TRAIN + SBD_VAL))
    k = ds.ids.index("2008_000008")
    assert np.array_equal(ds.load_mask(k), sbd_label(sbd_ids.index("2008_000008")))
    _, mask = ds[k]
    assert set(np.unique(np.array(mask)).tolist()) <= set(range(21))
    pref_sbd = VOCSegmentation(voc_root, "train_aug", sbd_root=sbd_root / "benchmark_RELEASE", label_priority="sbd")
    assert {s.id: s.mask_format for s in pref_sbd.samples}["2007_000002"] == "mat"
    assert {s.id: s.mask_format for s in pref_sbd.samples}["2007_000001"] == "png"  # not in SBD


def test_sbd_mat_layout_matches_torchvision(roots):
    from torchvision.datasets import SBDataset
    _, sbd_root = roots
    dataset_dir = sbd_root / "benchmark_RELEASE" / "dataset"
    tv = SBDataset(str(dataset_dir), image_set="val", mode="segmentation", download=False)
    for img_path, mask_path in zip(tv.images, tv.masks):
        assert np.array_equal(np.array(tv._get_segmentation_target(mask_path)), load_sbd_mask(mask_path))
    assert load_sbd_mask(tv.masks[0]).dtype == np.uint8


def test_transform_and_pickle(roots):
    voc_root, sbd_root = roots
    ds = VOCSegmentation(voc_root, "train_aug", sbd_root=sbd_root, transform=eval_transform())
    x, y = ds[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and y.dtype == torch.long
    blob = pickle.dumps(ds)
    assert len(blob) < 4000  # paths only, no pixels
    clone = pickle.loads(blob)
    assert clone.ids == ds.ids and torch.equal(clone[0][1], y)


def test_missing_and_partial_roots(roots, tmp_path):
    voc_root, sbd_root = roots
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2012/JPEGImages"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="benchmark_RELEASE/dataset/cls"):
        VOCSegmentation(voc_root, "train_aug", sbd_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="sbd_root"):
        VOCSegmentation(voc_root, "train_aug")
    with pytest.raises(ValueError, match="image_set"):
        VOCSegmentation(voc_root, "test")
    (sbd_root / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000007.mat").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000007.mat"):
        VOCSegmentation(voc_root, "train_aug", sbd_root=sbd_root)
    (voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCSegmentation(voc_root, "val")
    import shutil
    shutil.rmtree(voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass")
    with pytest.raises(FileNotFoundError, match="incomplete.*SegmentationClass"):
        VOCSegmentation(voc_root, "train")


def test_size_mismatch_and_bad_masks(roots):
    voc_root, _ = roots
    voc = voc_root / "VOCdevkit" / "VOC2012"
    _write_jpg(voc / "JPEGImages" / "2007_000002.jpg", 7, size=(H + 1, W))
    ds = VOCSegmentation(voc_root, "train")
    with pytest.raises(ValueError, match="2007_000002.png"):
        ds[1]
    rgb = voc / "SegmentationClass" / "2007_000001.png"
    Image.open(rgb).convert("RGB").save(rgb)
    with pytest.raises(ValueError, match="mode 'RGB'"):
        load_voc_mask(rgb)
    bad = voc_label(0)
    bad[0, 0] = 40
    _write_png(voc / "SegmentationClass" / "2007_000003.png", bad)
    with pytest.raises(ValueError, match="2007_000003.png.*40"):
        ds[2]
