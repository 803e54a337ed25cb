"""Post-processing: the top ``num_select`` (query, class) pairs per image as pixel boxes."""

from __future__ import annotations

import torch
from torch import Tensor

from ddetr.model.boxes import box_cxcywh_to_xyxy


def postprocess(
    pred_logits: Tensor, pred_boxes: Tensor, target_sizes: Tensor, num_select: int
) -> list[dict[str, Tensor]]:
    """Keep the ``num_select`` highest sigmoid scores over all queries and classes of each image.

    Args:
        pred_logits: (B, Q, C) raw logits.
        pred_boxes: (B, Q, 4) normalised (cx, cy, w, h), relative to the unpadded image.
        target_sizes: (B, 2) (height, width) of each original image in pixels.
        num_select: K, detections kept per image (at most Q * C).

    Returns:
        One dict per image: ``scores`` (K,) in [0, 1], ``labels`` (K,) long class index, ``boxes`` (K, 4)
        (x1, y1, x2, y2) pixels; sorted by decreasing score.
    """
    batch, num_queries, num_classes = pred_logits.shape
    k = min(num_select, num_queries * num_classes)
    prob = pred_logits.sigmoid().view(batch, -1)  # (B, Q*C)
    scores, index = torch.topk(prob, k, dim=1)  # (B, K)
    query = torch.div(index, num_classes, rounding_mode="floor")
    labels = index % num_classes
    boxes = box_cxcywh_to_xyxy(pred_boxes)
    boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
    height, width = target_sizes.unbind(1)
    scale = torch.stack([width, height, width, height], 1).to(boxes.dtype)  # (B, 4)
    boxes = boxes * scale[:, None, :]
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]
