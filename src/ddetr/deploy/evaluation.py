"""mAP of any Predictor on a COCO split, and calibration images, with the preprocessing inference uses."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddetr.errors import DataError
from ddetr.runtime.base import ModelInfo, Predictor

logger = logging.getLogger(__name__)


class ModulePredictor(Predictor):
    """An in-memory PyTorch detector (e.g. a freshly quantized one) behind the Predictor interface."""

    backend = "pytorch"

    def __init__(self, model: nn.Module, info: ModelInfo) -> None:
        self.model = model.eval()
        self.info = info

    @torch.inference_mode()
    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.model(images, mask)
        return out.pred_logits.float().cpu(), out.pred_boxes.float().cpu()


def evaluate_predictor(
    predictor: Predictor,
    pairs: Sequence[tuple[str, str]],
    *,
    num_select: int,
    test_random_resize: int = 800,
    max_size: int = 1333,
    batch_size: int = 1,
) -> dict[str, float]:
    """COCO bbox mAP of ``predictor`` on (image folder, json) pairs, preprocessed as ``evaluate`` does.

    Args:
        pairs: local (image_dir, json_file) pairs.
        num_select: top-k detections per image.
        test_random_resize, max_size: the validation resize when the predictor has no fixed input size.

    Returns:
        ``{"mAP", "mAP50", "images"}``.
    """
    from torch.utils.data import DataLoader

    from ddetr.data.coco import CocoDetection
    from ddetr.data.collate import collate_detection
    from ddetr.data.transforms import build_transforms
    from ddetr.eval.coco import CocoEvaluator
    from ddetr.runtime.detect import detect

    info = predictor.info
    transforms = build_transforms(
        False,
        scales=[test_random_resize],
        train_random_resize=[test_random_resize],
        train_random_crop_min=1,
        train_random_crop_max=2,
        random_resize_max_size=max_size,
        horizontal_flip_prob=0.0,
        test_random_resize=test_random_resize,
        input_mean=list(info.mean),
        input_std=list(info.std),
        input_size=info.input_size,
    )
    dataset = CocoDetection(list(pairs), info.num_classes, transforms, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    evaluator = CocoEvaluator(dataset.coco_gt)
    count = 0
    for images, mask, targets in loader:
        sizes = torch.stack([t["orig_size"] for t in targets])
        for target, det in zip(targets, detect(predictor, images, mask, sizes, num_select=num_select)):
            evaluator.add(int(target["image_id"]), det["boxes"], det["scores"], det["labels"])
            count += 1
    summary = evaluator.summarize()
    return {"mAP": float(summary["mAP"]), "mAP50": float(summary["mAP50"]), "images": count}


def list_calibration_images(image_dir: str, json_file: str = "") -> list[Path]:
    """The calibration images: those the COCO json lists (when given), else every image under the folder.

    Raises:
        DataError: no images found.
    """
    from ddetr.data.annotations import find_images
    from ddetr.data.sources import resolve_file, resolve_image_dir

    folder = resolve_image_dir(image_dir)
    if json_file:
        data = json.loads(Path(resolve_file(json_file)).read_text())
        found = [folder / im["file_name"] for im in data.get("images", [])]
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
    from ddetr.data.collate import preprocess_images

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
