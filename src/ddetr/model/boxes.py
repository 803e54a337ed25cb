"""Box formats and overlaps as pure tensor functions.

Formats (see :class:`BoxFormat`): ``XYXY`` is (x1, y1, x2, y2) with x1 <= x2, y1 <= y2; ``CXCYWH`` is
(centre x, centre y, width, height); ``XYWH`` is COCO's (x1, y1, width, height). Units are whatever the
caller uses (normalised [0, 1] or pixels); the functions never mix them.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor


class BoxFormat(str, Enum):
    """Coordinate conventions of a box tensor's last dimension (size 4)."""

    XYXY = "xyxy"  #: corners (x1, y1, x2, y2)
    CXCYWH = "cxcywh"  #: centre and size (cx, cy, w, h); the model's output, normalised to [0, 1]
    XYWH = "xywh"  #: COCO json (x1, y1, w, h), pixels


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]) (cx, cy, w, h) -> (Tensor[..., 4]) (x1, y1, x2, y2), same units.

    Example:
        >>> box_cxcywh_to_xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0]])).tolist()
        [[8.0, 17.0, 12.0, 23.0]]
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]) (x1, y1, x2, y2) -> (Tensor[..., 4]) (cx, cy, w, h), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]) COCO (x, y, w, h) -> (Tensor[..., 4]) (x1, y1, x2, y2), same units."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]) (x1, y1, x2, y2) -> (Tensor[..., 4]) COCO (x, y, w, h), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def _upcast(t: Tensor) -> Tensor:
    # fp16 products of box sides overflow; integer boxes need a float area
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t.float()


def box_area(boxes: Tensor) -> Tensor:
    """boxes (Tensor[N, 4]) xyxy -> areas (Tensor[N])."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N,M,2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N,M,2]
    wh = _upcast(rb - lt).clamp(min=0)  # [N,M,2]
    inter = wh[..., 0] * wh[..., 1]  # [N,M]
    union = area1[:, None] + area2[None, :] - inter  # [N,M]
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU. boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]) xyxy -> (Tensor[N, M]); 0 where disjoint."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019), in [-1, 1].

    Args:
        boxes1: Tensor[N, 4] xyxy with x1 <= x2 and y1 <= y2.
        boxes2: Tensor[M, 4] xyxy, same units.

    Returns:
        Tensor[N, M].
    """
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # [N,M,2]
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N,M,2]
    wh = _upcast(rb - lt).clamp(min=0)  # [N,M,2]
    enclosing = wh[..., 0] * wh[..., 1]  # [N,M]
    return iou - (enclosing - union) / enclosing
