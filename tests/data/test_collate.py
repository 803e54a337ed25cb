"""data/collate.py: padding masks and inference preprocessing identical to validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddetr.data.collate import collate_detection
from ddetr.data.transforms import build_transforms, to_bounding_boxes
from ddetr.errors import DataError
from ddetr.model.preprocess import pad_images, preprocess_images

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_collate_pads_bottom_right_with_mask() -> None:
    a, b = torch.ones(3, 4, 6), torch.full((3, 5, 3), 2.0)
    images, mask, targets = collate_detection([(a, {"i": 0}), (b, {"i": 1})])
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    assert targets == [{"i": 0}, {"i": 1}]
    assert (images[0, :, :4, :6] == 1).all() and (images[0, :, 4:] == 0).all()
    assert (images[1, :, :5, :3] == 2).all() and (images[1, :, :, 3:] == 0).all()
    assert (~mask[0, :4, :6]).all() and mask[0, 4:].all()
    assert (~mask[1, :, :3]).all() and mask[1, :, 3:].all()
    assert mask.sum().item() == (5 * 6 - 4 * 6) + (5 * 6 - 5 * 3)


def test_pad_images_empty_raises() -> None:
    with pytest.raises(ValueError):
        pad_images([])


def _photo(w: int = 90, h: int = 60) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_preprocess_matches_validation_transform(tmp_path: Path) -> None:
    photo = _photo()
    photo.save(tmp_path / "p.png")
    aug = dict(
        scales=[64], train_random_resize=[64], train_random_crop_min=32, train_random_crop_max=48,
        random_resize_max_size=100, horizontal_flip_prob=0.5, test_random_resize=64,
        input_mean=MEAN, input_std=STD,
    )  # fmt: skip
    target = {
        "boxes": to_bounding_boxes(torch.zeros(0, 4), 60, 90),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    val_img, _ = build_transforms(False, **aug)(photo, target)
    arr = np.asarray(photo)
    images, mask, sizes = preprocess_images(
        [photo, arr, tmp_path / "p.png", str(tmp_path / "p.png")], MEAN, STD, shortest_side=64, max_size=100
    )
    assert images.shape == (4, 3, *val_img.shape[-2:]) and not mask.any()
    for i in range(4):
        torch.testing.assert_close(images[i], val_img)
    assert sizes.tolist() == [[60, 90]] * 4


def test_preprocess_fixed_size_mixed_shapes() -> None:
    images, mask, sizes = preprocess_images([_photo(90, 60), _photo(40, 80)], MEAN, STD, input_size=(50, 30))
    assert images.shape == (2, 3, 30, 50) and not mask.any()
    assert sizes.tolist() == [[60, 90], [80, 40]]
    images, mask, _ = preprocess_images([_photo(90, 60), _photo(40, 80)], MEAN, STD, 32, 1000)
    assert images.shape == (2, 3, 64, 48)  # 32x48 and 64x32 padded to 64x48
    assert mask[0, 32:].all() and not mask[0, :32].any() and mask[1, :, 32:].all()


def test_preprocess_grayscale_and_float_arrays() -> None:
    gray = np.full((20, 30), 128, np.uint8)
    flt = np.full((20, 30, 3), 128 / 255, np.float32)
    images, _, _ = preprocess_images([gray, flt], MEAN, STD, 20, 100)
    torch.testing.assert_close(images[0], images[1], atol=1e-5, rtol=0)


def test_preprocess_bad_inputs() -> None:
    with pytest.raises(DataError, match=r"missing\.jpg"):
        preprocess_images(["missing.jpg"], MEAN, STD)
    with pytest.raises(DataError, match="HxW"):
        preprocess_images([np.zeros((4, 4, 7), np.uint8)], MEAN, STD)


def test_preprocess_applies_exif_to_pil_input(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    with Image.open(tmp_path / "r.jpg") as opened:
        opened.load()
        _, _, sizes = preprocess_images([opened, tmp_path / "r.jpg"], MEAN, STD, 20, 100)
    assert sizes.tolist() == [[40, 20], [40, 20]]
