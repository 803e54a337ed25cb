"""PyTorch checkpoint back end of the Predictor."""

from __future__ import annotations

import logging
import os

import torch

from ddetr.model.detector import build_model_from_checkpoint
from ddetr.model.predict import ModulePredictor

logger = logging.getLogger(__name__)


class TorchPredictor(ModulePredictor):
    """A ddetr ``.pth`` checkpoint run in PyTorch (eval mode, no grad); its card is the checkpoint's.

    Args:
        path: checkpoint file; the architecture comes from it.
        device: torch device string; "cuda" falls back to the CPU with a notice when no GPU exists.
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).

    Attributes:
        checkpoint: the checkpoint as read (card, spec, raw entries).
    """

    def __init__(
        self, path: str | os.PathLike[str], device: str = "cpu", encryption_key: str | None = None
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            logger.info("No GPU found: running the checkpoint on the CPU.")
            device = "cpu"
        model, self.checkpoint = build_model_from_checkpoint(path, encryption_key=encryption_key)
        super().__init__(model.to(device), self.checkpoint.card, device)
