"""From a Predictor's raw outputs to per-image detections in original pixels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddetr.model.postprocess import postprocess
from ddetr.runtime.base import Predictor


def detect(
    predictor: Predictor,
    images: Tensor,
    mask: Tensor | None,
    orig_sizes: Tensor,
    *,
    num_select: int,
    conf_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Run the predictor and post-process.

    Args:
        images: (B, 3, H, W) normalised batch.
        mask: (B, H, W) True = padding, or None.
        orig_sizes: (B, 2) original (height, width) in pixels.
        num_select: top-k kept per image (clamped to Q * C).
        conf_threshold: detections with a lower score are dropped.

    Returns:
        Per image: ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,), ``labels`` (K,) category ids.
    """
    logits, boxes = predictor(images, mask)
    k = min(num_select, logits.shape[1] * logits.shape[2])
    results = postprocess(logits, boxes, orig_sizes.to(logits.device), k)
    out = []
    for r in results:
        keep = r["scores"] >= conf_threshold
        out.append({key: value[keep] for key, value in r.items()})
    return out


def drop_unnamed(det: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """Drop detections of category ids that the class names leave unnamed (e.g. COCO's unused id 0).

    With no names at all, nothing is dropped.
    """
    if not any(names):
        return det
    named = torch.tensor([bool(n) for n in names] + [False], dtype=torch.bool)
    labels = det["labels"].clamp(max=len(names))
    keep = named[labels]
    return {key: value[keep] for key, value in det.items()}


def class_name(names: list[str], label: int) -> str:
    """The name of a category id, or its number when unnamed."""
    return names[label] if 0 <= label < len(names) and names[label] else str(label)


def to_coco_results(image_id: int, det: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries (bbox x, y, w, h in pixels)."""
    xyxy = det["boxes"].tolist()
    return [
        {
            "image_id": int(image_id),
            "category_id": int(label),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(score), 5),
        }
        for (x1, y1, x2, y2), score, label in zip(xyxy, det["scores"].tolist(), det["labels"].tolist())
    ]


def inference_sizes(orig_sizes: list[tuple[int, int]]) -> Tensor:
    """(B, 2) long tensor of (height, width)."""
    return torch.tensor(orig_sizes, dtype=torch.long)
