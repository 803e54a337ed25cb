"""One Predictor interface for every deployable artefact (checkpoint, ONNX file, TensorRT engine)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """What a deployable artefact says about itself.

    Attributes:
        num_classes: logit width C (largest category id + 1).
        class_names: names indexed by category id ('' for unused ids); may be shorter than C.
        input_size: fixed (width, height) the artefact must be run at, or None for any size.
        mean, std: per-channel normalisation of [0, 1] RGB input.
        num_queries: Q.
    """

    num_classes: int
    class_names: list[str] = field(default_factory=list)
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_queries: int = 300


class Predictor(ABC):
    """Runs a detector on a normalised, padded batch.

    ``predictor(images, mask)`` takes images (B, 3, H, W) float32 normalised and mask (B, H, W) bool (True =
    padding) and returns (pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cx, cy, w, h) as CPU tensors.
    """

    info: ModelInfo
    backend: str = "?"

    @abstractmethod
    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]: ...
