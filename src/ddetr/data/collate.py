"""Batching: pad images to a common size with a padding mask.

The mask follows DETR's convention: True marks padding (pixels that are not part of the image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ddetr.model.preprocess import pad_images


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict]]:
    """DataLoader ``collate_fn`` for :class:`ddetr.data.coco.CocoDetection` samples.

    Returns:
        images Tensor[B, 3, Hmax, Wmax] (zero padded bottom/right), mask BoolTensor[B, Hmax, Wmax]
        (True = padding) and the list of B target dicts unchanged.
    """
    images, mask = pad_images([im for im, _ in batch])
    return images, mask, [t for _, t in batch]


def num_workers(requested: int) -> int:
    """Loader processes: the spec's value capped to this machine's cores (0 means load in the main process)."""
    return max(0, min(int(requested), os.cpu_count() or 1))
