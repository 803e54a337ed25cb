"""Typed model outputs.

Symbols: B batch, Q object queries, C classes (``dataset.num_classes``: logit index = COCO category id),
S encoder tokens (sum of H_l * W_l over feature levels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class LayerPrediction:
    """Predictions of one decoder layer (or of the two-stage encoder proposals).

    Attributes:
        pred_logits: (B, N, C) raw class logits (sigmoid gives per-class scores; no "no-object" column).
        pred_boxes: (B, N, 4) normalised (cx, cy, w, h) relative to the unpadded image, in [0, 1].
    """

    pred_logits: Tensor
    pred_boxes: Tensor


@dataclass(frozen=True)
class DetectionOutput:
    """What :class:`ddetr.DeformableDETR` returns, in training and in evaluation alike.

    Attributes:
        pred_logits: (B, Q, C) raw logits of the last decoder layer.
        pred_boxes: (B, Q, 4) normalised (cx, cy, w, h) of the last decoder layer, relative to the unpadded image.
        aux_outputs: predictions of decoder layers 0 .. dec_layers-2 (in order); empty when ``aux_loss`` is off.
        enc_outputs: two-stage only: encoder proposals, pred_logits (B, S, C) with only the class-agnostic
            score meaningful and pred_boxes (B, S, 4); ``None`` otherwise.
    """

    pred_logits: Tensor
    pred_boxes: Tensor
    aux_outputs: list[LayerPrediction] = field(default_factory=list)
    enc_outputs: LayerPrediction | None = None
