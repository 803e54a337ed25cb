"""Calibration images for quantization and INT8 engines, preprocessed exactly as inference does."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddetr.errors import DataError


def list_calibration_images(image_dir: str, json_file: str = "", limits: Any = None) -> list[Path]:
    """The calibration images: those the COCO json lists (when given), else every image under the folder.

    ``limits`` is ``dataset.archive_limits`` (None: the defaults).

    Raises:
        DataError: no images found.
    """
    from ddetr.data.annotations import check_file_name, find_images
    from ddetr.data.sources import resolve_file, resolve_image_dir

    folder = resolve_image_dir(image_dir, limits=limits)
    if json_file:
        data = json.loads(Path(resolve_file(json_file)).read_text())
        images = data.get("images", []) if isinstance(data, dict) else []
        found = [
            folder / check_file_name(json_file, i, im)
            for i, im in enumerate(images)
            if isinstance(im, dict) and "file_name" in im
        ]
        found = [p for p in found if p.is_file()]
    else:
        found = find_images(folder)
    if not found:
        raise DataError(
            f"calibration data: no images found in {image_dir} (json_file {json_file or 'not given'})."
        )
    return found


def calibration_batches(
    paths: Sequence[Path],
    *,
    batch_size: int,
    num_batches: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int] | None,
    shortest_side: int = 800,
    max_size: int | None = 1333,
) -> Iterator[np.ndarray]:
    """Yield ``num_batches`` float32 arrays (batch_size, 3, H, W), preprocessed exactly as inference does.

    Args:
        input_size: (width, height) every image is resized to (an exported model's fixed size); None: the
            validation resize (``shortest_side``, capped at ``max_size``), images of a batch zero-padded to
            the largest.

    Raises:
        DataError: fewer than ``batch_size * num_batches`` images.
    """
    from ddetr.model.preprocess import preprocess_images

    needed = batch_size * num_batches
    if len(paths) < needed:
        raise DataError(
            f"calibration needs {batch_size} x {num_batches} = {needed} images, found {len(paths)}; add images "
            "or lower the batch size / number of batches."
        )
    for index in range(num_batches):
        chunk = paths[index * batch_size : (index + 1) * batch_size]
        images, _, _ = preprocess_images(
            chunk, mean=mean, std=std, shortest_side=shortest_side, max_size=max_size, input_size=input_size
        )
        yield np.ascontiguousarray(images.numpy(), dtype=np.float32)
