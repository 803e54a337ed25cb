"""The user's side of the model: ``DeformableDETR.from_checkpoint(path).predict(images)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from ddetr.model.detector import DeformableDETR

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: (K, 4) float (x1, y1, x2, y2) in original image pixels.
        scores: (K,) sigmoid confidences in [0, 1], descending.
        labels: (K,) long category ids (= logit indices).
        class_names: K names (the category id as text where the checkpoint names none).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class InputConfig:
    """How images are prepared for the model: normalisation and the validation resize."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    shortest_side: int = 800
    max_size: int = 1333

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> InputConfig:
        """Read ``dataset.augmentation`` of a checkpoint's spec dict (defaults where absent)."""
        aug = ((spec or {}).get("dataset") or {}).get("augmentation") or {}
        default = cls()
        return cls(
            mean=tuple(aug.get("input_mean", default.mean)),
            std=tuple(aug.get("input_std", default.std)),
            shortest_side=int(aug.get("test_random_resize", default.shortest_side)),
            max_size=int(aug.get("random_resize_max_size", default.max_size)),
        )


def load_for_inference(path: str | Path, encryption_key: str | None = None) -> DeformableDETR:
    """Build a model from a checkpoint, remembering its class names and input preparation.

    ``encryption_key`` reads an encrypted checkpoint (plain ones ignore it).
    """
    from ddetr.checkpoint import build_model_from_checkpoint

    model, info = build_model_from_checkpoint(path, encryption_key=encryption_key)
    model.class_names = list(info.class_names or [])
    model.input_config = InputConfig.from_spec(info.spec)
    return model


@torch.inference_mode()
def predict(
    model: DeformableDETR,
    images: ImageInput | Sequence[ImageInput],
    *,
    conf_threshold: float = 0.5,
    num_select: int | None = None,
    batch_size: int = 4,
) -> list[Detections]:
    """Detect objects in images.

    Args:
        model: the detector (eval mode is set here).
        images: one or several image paths, PIL images or HxWx3 uint8 RGB arrays.
        conf_threshold: detections with a lower score are dropped.
        num_select: top-k before thresholding (default: the model's ``num_select``).
        batch_size: images per forward pass.

    Returns:
        One :class:`Detections` per input image, in order (a list even for one image).
    """
    from ddetr.data.collate import preprocess_images
    from ddetr.model.postprocess import postprocess
    from ddetr.runtime.detect import class_name, drop_unnamed

    items = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
    cfg: InputConfig = getattr(model, "input_config", None) or InputConfig()
    names: list[str] = list(getattr(model, "class_names", []) or [])
    k = num_select or model.model_config.num_select
    model.eval()
    device = next(model.parameters()).device
    results: list[Detections] = []
    for start in range(0, len(items), batch_size):
        batch, mask, sizes = preprocess_images(
            items[start : start + batch_size], cfg.mean, cfg.std, cfg.shortest_side, cfg.max_size
        )
        out = model(batch.to(device), mask.to(device))
        k_eff = min(k, out.pred_logits.shape[1] * out.pred_logits.shape[2])
        for det in postprocess(out.pred_logits.float(), out.pred_boxes.float(), sizes.to(device), k_eff):
            det = drop_unnamed(det, names)
            keep = det["scores"] >= conf_threshold
            labels = det["labels"][keep].cpu()
            results.append(
                Detections(
                    boxes=det["boxes"][keep].cpu(),
                    scores=det["scores"][keep].cpu(),
                    labels=labels,
                    class_names=[class_name(names, int(lbl)) for lbl in labels.tolist()],
                )
            )
    return results
