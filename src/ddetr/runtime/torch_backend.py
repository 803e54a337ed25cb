"""PyTorch checkpoint back end of the Predictor."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ddetr.runtime.base import ModelInfo, Predictor

logger = logging.getLogger(__name__)


class TorchPredictor(Predictor):
    """A ddetr ``.pth`` checkpoint run in PyTorch (eval mode, no grad).

    Args:
        path: checkpoint file; the architecture comes from it.
        spec_model: the spec's model section, only to warn about fields that differ from the checkpoint.
        device: torch device string; "cuda" falls back to the CPU with a notice when no GPU exists.
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).
    """

    backend = "pytorch"

    def __init__(
        self,
        path: str,
        spec_model: Any | None = None,
        device: str = "cpu",
        encryption_key: str | None = None,
    ) -> None:
        from ddetr.checkpoint import build_model_from_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            logger.info("No GPU found: running the checkpoint on the CPU.")
            device = "cpu"
        self.model, self.checkpoint = build_model_from_checkpoint(path, encryption_key=encryption_key)
        if spec_model is not None:
            from ddetr.spec.load import merge_model_from_checkpoint

            merge_model_from_checkpoint(spec_model, self.checkpoint.model.model_dump())
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        spec = self.checkpoint.spec or {}
        aug = (spec.get("dataset") or {}).get("augmentation") or {}
        self.info = ModelInfo(
            num_classes=self.checkpoint.num_classes,
            class_names=list(self.checkpoint.class_names or []),
            mean=tuple(aug.get("input_mean", ModelInfo.mean)),
            std=tuple(aug.get("input_std", ModelInfo.std)),
            num_queries=self.checkpoint.model.num_queries,
        )

    @torch.inference_mode()
    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.model(images.to(self.device), None if mask is None else mask.to(self.device))
        return out.pred_logits.float().cpu(), out.pred_boxes.float().cpu()
