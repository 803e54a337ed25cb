"""Batching: pad images to a common size with a padding mask; inference preprocessing.

The mask follows DETR's convention: True marks padding (pixels that are not part of the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ddetr.data.coco import load_image, to_rgb
from ddetr.data.transforms import resized_size
from ddetr.errors import DataError


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad Tensor[3, H_i, W_i] images bottom/right with zeros.

    Returns:
        images Tensor[B, 3, Hmax, Wmax] and mask BoolTensor[B, Hmax, Wmax] (True = padding).
    """
    if not images:
        raise ValueError("pad_images needs at least one image")
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    first = images[0]
    batch = torch.zeros((len(images), first.shape[0], h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(images), h, w), dtype=torch.bool, device=first.device)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
        mask[i, : im.shape[-2], : im.shape[-1]] = False
    return batch, mask


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict]]:
    """DataLoader ``collate_fn`` for :class:`ddetr.data.coco.CocoDetection` samples.

    Returns:
        images Tensor[B, 3, Hmax, Wmax] (zero padded bottom/right), mask BoolTensor[B, Hmax, Wmax]
        (True = padding) and the list of B target dicts unchanged.
    """
    images, mask = pad_images([im for im, _ in batch])
    return images, mask, [t for _, t in batch]


def _to_pil(item: Image.Image | np.ndarray | str | Path) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))  # a no-op once transposed (the tag is removed)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.stack([item] * 3, axis=-1)
        if item.ndim != 3 or item.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"An image array must be HxW or HxWxC (C = 1, 3 or 4, RGB order); got {item.shape}."
            )
        if item.shape[-1] == 1:
            item = np.repeat(item, 3, axis=-1)
        if item.dtype != np.uint8:
            if np.issubdtype(item.dtype, np.floating) and item.max(initial=0.0) <= 1.0:
                item = item * 255.0
            item = np.clip(np.round(item), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(item[..., :3]))
    path = Path(item)
    if not path.is_file():
        raise DataError(f"Image '{item}' does not exist.")
    try:
        return load_image(path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Image '{item}' cannot be decoded: {exc}") from exc


def preprocess_images(
    images: Sequence[Image.Image | np.ndarray | str | Path],
    mean: Sequence[float],
    std: Sequence[float],
    shortest_side: int = 800,
    max_size: int | None = 1333,
    input_size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Inference input: the same resize and normalisation as validation, then padding.

    Args:
        images: PIL images, HxWxC RGB arrays (uint8, or float in [0, 1]) or file paths.
        mean: per-channel mean of the [0, 1] image.
        std: per-channel std.
        shortest_side: validation shortest side (``test_random_resize``).
        max_size: cap on the longer side (``random_resize_max_size``).
        input_size: (width, height); when set, resize to exactly this size instead.

    Returns:
        images Tensor[B, 3, Hmax, Wmax] float, mask BoolTensor[B, Hmax, Wmax] (True = padding) and
        orig_sizes long[B, 2] (h, w) of the inputs, for mapping boxes back to input pixels.
    """
    tensors, sizes = [], []
    for item in images:
        pil = _to_pil(item)
        sizes.append((pil.height, pil.width))
        oh, ow = resized_size(pil.height, pil.width, shortest_side, max_size, input_size)
        img = F.to_dtype(F.to_image(F.resize(pil, [oh, ow])), torch.float32, scale=True)
        tensors.append(F.normalize(img, list(mean), list(std)).as_subclass(Tensor))
    batch, mask = pad_images(tensors)
    return batch, mask, torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
