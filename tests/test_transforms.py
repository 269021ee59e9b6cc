import numpy as np
import pytest
import torch
from PIL import Image

from nni_sparsemask.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Compose, Normalize, PadTo, RandomCrop,
                                            RandomHorizontalFlip, RandomScale, Resize, ToTensor, eval_transform,
                                            to_tensor_pair, train_transform)


def _pil_pair(h=10, w=14):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    lab = np.zeros((h, w), np.uint8)
    lab[:, : w // 2] = 1
    lab[0, :] = 255
    mask = Image.frombytes("P", (w, h), lab.tobytes())
    mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6))
    return img, mask


def test_to_tensor_types_and_values():
    img, mask = _pil_pair()
    x, y = ToTensor()(img, mask)
    assert x.dtype == torch.float32 and x.shape == (3, 10, 14)
    assert y.dtype == torch.long and y.shape == (10, 14)
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    assert x[0, 3, 4].item() == pytest.approx(np.asarray(img)[3, 4, 0] / 255.0)
    assert set(y.unique().tolist()) == {0, 1, 255}  # palette indices, not RGB colours
    with pytest.raises(ValueError, match="index image"):
        ToTensor()(img, mask.convert("RGB"))
    with pytest.raises(ValueError, match="differ in size"):
        to_tensor_pair(img, torch.zeros(3, 3, dtype=torch.long))


def test_normalize_values():
    x = torch.full((3, 2, 2), 0.5)
    out, _ = Normalize()(x, torch.zeros(2, 2, dtype=torch.long))
    for c in range(3):
        assert out[c, 0, 0].item() == pytest.approx((0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_train_transform_shapes_and_padding_is_ignore():
    img, mask = _pil_pair(10, 14)
    t = train_transform(crop_size=(40, 48), scale_range=(1.0, 1.0), flip_p=0.0)
    x, y = t(img, mask)
    assert x.shape == (3, 40, 48) and y.shape == (40, 48)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    # scale 1, no flip: the 10x14 image sits somewhere in the crop; everything else is padding
    assert int((y != 255).sum()) == int((np.array(mask) != 255).sum())
    # padded image pixels hold 0 (the mean after normalisation); count them exactly
    zero_cols = (x.abs().sum(0) == 0)
    assert int(zero_cols.sum()) == 40 * 48 - 10 * 14
    assert bool((y[zero_cols] == 255).all())


def test_flip_is_consistent_between_image_and_mask():
    img = torch.arange(2 * 5, dtype=torch.float32).view(1, 2, 5).expand(3, -1, -1) / 10
    mask = torch.arange(2 * 5).view(2, 5)
    x, y = RandomHorizontalFlip(p=1.0)(img, mask)
    assert torch.equal(y, mask.flip(-1))
    assert torch.equal(x, img.flip(-1))
    assert torch.allclose(x[0] * 10, y.float())  # image and mask still agree pixel by pixel
    x0, y0 = RandomHorizontalFlip(p=0.0)(img, mask)
    assert torch.equal(y0, mask)


def test_crop_keeps_image_mask_alignment():
    g = torch.Generator().manual_seed(3)
    img = torch.arange(9 * 11, dtype=torch.float32).view(1, 9, 11).expand(3, -1, -1).clone()
    mask = torch.arange(9 * 11).view(9, 11)
    x, y = RandomCrop((4, 5), generator=g)(img, mask)
    assert x.shape == (3, 4, 5)
    assert torch.equal(x[1].long(), y)


def test_scale_range_and_interpolation_modes():
    img, mask = _pil_pair(20, 30)
    g = torch.Generator().manual_seed(0)
    t = RandomScale((0.5, 2.0), generator=g)
    sizes = []
    for _ in range(20):
        x, y = t(img, mask)
        assert x.shape[-2:] == y.shape
        sizes.append(tuple(y.shape))
        assert set(y.unique().tolist()) <= {0, 1, 255}  # nearest: no new label values
        assert 10 <= y.shape[0] <= 40 and 15 <= y.shape[1] <= 60
    assert len(set(sizes)) > 5  # it does vary
    x, y = RandomScale((2.0, 2.0))(img, mask)
    assert y.shape == (40, 60)
    assert torch.equal(y[::2, ::2], torch.tensor(np.array(mask), dtype=torch.long))


def test_seeded_determinism():
    img, mask = _pil_pair(12, 12)
    outs = []
    for _ in range(2):
        t = train_transform(crop_size=16, generator=torch.Generator().manual_seed(42))
        outs.append([t(img, mask) for _ in range(3)])
    for (xa, ya), (xb, yb) in zip(*outs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    t = train_transform(crop_size=16, generator=torch.Generator().manual_seed(43))
    other = [t(img, mask) for _ in range(3)]
    assert any(not torch.equal(a[1], b[1]) or not torch.equal(a[0], b[0]) for a, b in zip(outs[0], other))


def test_eval_transform_resize_and_pad():
    img, mask = _pil_pair(10, 14)
    x, y = eval_transform()(img, mask)
    assert x.shape == (3, 10, 14) and torch.equal(y, torch.tensor(np.array(mask), dtype=torch.long))
    x, y = eval_transform(resize=(5, 7), pad_to=8)(img, mask)
    assert x.shape == (3, 8, 8) and y.shape == (8, 8)
    assert bool((y[5:, :] == 255).all()) and bool((y[:, 7:] == 255).all())
    assert float(x[:, 5:, :].abs().sum()) == 0.0
    assert isinstance(eval_transform(resize=4), Compose)
    x, y = Resize(4)(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))
    assert x.shape == (3, 4, 4)
    x, y = PadTo(4)(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))
    assert x.shape == (3, 8, 8)  # never crops


def test_bad_values_raise():
    with pytest.raises(ValueError, match="crop size"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="crop size"):
        train_transform(crop_size=(8, 0))
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 0.5))
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((0.0, 1.0))
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="std"):
        Normalize(std=(1.0, 0.0, 1.0))
