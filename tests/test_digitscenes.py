"""DigitScenes: determinism, labels and views, split disjointness, lazy pickling, on-disk cache with checksum."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from nni_sparsemask.data import digitscenes as ds
from nni_sparsemask.data import scenes
from nni_sparsemask.data.digitscenes import DigitScenes, DigitScenesConfig, generate_scenes, load_or_generate

TINY = dict(image_size=32, num_scenes=12)


@pytest.fixture(scope="module")
def tiny_arrays():
    return generate_scenes(DigitScenesConfig(**TINY), progress=False)


def test_generation_is_deterministic_and_seeded(tiny_arrays):
    again = generate_scenes(DigitScenesConfig(**TINY), progress=False)
    for name in tiny_arrays:
        assert np.array_equal(tiny_arrays[name], again[name]), name
    other = generate_scenes(DigitScenesConfig(**TINY, seed=1), progress=False)
    assert not np.array_equal(tiny_arrays["images"], other["images"])
    # scene i does not depend on how many scenes are generated
    fewer = generate_scenes(DigitScenesConfig(image_size=32, num_scenes=5), progress=False)
    assert np.array_equal(fewer["segmentation"], tiny_arrays["segmentation"][:5])


def test_arrays_shapes_and_label_values(tiny_arrays):
    a = tiny_arrays
    assert a["images"].shape == (12, 32, 32, 3) and a["images"].dtype == np.uint8
    assert a["segmentation"].shape == (12, 32, 32)
    values = set(np.unique(a["segmentation"]).tolist())
    assert values <= set(range(11)) | {255}
    assert 0 in values and 255 in values and len(values - {0, 255}) >= 3
    n_digits = (a["digits"] >= 0).sum(1)
    assert n_digits.min() >= 1 and n_digits.max() <= 4
    # every label in a scene is background or one of the digits drawn in it (class = digit + 1)
    for seg, digits in zip(a["segmentation"], a["digits"]):
        labels = set(np.unique(seg).tolist()) - {0, 255}
        assert labels <= {int(d) + 1 for d in digits if d >= 0}
    # ignore pixels only where the hard map and its neighbourhood have a digit
    assert np.all((a["segmentation"] == 255) | (a["segmentation"] == a["hard"]))


def test_paint_order_later_digit_covers_earlier():
    image = np.zeros((6, 6, 3), np.float32)
    hard = np.zeros((6, 6), np.uint8)
    ignore = np.zeros((6, 6), bool)
    first = np.zeros((6, 6), np.float32)
    first[1:5, 1:5] = 1.0
    first[0, 1:5] = 0.3  # soft border row
    second = np.zeros((6, 6), np.float32)
    second[3:6, 3:6] = 1.0
    second[2, 3:6] = 0.4  # soft border over the first digit's core
    scenes._paint(image, hard, ignore, first, np.array([1.0, 0, 0]), 4, 0.25, 0.5)
    scenes._paint(image, hard, ignore, second, np.array([0, 0, 1.0]), 9, 0.25, 0.5)
    assert np.all(hard[3:6, 3:6] == 9) and not ignore[3:6, 3:6].any()      # the later digit wins
    assert np.all(hard[1:3, 1:3] == 4) and not ignore[1:2, 1:3].any()      # uncovered part of the first
    assert ignore[2, 3:6].all() and ignore[0, 1:5].all()                  # soft borders are ignore
    assert ignore.sum() == 3 + 4
    assert np.allclose(image[4, 4], [0, 0, 1]) and np.allclose(image[1, 1], [1, 0, 0])
    assert np.allclose(image[2, 3], [0.6, 0, 0.4])                        # alpha blending


def test_train_and_val_are_disjoint():
    tr_imgs, tr_labels, tr_tiles = scenes._sources("train", 0.2)
    va_imgs, va_labels, va_tiles = scenes._sources("val", 0.2)
    assert len(tr_imgs) + len(va_imgs) == 1797 and abs(len(va_imgs) - 359) <= 1
    tr_set = {im.tobytes() for im in tr_imgs}
    assert sum(im.tobytes() in tr_set for im in va_imgs) <= 5  # load_digits has a few exact duplicates only
    assert len(tr_tiles) == 16 and len(va_tiles) == 4
    tr_t = {t.tobytes() for t in tr_tiles}
    assert not any(t.tobytes() in tr_t for t in va_tiles)
    # val tiles come from both rows and several columns (not a top/bottom split)
    rows = {r for p in scenes._VAL_TILES.values() for r, _ in p}
    cols = {c for p in scenes._VAL_TILES.values() for _, c in p}
    assert rows == {0, 1} and len(cols) >= 2


@pytest.mark.parametrize("task,classes", [("segmentation", set(range(11)) | {255}), ("saliency", {0, 1, 255}),
                                          ("edges", {0, 1})])
def test_dense_views(tmp_path, task, classes):
    d = DigitScenes(task=task, cache_dir=tmp_path, **TINY)
    image, target = d[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert target.shape == (32, 32) and target.dtype == torch.long
    values = set(torch.unique(torch.stack([d[i][1] for i in range(len(d))])).tolist())
    assert values <= classes and 1 in values
    assert d.num_classes == ds.NUM_CLASSES[task]


def test_views_agree(tmp_path):
    seg = DigitScenes(task="segmentation", cache_dir=tmp_path, **TINY)
    sal = DigitScenes(task="saliency", cache_dir=tmp_path, **TINY)
    edg = DigitScenes(task="edges", cache_dir=tmp_path, **TINY)
    for i in range(4):
        s, m, e = seg[i][1], sal[i][1], edg[i][1]
        assert torch.equal(m == 255, s == 255)
        assert torch.equal(m == 1, (s > 0) & (s != 255))
        hard = torch.from_numpy(seg.arrays["hard"][i]).long()
        # an edge pixel has a 4-neighbour of another class; a non-edge pixel has none
        pad = torch.nn.functional.pad(hard[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        differs = torch.zeros_like(hard, dtype=torch.bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            differs |= pad[dy:dy + 32, dx:dx + 32] != hard
        assert torch.equal(e == 1, differs)


def test_image_is_imagenet_normalised(tmp_path):
    d = DigitScenes(cache_dir=tmp_path, **TINY)
    raw = DigitScenes(cache_dir=tmp_path, normalize=False, **TINY)
    x, x01 = d[0][0], raw[0][0]
    assert 0.0 <= float(x01.min()) and float(x01.max()) <= 1.0
    expected = (x01 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.allclose(x01 * 255, torch.from_numpy(d.arrays["images"][0]).permute(2, 0, 1).float())


def test_classification_view(tmp_path):
    d = DigitScenes(task="classification", cache_dir=tmp_path, **TINY)
    assert d.config.digits_per_image == (1, 1)
    labels = [int(d[i][1]) for i in range(len(d))]
    assert all(0 <= y <= 9 for y in labels) and len(set(labels)) >= 3
    image, target = d[0]
    assert target.dim() == 0 and target.dtype == torch.long and image.shape == (3, 32, 32)
    # the label is the only digit in the scene
    seg = d.arrays["segmentation"][0]
    assert set(np.unique(seg).tolist()) - {0, 255} == {labels[0] + 1}


def test_transform_hook_is_applied(tmp_path):
    calls = []

    def flip(image, target):
        calls.append(1)
        return image.flip(-1), target.flip(-1)

    plain = DigitScenes(cache_dir=tmp_path, **TINY)
    flipped = DigitScenes(cache_dir=tmp_path, transform=flip, **TINY)
    (x, y), (x0, y0) = flipped[2], plain[2]
    assert torch.equal(y, y0.flip(-1)) and torch.equal(x, x0.flip(-1)) and not torch.equal(y, y0)
    assert calls == [1]
    with pytest.raises(ValueError, match="callable"):
        DigitScenes(transform="flip", **TINY)


def test_lazy_and_cheap_to_pickle(tmp_path, monkeypatch):
    calls = []
    real = ds.generate_scenes
    monkeypatch.setattr(ds, "generate_scenes", lambda *a, **k: calls.append(1) or real(*a, **k))
    d = DigitScenes(cache_dir=tmp_path, **TINY)
    assert calls == [] and len(d) == 12 and calls == []  # nothing generated by __init__ / __len__
    d[0]
    assert calls == [1]
    blob = pickle.dumps(d)
    assert len(blob) < 2000  # the scenes are not pickled
    d2 = pickle.loads(blob)
    assert torch.equal(d2[5][1], d[5][1])
    assert calls == [1]  # the copy read the cache instead of generating again


def test_cache_file_is_named_by_config_and_reused(tmp_path):
    cfg = DigitScenesConfig(**TINY)
    a = load_or_generate(cfg, tmp_path)
    path = tmp_path / f"{cfg.fingerprint()}.npz"
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    mtime = path.stat().st_mtime_ns
    b = load_or_generate(cfg, tmp_path)
    assert path.stat().st_mtime_ns == mtime and np.array_equal(a["images"], b["images"])
    assert DigitScenesConfig(**TINY, seed=3).fingerprint() != cfg.fingerprint()
    assert DigitScenesConfig(**TINY, split="val").fingerprint() != cfg.fingerprint()


def test_cache_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.CACHE_ENV, str(tmp_path / "root"))
    assert ds.default_cache_dir() == tmp_path / "root" / "digitscenes"
    DigitScenes(**TINY)[0]
    assert len(list((tmp_path / "root" / "digitscenes").glob("*.npz"))) == 1


@pytest.mark.parametrize("corruption", ["truncate", "flip_bytes", "wrong_arrays"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, corruption):
    cfg = DigitScenesConfig(**TINY)
    good = load_or_generate(cfg, tmp_path)
    path = tmp_path / f"{cfg.fingerprint()}.npz"
    raw = path.read_bytes()
    if corruption == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif corruption == "flip_bytes":
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["images"] = arrays["images"].copy()
        arrays["images"][0, 0, 0, 0] ^= 0xFF  # a valid file whose data no longer matches its checksum
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    else:
        path.write_bytes(b"not a zip file at all")
    assert ds._read_cache(path, cfg) is None
    rebuilt = load_or_generate(cfg, tmp_path)
    assert np.array_equal(rebuilt["images"], good["images"])
    assert ds._read_cache(path, cfg) is not None  # rewritten, valid again


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=8), "image_size"),
    (dict(image_size=15), "image_size"),
    (dict(digits_per_image=(0, 2)), "digits_per_image"),
    (dict(digits_per_image=(1, 5)), "digits_per_image"),
    (dict(digits_per_image=(3, 2)), "digits_per_image"),
    (dict(split="test"), "split"),
    (dict(digit_scale=(0.5, 1.2)), "digit_scale"),
    (dict(min_contrast=1.5), "min_contrast"),
    (dict(num_scenes=0), "num_scenes"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitScenesConfig(**kwargs)


def test_bad_task_and_field():
    with pytest.raises(ValueError, match="task"):
        DigitScenes(task="depth")
    with pytest.raises(ValueError, match="unknown DigitScenesConfig field"):
        DigitScenes(imagesize=32)
    with pytest.raises(IndexError):
        DigitScenes(cache=False, **TINY)[12]


def test_config_tuples_from_json_lists():
    cfg = DigitScenesConfig(digit_scale=[0.4, 0.6], digits_per_image=[1, 2])
    assert cfg == DigitScenesConfig(digit_scale=(0.4, 0.6), digits_per_image=(1, 2))
    assert cfg.fingerprint() == dataclasses.replace(cfg).fingerprint()


@pytest.mark.slow
def test_classification_view_is_learnable_by_a_small_cnn(tmp_path):
    """A plain 4-block CNN leaves chance (0.10) on unseen val digits and photo tiles within a few epochs."""
    torch.manual_seed(0)
    train = DigitScenes(task="classification", num_scenes=2000, cache_dir=tmp_path)
    val = DigitScenes(task="classification", split="val", num_scenes=300, cache_dir=tmp_path)

    def block(i, o):
        return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1, bias=False), torch.nn.BatchNorm2d(o),
                                   torch.nn.ReLU(), torch.nn.MaxPool2d(2))

    net = torch.nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(10):
        net.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        xv = torch.stack([val[i][0] for i in range(len(val))])
        yv = torch.stack([val[i][1] for i in range(len(val))])
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.25, f"val accuracy {acc:.3f} (chance 0.10)"


@pytest.mark.parametrize("progress", [True, False])
def test_the_generation_bar_follows_progress(tmp_path, capfd, progress):
    """``--no-progress`` reaches the data set: the bar of a split generated on first use is shown only with
    ``progress`` (the bar appears from 200 scenes on)."""
    data = DigitScenes(image_size=32, num_scenes=200, cache_dir=tmp_path, progress=progress)
    assert len(data.arrays["images"]) == 200
    assert ("DigitScenes train 32px" in capfd.readouterr().err) == progress
    assert pickle.loads(pickle.dumps(data)).progress is progress  # the setting travels with the data set


def test_make_loaders_pass_progress_to_digitscenes():
    from nni_sparsemask.run.config import DataConfig
    from nni_sparsemask.run.pipeline import make_loaders

    train, val = make_loaders(DataConfig(image_size=32, train_scenes=16, val_scenes=8), progress=False)
    assert train.dataset.progress is False and val.dataset.progress is False
    assert make_loaders(DataConfig(image_size=32, train_scenes=16, val_scenes=8))[1].dataset.progress is True
