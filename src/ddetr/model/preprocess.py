"""Inference preprocessing: any image input -> the normalised, padded batch the detector takes.

The detector's own input convention, shared by training data (:mod:`ddetr.data`), Python ``predict`` and the
``evaluate``/``inference`` actions: RGB in [0, 1], resized so the shorter side is ``shortest_side`` (the longer
capped at ``max_size``) or to a fixed (width, height), normalised per channel, padded bottom/right with a mask
that is True at padding pixels (DETR's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ddetr.errors import DataError

ImageInput = str | Path | Image.Image | np.ndarray


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB with its EXIF orientation applied.

    L, LA, RGBA, P, CMYK, I;16 and I (16-bit range) images become 8-bit RGB; alpha is dropped.

    Raises:
        OSError, SyntaxError, ValueError: the file is corrupt, truncated or not an image.
        DataError (a ValueError): the image declares more pixels than PIL's limit (``Image.MAX_IMAGE_PIXELS``,
            twice that is refused before decoding: a "decompression bomb"), so callers that skip unreadable
            images skip it too.
    """
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16/32-bit integer and float images are rescaled to 0..255)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        else:
            top = 65535.0 if arr.max(initial=0.0) > 255 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def shortest_side_size(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """Output (height, width) when the shorter side becomes ``size`` and the longer stays <= ``max_size``.

    Aspect ratio is kept; the shorter side is reduced when the longer would pass ``max_size``.
    """
    if max_size is not None:
        short, long = min(h, w), max(h, w)
        if long / short * size > max_size:
            size = round(max_size * short / long)
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resized_size(
    h: int, w: int, shortest_side: int, max_size: int | None, input_size: tuple[int, int] | None
) -> tuple[int, int]:
    """(height, width) the validation resize gives an (h, w) image; ``input_size`` is (width, height)."""
    if input_size is not None:
        return int(input_size[1]), int(input_size[0])
    return shortest_side_size(h, w, shortest_side, max_size)


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


def to_pil(item: ImageInput) -> Image.Image:
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
    images: Sequence[ImageInput],
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
        pil = to_pil(item)
        sizes.append((pil.height, pil.width))
        oh, ow = resized_size(pil.height, pil.width, shortest_side, max_size, input_size)
        img = F.to_dtype(F.to_image(F.resize(pil, [oh, ow])), torch.float32, scale=True)
        tensors.append(F.normalize(img, list(mean), list(std)).as_subclass(Tensor))
    batch, mask = pad_images(tensors)
    return batch, mask, torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
