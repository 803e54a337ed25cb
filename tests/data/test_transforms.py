"""data/transforms.py: boxes move with the image; sizes follow the DETR recipe."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from ddetr.data.transforms import (
    RandomHorizontalFlip,
    build_transforms,
    crop,
    shortest_side_size,
    to_bounding_boxes,
)
from ddetr.model.boxes import box_cxcywh_to_xyxy

COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
AUG = dict(
    scales=[96, 112, 128],
    train_random_resize=[100, 120],
    train_random_crop_min=60,
    train_random_crop_max=100,
    random_resize_max_size=200,
    horizontal_flip_prob=0.5,
    test_random_resize=128,
    input_mean=[0.0, 0.0, 0.0],
    input_std=[1.0, 1.0, 1.0],
)


def _scene() -> tuple[Image.Image, dict]:
    """Black 160x120 image with three solid boxes, one colour per label."""
    arr = np.zeros((120, 160, 3), np.uint8)
    boxes = [[10, 10, 50, 40], [70, 30, 130, 90], [20, 70, 60, 110]]
    labels = [1, 2, 3]
    for (x1, y1, x2, y2), lab in zip(boxes, labels):
        arr[y1:y2, x1:x2] = COLOURS[lab]
    target = {
        "boxes": to_bounding_boxes(torch.tensor(boxes, dtype=torch.float32), 120, 160),
        "labels": torch.tensor(labels),
        "iscrowd": torch.zeros(3, dtype=torch.long),
        "area": torch.ones(3),
    }
    return Image.fromarray(arr), target


def _check_boxes_on_pixels(img: torch.Tensor, t: dict) -> None:
    h, w = img.shape[-2:]
    assert t["size"].tolist() == [h, w]
    assert len(t["boxes"]) == len(t["labels"]) == len(t["iscrowd"]) == len(t["area"])
    xyxy = box_cxcywh_to_xyxy(t["boxes"]) * torch.tensor([w, h, w, h])
    for (x1, y1, x2, y2), lab in zip(xyxy.tolist(), t["labels"].tolist()):
        assert x2 > x1 and y2 > y1
        ch = list(COLOURS[lab]).index(255)
        # interior (1 px margin for resampling) is the box's colour
        ix1, iy1, ix2, iy2 = int(x1 + 1.5), int(y1 + 1.5), int(x2 - 1.5), int(y2 - 1.5)
        if ix2 > ix1 and iy2 > iy1:
            inside = img[:, iy1:iy2, ix1:ix2]
            assert inside[ch].mean() > 0.9, (lab, (x1, y1, x2, y2))
        # just outside each edge (2 px away) this colour is absent
        for sl in (
            img[ch, iy1:iy2, max(int(x1) - 3, 0) : max(int(x1) - 2, 0)],
            img[ch, iy1:iy2, int(x2) + 2 : int(x2) + 3],
            img[ch, max(int(y1) - 3, 0) : max(int(y1) - 2, 0), ix1:ix2],
            img[ch, int(y2) + 2 : int(y2) + 3, ix1:ix2],
        ):
            if sl.numel():
                assert sl.mean() < 0.1, (lab, (x1, y1, x2, y2))


@pytest.mark.parametrize("seed", range(12))
def test_train_boxes_follow_pixels(seed: int) -> None:
    random.seed(seed)
    tf = build_transforms(True, **AUG)
    img, t = tf(*_scene())
    _check_boxes_on_pixels(img, t)
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1 + 1e-6)).all()


@pytest.mark.parametrize("seed", range(6))
def test_fixed_random_crop_square(seed: int) -> None:
    random.seed(seed)
    tf = build_transforms(True, **AUG, fixed_random_crop=96)
    img, t = tf(*_scene())
    assert img.shape[-2:] == (96, 96)
    _check_boxes_on_pixels(img, t)


def test_val_shortest_side_and_max_size() -> None:
    img, t = build_transforms(False, **AUG)(*_scene())
    assert img.shape == (3, 128, 170)  # 120x160 -> shortest 128
    _check_boxes_on_pixels(img, t)
    capped = dict(AUG, random_resize_max_size=150)
    img, _ = build_transforms(False, **capped)(*_scene())
    assert max(img.shape[-2:]) <= 150 and img.shape[-2:] == (112, 149)


def test_val_fixed_input_size_is_width_height() -> None:
    img, t = build_transforms(False, **AUG, input_size=(100, 60))(*_scene())
    assert img.shape == (3, 60, 100)
    _check_boxes_on_pixels(img, t)


def test_flip_exact() -> None:
    image, target = _scene()
    img, t = RandomHorizontalFlip(1.0)(image, target)
    assert t["boxes"][0].tolist() == [110, 10, 150, 40]
    assert np.asarray(img)[20, 120].tolist() == [255, 0, 0]


def test_crop_removes_emptied_boxes_with_their_labels() -> None:
    image, target = _scene()
    img, t = crop(image, target, top=0, left=60, height=100, width=100)
    # box 1 (x 10..50) and box 3 (x 20..60) fall outside; box 2 is kept, shifted
    assert t["labels"].tolist() == [2] and len(t["iscrowd"]) == 1 and len(t["area"]) == 1
    assert t["boxes"].tolist() == [[10, 30, 70, 90]]
    assert img.size == (100, 100)


def test_crop_clips_partial_boxes() -> None:
    image, target = _scene()
    _, t = crop(image, target, top=20, left=0, height=40, width=60)
    # box 1 (y 10..40) clipped to y 0..20 of the window; box 3 (y 70..110) is outside the window
    assert t["labels"].tolist() == [1]
    assert t["boxes"].tolist() == [[10, 0, 50, 20]]


@pytest.mark.parametrize(
    "h,w,size,max_size,expected",
    [
        (480, 640, 800, 1333, (800, 1066)),
        (480, 640, 800, 1000, (750, 1000)),
        (640, 480, 128, None, (170, 128)),
        (100, 100, 64, 1333, (64, 64)),
    ],
)
def test_shortest_side_size(h: int, w: int, size: int, max_size, expected) -> None:
    assert shortest_side_size(h, w, size, max_size) == expected
