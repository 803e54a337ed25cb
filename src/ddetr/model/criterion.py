"""The Deformable DETR training loss: sigmoid focal classification, L1 and GIoU box losses on matched pairs.

Every decoder layer (the last one and, with ``aux_loss``, each earlier one) is matched to the targets on its own
and gets its own three losses; in the two-stage variant, the encoder proposals get a class-agnostic set too.
Each component is normalised by the number of target boxes in the global batch (all processes), as in the
original implementation, so that the weighted sum does not depend on how the batch is split over devices.

Symbols: B batch, Q queries (or S encoder proposals), C classes, N_i target boxes of image i, M matched pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ddetr.errors import DataError
from ddetr.model.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from ddetr.model.matcher import HungarianMatcher, Indices
from ddetr.model.outputs import DetectionOutput, LayerPrediction
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

Target = dict[str, Tensor]

#: Loss components of one prediction layer; suffixed ``_<i>`` for decoder layer i < L-1 and ``_enc`` for the
#: two-stage encoder proposals.
LOSS_NAMES: tuple[str, ...] = ("loss_ce", "loss_bbox", "loss_giou")
ENC_SUFFIX = "_enc"


def drop_crowd(targets: list[Target]) -> list[Target]:
    """Targets without their crowd boxes (``"iscrowd"`` != 0); targets without ``"iscrowd"`` are kept whole.

    Args:
        targets: B dicts with ``"labels"`` LongTensor[N_i], ``"boxes"`` Tensor[N_i, 4] and optionally
            ``"iscrowd"`` LongTensor[N_i].

    Returns:
        B dicts with ``"labels"`` and ``"boxes"`` of the non-crowd boxes only.
    """
    kept = []
    for target in targets:
        labels, boxes = target["labels"], target["boxes"]
        iscrowd = target.get("iscrowd")
        if iscrowd is not None:
            keep = iscrowd == 0  # (N_i,)
            labels, boxes = labels[keep], boxes[keep]
        kept.append({"labels": labels, "boxes": boxes})
    return kept


def global_num_boxes(targets: list[Target], device: torch.device) -> float:
    """Mean number of target boxes per process over all processes, at least 1 (the loss normaliser).

    Args:
        targets: this process's B targets.
        device: device of the all-reduce (the model's, as NCCL needs CUDA tensors).

    Returns:
        sum of N_i over every process / world size, clamped to >= 1.
    """
    num_boxes = torch.tensor([sum(len(t["labels"]) for t in targets)], dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_boxes)
        num_boxes = num_boxes / dist.get_world_size()
    return max(num_boxes.item(), 1.0)


def _matched_query_index(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
    # (image index, query index) of each matched pair, in image order: two LongTensor[M]
    image_idx = torch.cat([torch.full_like(query, i) for i, (query, _) in enumerate(indices)])
    query_idx = torch.cat([query for query, _ in indices])
    return image_idx.to(device), query_idx.to(device)


class SetCriterion(nn.Module):
    """Matches predictions to targets and computes the unweighted loss components.

    Args:
        num_classes: C, the width of the class logits (``dataset.num_classes``; label = logit column).
        matcher: the assignment of queries to targets, run on each prediction layer separately.
        weight_dict: weight of each loss component (``loss_ce``, ``loss_bbox_0``, ``loss_giou_enc``, ...),
            used by :meth:`weighted_total`.
        focal_alpha: focal loss weight of the positive class.
        focal_gamma: focal loss focusing exponent.

    Example:
        >>> criterion = build_criterion(ModelSection(aux_loss=False), num_classes=3)
        >>> out = DetectionOutput(torch.zeros(1, 5, 3), torch.full((1, 5, 4), 0.5))
        >>> losses = criterion(out, [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}])
        >>> sorted(losses), round(losses["loss_bbox"].item(), 6)
        (['class_error', 'loss_bbox', 'loss_ce', 'loss_giou'], 0.0)
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def loss_labels(
        self, pred_logits: Tensor, targets: list[Target], indices: Indices, num_boxes: float
    ) -> Tensor:
        """Sigmoid focal loss over every query and class; matched queries are positive for their target class.

        Args:
            pred_logits: Tensor[B, Q, C] raw logits.
            targets: B targets with ``"labels"`` LongTensor[N_i].
            indices: the matching, B pairs (query_idx, target_idx).
            num_boxes: the normaliser from :func:`global_num_boxes`.

        Returns:
            scalar: summed focal loss / num_boxes (written as ``mean over Q, sum, * Q`` like the original).
        """
        logits = pred_logits.float()
        image_idx, query_idx = _matched_query_index(indices, logits.device)
        matched_labels = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]
        )
        onehot = torch.zeros_like(logits)  # (B, Q, C)
        onehot[image_idx, query_idx, matched_labels.to(logits.device)] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma)  # (B, Q, C)
        return loss.mean(1).sum() / num_boxes * logits.shape[1]

    def loss_boxes(
        self, pred_boxes: Tensor, targets: list[Target], indices: Indices, num_boxes: float
    ) -> tuple[Tensor, Tensor]:
        """L1 and GIoU losses of the matched pairs.

        Args:
            pred_boxes: Tensor[B, Q, 4] normalised (cx, cy, w, h).
            targets: B targets with ``"boxes"`` Tensor[N_i, 4] normalised (cx, cy, w, h).
            indices: the matching, B pairs (query_idx, target_idx).
            num_boxes: the normaliser from :func:`global_num_boxes`.

        Returns:
            (loss_bbox, loss_giou) scalars: summed L1 over the 4 coordinates / num_boxes and
            summed (1 - GIoU) / num_boxes; 0 (still attached to the graph) without matches.
        """
        boxes = pred_boxes.float()
        image_idx, query_idx = _matched_query_index(indices, boxes.device)
        matched = boxes[image_idx, query_idx]  # (M, 4)
        target = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)])
        target = target.to(device=boxes.device, dtype=boxes.dtype)  # (M, 4)
        loss_bbox = (matched - target).abs().sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(target))
        )  # (M,)
        loss_giou = (1 - giou).sum() / num_boxes
        return loss_bbox, loss_giou

    @torch.no_grad()
    def class_error(self, pred_logits: Tensor, targets: list[Target], indices: Indices) -> Tensor:
        """Percentage of matched queries whose top class is not their target's (a metric, no gradient)."""
        image_idx, query_idx = _matched_query_index(indices, pred_logits.device)
        if query_idx.numel() == 0:
            return pred_logits.new_zeros((), dtype=torch.float32)
        labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        predicted = pred_logits[image_idx, query_idx].argmax(-1)  # (M,)
        return 100.0 * (predicted != labels.to(predicted.device)).float().mean()

    def layer_losses(
        self,
        prediction: LayerPrediction | DetectionOutput,
        targets: list[Target],
        num_boxes: float,
        suffix: str,
    ) -> dict[str, Tensor]:
        """Match one prediction layer and compute its three components, keys suffixed with ``suffix``."""
        indices = self.matcher(prediction.pred_logits, prediction.pred_boxes, targets)
        loss_bbox, loss_giou = self.loss_boxes(prediction.pred_boxes, targets, indices, num_boxes)
        return {
            f"loss_ce{suffix}": self.loss_labels(prediction.pred_logits, targets, indices, num_boxes),
            f"loss_bbox{suffix}": loss_bbox,
            f"loss_giou{suffix}": loss_giou,
        }

    def _check_labels(self, targets: list[Target]) -> None:
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)].unique().tolist()
            raise DataError(
                f"target labels {bad} are outside 0..{self.num_classes - 1}; dataset.num_classes must be the "
                f"largest category id + 1 (got {self.num_classes})"
            )

    def forward(self, outputs: DetectionOutput, targets: list[Target]) -> dict[str, Tensor]:
        """Unweighted loss components of every prediction layer.

        Args:
            outputs: the model's predictions (B images).
            targets: B dicts with ``"labels"`` LongTensor[N_i] (logit columns), ``"boxes"`` Tensor[N_i, 4]
                normalised (cx, cy, w, h) and optionally ``"iscrowd"`` LongTensor[N_i] (crowd boxes are ignored).

        Returns:
            scalars ``loss_ce``, ``loss_bbox``, ``loss_giou`` (last decoder layer), the same suffixed ``_<i>`` for
            each ``outputs.aux_outputs[i]`` and ``_enc`` for ``outputs.enc_outputs``, plus the metric
            ``class_error`` (percent, detached; not part of :meth:`weighted_total`).

        Raises:
            DataError: if a target label is outside 0..num_classes-1.
            ValueError: if the number of targets is not the batch size.
        """
        if len(targets) != outputs.pred_logits.shape[0]:
            raise ValueError(
                f"SetCriterion: got {len(targets)} targets for a batch of {outputs.pred_logits.shape[0]}"
            )
        targets = drop_crowd(targets)
        self._check_labels(targets)
        num_boxes = global_num_boxes(targets, outputs.pred_logits.device)

        indices = self.matcher(outputs.pred_logits, outputs.pred_boxes, targets)
        loss_bbox, loss_giou = self.loss_boxes(outputs.pred_boxes, targets, indices, num_boxes)
        losses = {
            "loss_ce": self.loss_labels(outputs.pred_logits, targets, indices, num_boxes),
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
            "class_error": self.class_error(outputs.pred_logits, targets, indices),
        }
        for i, aux in enumerate(outputs.aux_outputs):
            losses.update(self.layer_losses(aux, targets, num_boxes, suffix=f"_{i}"))
        if outputs.enc_outputs is not None:
            # proposals only say "object or not": every target is class 0 and matched on its own
            agnostic = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            losses.update(self.layer_losses(outputs.enc_outputs, agnostic, num_boxes, suffix=ENC_SUFFIX))
        return losses

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Sum of every ``loss_*`` component times its weight in ``weight_dict``; metrics are left out.

        Raises:
            KeyError: if a ``loss_*`` component has no weight (e.g. more decoder layers than the weights cover).
        """
        missing = [k for k in losses if k.startswith("loss_") and k not in self.weight_dict]
        if missing:
            raise KeyError(f"SetCriterion.weight_dict has no weight for loss components {missing}")
        terms = [value * self.weight_dict[k] for k, value in losses.items() if k.startswith("loss_")]
        if not terms:
            raise KeyError(f"no loss_* components in {sorted(losses)}")
        return torch.stack(terms).sum()


def build_weight_dict(model: ModelSection) -> dict[str, float]:
    """Weights of every loss component the model section produces (the spec's ``*_loss_coef``)."""
    base = {
        "loss_ce": model.cls_loss_coef,
        "loss_bbox": model.bbox_loss_coef,
        "loss_giou": model.giou_loss_coef,
    }
    suffixes = [""]
    if model.aux_loss:
        suffixes += [f"_{i}" for i in range(model.dec_layers - 1)]
    if model.two_stage:
        suffixes.append(ENC_SUFFIX)
    return {f"{name}{suffix}": weight for suffix in suffixes for name, weight in base.items()}


def build_criterion(model: ModelSection, num_classes: int) -> SetCriterion:
    """The criterion for a ``model`` spec section; the loss coefficients double as the matching costs.

    Args:
        model: the spec's model section (cls/bbox/giou_loss_coef, focal_alpha, aux_loss, dec_layers, two_stage).
        num_classes: ``dataset.num_classes`` (largest category id + 1).

    Returns:
        a :class:`SetCriterion` whose ``weight_dict`` covers every component the model produces.
    """
    matcher = HungarianMatcher(
        cost_class=model.cls_loss_coef,
        cost_bbox=model.bbox_loss_coef,
        cost_giou=model.giou_loss_coef,
        focal_alpha=model.focal_alpha,
    )
    return SetCriterion(num_classes, matcher, build_weight_dict(model), focal_alpha=model.focal_alpha)
