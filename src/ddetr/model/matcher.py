"""Hungarian matching of predicted queries to target boxes (one-to-one, per image).

The cost of assigning query q to target t is, as in the original Deformable DETR,

``cost_class * focal(q, label_t) + cost_bbox * |box_q - box_t|_1 + cost_giou * -GIoU(box_q, box_t)``

where ``focal`` is the sigmoid focal loss of predicting ``label_t`` minus that of not predicting it, the L1 term
is taken on normalised (cx, cy, w, h) and the GIoU on the corresponding corners. The assignment minimising the
summed cost is solved exactly by :func:`scipy.optimize.linear_sum_assignment`.

Symbols: B batch, Q queries (or encoder proposals), C classes, N_i target boxes of image i.
"""

from __future__ import annotations

import logging

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ddetr.model.boxes import box_cxcywh_to_xyxy, generalized_box_iou

logger = logging.getLogger(__name__)

# Stand-in for non-finite costs, so that a diverging prediction is matched only when nothing else is left
# instead of crashing linear_sum_assignment mid-training.
_NON_FINITE_COST = 1e8
# Keeps log() finite where a sigmoid saturates to exactly 0 or 1 (the original implementation's value).
_LOG_EPS = 1e-8

Indices = list[tuple[Tensor, Tensor]]


def focal_class_cost(prob: Tensor, alpha: float, gamma: float) -> Tensor:
    """Matching cost of labelling each prediction with the class whose probability is given.

    Args:
        prob: Tensor[...] sigmoid probabilities of the target classes.
        alpha: focal loss weight of the positive class.
        gamma: focal loss focusing exponent.

    Returns:
        Tensor[...] focal loss of the positive label minus that of the negative label (lower is better).
    """
    positive = alpha * (1 - prob).pow(gamma) * -torch.log(prob + _LOG_EPS)
    negative = (1 - alpha) * prob.pow(gamma) * -torch.log(1 - prob + _LOG_EPS)
    return positive - negative


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes minimising focal + L1 + GIoU cost.

    Args:
        cost_class: weight of the focal class cost (the spec's ``model.cls_loss_coef``).
        cost_bbox: weight of the L1 cost on normalised (cx, cy, w, h) (``model.bbox_loss_coef``).
        cost_giou: weight of the -GIoU cost (``model.giou_loss_coef``).
        focal_alpha: focal weight of the positive class.
        focal_gamma: focal focusing exponent.

    Raises:
        ValueError: if every cost weight is 0 (the assignment would be arbitrary) or one is negative.

    Example:
        >>> matcher = HungarianMatcher()
        >>> logits, boxes = torch.zeros(1, 3, 2), torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2],
        ...                                                     [0.8, 0.8, 0.1, 0.1]]])
        >>> target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
        >>> [(q.tolist(), t.tolist()) for q, t in matcher(logits, boxes, [target])]
        [([1], [0])]
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        negative = {k: v for k, v in costs.items() if v < 0}
        if negative:
            raise ValueError(f"HungarianMatcher: cost weights must be >= 0, got {negative}")
        if not any(costs.values()):
            raise ValueError(f"HungarianMatcher: at least one cost weight must be > 0, got {costs}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Cost of every (query, target) pair of one image.

        Args:
            logits: Tensor[Q, C] raw class logits.
            boxes: Tensor[Q, 4] predicted normalised (cx, cy, w, h).
            labels: LongTensor[N] target class indices (logit columns).
            target_boxes: Tensor[N, 4] target normalised (cx, cy, w, h).

        Returns:
            Tensor[Q, N] float32 costs (lower is a better match).
        """
        logits, boxes, target_boxes = logits.float(), boxes.float(), target_boxes.float()
        prob = logits.sigmoid()[:, labels]  # (Q, N)
        cost = self.cost_class * focal_class_cost(prob, self.focal_alpha, self.focal_gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]) -> Indices:
        """Match each image's queries to its targets.

        Args:
            pred_logits: Tensor[B, Q, C] raw class logits.
            pred_boxes: Tensor[B, Q, 4] normalised (cx, cy, w, h).
            targets: B dicts with ``"labels"`` LongTensor[N_i] and ``"boxes"`` Tensor[N_i, 4] normalised
                (cx, cy, w, h).

        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length min(Q, N_i): query
            ``query_idx[k]`` is assigned target ``target_idx[k]``; sorted by query index; empty when N_i = 0.
        """
        indices: Indices = []
        for logits, boxes, target in zip(pred_logits, pred_boxes, targets):
            labels, target_boxes = target["labels"], target["boxes"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits, boxes, labels, target_boxes)
            if not torch.isfinite(cost).all():
                logger.warning(
                    "matching cost has non-finite values (diverging predictions or degenerate boxes)"
                )
                cost = torch.nan_to_num(
                    cost, nan=_NON_FINITE_COST, posinf=_NON_FINITE_COST, neginf=-_NON_FINITE_COST
                )
            query_idx, target_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (
                    torch.as_tensor(query_idx, dtype=torch.int64),
                    torch.as_tensor(target_idx, dtype=torch.int64),
                )
            )
        return indices
