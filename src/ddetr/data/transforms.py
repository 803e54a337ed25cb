"""Train/val augmentations applied to an image and its boxes together.

Every transform is a callable ``(image, target) -> (image, target)``. Before :class:`ToModelInput`, the image
is a PIL image or a ``tv_tensors.Image`` and ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` in XYXY
pixels of the current image, with ``labels``, ``iscrowd`` and ``area`` aligned with it; torchvision's v2
functional ops move the boxes with the image. :class:`ToModelInput` ends every pipeline: float image
normalised with ``input_mean``/``input_std``, boxes as normalised (cx, cy, w, h), ``size`` = (h, w).

The train recipe is the one of DETR / Deformable DETR: horizontal flip, then with probability 0.5 either a
random shortest-side resize to one of ``scales`` (longer side capped at ``random_resize_max_size``) or
resize -> random crop -> resize. Validation resizes the shortest side to ``test_random_resize`` (same cap),
or to a fixed (width, height).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ddetr.model.boxes import box_xyxy_to_cxcywh
from ddetr.model.preprocess import resized_size, shortest_side_size

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]

_ALIGNED = ("labels", "iscrowd", "area")


def image_hw(image: Any) -> tuple[int, int]:
    """(height, width) of a PIL image or a [..., H, W] tensor."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def _set_boxes(target: Target, boxes: Tensor) -> Target:
    out = dict(target)
    out["boxes"] = boxes
    return out


def _keep(target: Target, keep: Tensor) -> Target:
    out = dict(target)
    out["boxes"] = tv_tensors.wrap(target["boxes"][keep], like=target["boxes"])
    for k in _ALIGNED:
        if k in out:
            out[k] = out[k][keep]
    return out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """Mirror the image and its boxes with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        if random.random() < self.p:
            return F.horizontal_flip(image), _set_boxes(target, F.horizontal_flip(target["boxes"]))
        return image, target


class Resize:
    """Resize to an exact (height, width); boxes scale with it."""

    def __init__(self, height: int, width: int) -> None:
        self.size = [height, width]

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        return F.resize(image, self.size), _set_boxes(target, F.resize(target["boxes"], self.size))


class RandomShortestSize:
    """Resize the shorter side to a random choice of ``sizes``, longer side capped at ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        h, w = image_hw(image)
        oh, ow = shortest_side_size(h, w, random.choice(self.sizes), self.max_size)
        return Resize(oh, ow)(image, target)


class RandomSizeCrop:
    """Crop a random region with sides in [min_size, max_size] (capped by the image); drop emptied boxes."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        h, w = image_hw(image)
        ch = random.randint(min(self.min_size, h), min(h, self.max_size))
        cw = random.randint(min(self.min_size, w), min(w, self.max_size))
        return crop(image, target, random.randint(0, h - ch), random.randint(0, w - cw), ch, cw)


class FixedRandomCrop:
    """Square large-scale jitter: scale the longer side to ``size * U(min_scale, max_scale)``, then
    crop a random ``size`` x ``size`` window (pad bottom/right with zeros if the image is smaller)."""

    def __init__(self, size: int, min_scale: float = 0.1, max_scale: float = 2.0) -> None:
        self.size, self.min_scale, self.max_scale = size, min_scale, max_scale

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        h, w = image_hw(image)
        scale = self.size * random.uniform(self.min_scale, self.max_scale) / max(h, w)
        image, target = Resize(max(1, round(h * scale)), max(1, round(w * scale)))(image, target)
        h, w = image_hw(image)
        ch, cw = min(h, self.size), min(w, self.size)
        image, target = crop(image, target, random.randint(0, h - ch), random.randint(0, w - cw), ch, cw)
        pad = [0, 0, self.size - cw, self.size - ch]  # left, top, right, bottom
        return F.pad(image, pad), _set_boxes(target, F.pad(target["boxes"], pad))


def crop(image: Any, target: Target, top: int, left: int, height: int, width: int) -> tuple[Any, Target]:
    """Crop image and boxes; boxes are clipped to the window and those left with no area are removed
    together with their labels, iscrowd and area."""
    image = F.crop(image, top, left, height, width)
    boxes = F.clamp_bounding_boxes(F.crop(target["boxes"], top, left, height, width))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return image, _keep(_set_boxes(target, boxes), keep)


class ToModelInput:
    """Float tensor normalised by mean/std; boxes -> normalised cxcywh; ``size`` and ``area`` updated.

    Output: image Tensor[3, H, W] float32; target ``boxes`` Tensor[N, 4] in [0, 1] (cx, cy, w, h),
    ``area`` Tensor[N] in pixels of the transformed image, ``size`` long[2] (h, w).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Any, target: Target) -> tuple[Tensor, Target]:
        img = F.to_dtype(F.to_image(image), torch.float32, scale=True)
        img = F.normalize(img, self.mean, self.std).as_subclass(Tensor)
        h, w = image_hw(img)
        boxes = target["boxes"].as_subclass(Tensor).float().reshape(-1, 4)
        out = dict(target)
        out["area"] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        out["boxes"] = box_xyxy_to_cxcywh(boxes) / scale
        out["size"] = torch.tensor([h, w], dtype=torch.long)
        return img, out


def to_bounding_boxes(boxes_xyxy: Tensor, height: int, width: int) -> tv_tensors.BoundingBoxes:
    """Wrap Tensor[N, 4] XYXY pixels as torchvision BoundingBoxes on a (height, width) canvas."""
    return tv_tensors.BoundingBoxes(
        boxes_xyxy.reshape(-1, 4).float(),
        format=tv_tensors.BoundingBoxFormat.XYXY,
        canvas_size=(height, width),
    )


def build_transforms(
    train: bool,
    *,
    scales: Sequence[int],
    train_random_resize: Sequence[int],
    train_random_crop_min: int,
    train_random_crop_max: int,
    random_resize_max_size: int,
    horizontal_flip_prob: float,
    test_random_resize: int,
    input_mean: Sequence[float],
    input_std: Sequence[float],
    fixed_random_crop: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> Compose:
    """The train or validation pipeline from the ``dataset.augmentation`` fields (docs/SPEC.md).

    Args:
        train: the training recipe (random) or the deterministic validation resize.
        scales: shortest-side choices of the random resize (pixels).
        train_random_resize: shortest-side choices before the random crop.
        train_random_crop_min: smallest crop side (pixels).
        train_random_crop_max: largest crop side (pixels).
        random_resize_max_size: cap on the longer side after any shortest-side resize.
        horizontal_flip_prob: probability of a horizontal flip (train).
        test_random_resize: validation shortest side.
        input_mean: per-channel mean of the [0, 1] image.
        input_std: per-channel std.
        fixed_random_crop: when set (train), square large-scale-jitter crop of this side replaces the
            resize/crop branches.
        input_size: (width, height); when set (validation), resize to exactly this size.

    Returns:
        A callable ``(PIL image, target) -> (Tensor[3, H, W], target)``; see :class:`ToModelInput`.
    """
    steps: list[Transform] = []
    if train:
        steps.append(RandomHorizontalFlip(horizontal_flip_prob))
        if fixed_random_crop:
            steps.append(FixedRandomCrop(int(fixed_random_crop)))
        else:
            steps.append(
                RandomChoice(
                    RandomShortestSize(scales, random_resize_max_size),
                    Compose(
                        [
                            RandomShortestSize(train_random_resize),
                            RandomSizeCrop(train_random_crop_min, train_random_crop_max),
                            RandomShortestSize(scales, random_resize_max_size),
                        ]
                    ),
                )
            )
    else:
        return eval_transforms(input_mean, input_std, test_random_resize, random_resize_max_size, input_size)
    steps.append(ToModelInput(input_mean, input_std))
    return Compose(steps)


def eval_transforms(
    mean: Sequence[float],
    std: Sequence[float],
    shortest_side: int,
    max_size: int | None,
    input_size: tuple[int, int] | None = None,
) -> Compose:
    """The deterministic validation pipeline: the resize and normalisation a model card names.

    Args:
        mean, std: per-channel normalisation of the [0, 1] image.
        shortest_side: the shorter side after resizing (pixels); ``max_size`` caps the longer one.
        input_size: (width, height); when set, resize to exactly this size instead.

    Returns:
        A callable ``(PIL image, target) -> (Tensor[3, H, W], target)`` as :func:`build_transforms` returns.
    """
    if input_size is not None:
        resize: Transform = Resize(int(input_size[1]), int(input_size[0]))
    else:
        resize = RandomShortestSize([shortest_side], max_size)
    return Compose([resize, ToModelInput(mean, std)])


class RandomChoice:
    """Apply ``first`` with probability ``p``, else ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        return (self.first if random.random() < self.p else self.second)(image, target)


__all__ = [
    "Compose",
    "FixedRandomCrop",
    "RandomChoice",
    "RandomHorizontalFlip",
    "RandomShortestSize",
    "RandomSizeCrop",
    "Resize",
    "ToModelInput",
    "build_transforms",
    "crop",
    "eval_transforms",
    "image_hw",
    "resized_size",
    "shortest_side_size",
    "to_bounding_boxes",
]
