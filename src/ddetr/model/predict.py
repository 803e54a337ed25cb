"""One inference path: a Predictor's raw outputs -> typed :class:`Detections` in image pixels.

Everything that detects goes through :func:`detect`: Python's ``DeformableDETR.predict`` (through
:func:`predict_images`), ``ddetr inference``, ``ddetr evaluate``, the quantization report and the benchmarks.
A :class:`Predictor` is anything that maps a normalised, padded batch to logits and boxes and carries its
model card: the PyTorch module here (:class:`ModulePredictor`), ONNX Runtime and TensorRT in
:mod:`ddetr.runtime`. Preprocessing and ``num_select`` come from the predictor's card (see
:func:`ddetr.artefacts.card.card_for_spec` for the spec's say).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ddetr.artefacts.card import ModelCard
from ddetr.errors import DataError
from ddetr.model.postprocess import postprocess
from ddetr.model.preprocess import ImageInput, preprocess_images


@dataclass(frozen=True)
class Detections:
    """Detections of one image, sorted by decreasing score.

    Attributes:
        boxes: (K, 4) float (x1, y1, x2, y2) in original image pixels.
        scores: (K,) sigmoid confidences in [0, 1].
        labels: (K,) long category ids (= logit indices).
        class_names: K names (the category id as text where the model names none).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_coco(self, image_id: int, file_name: str | None = None) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` x, y, w, h in pixels), with ``file_name`` when given."""
        extra = {} if file_name is None else {"file_name": file_name}
        return [
            {
                "image_id": int(image_id),
                "category_id": int(label),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(score), 5),
                **extra,
            }
            for (x1, y1, x2, y2), score, label in zip(
                self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()
            )
        ]


class Predictor(ABC):
    """Runs a detector on a normalised, padded batch; knows its model card.

    ``predictor(images, mask)`` takes images (B, 3, H, W) float32 normalised and mask (B, H, W) bool (True =
    padding) or None, and returns (pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cx, cy, w, h) as
    float32 CPU tensors.
    """

    card: ModelCard
    backend: str = "?"

    @abstractmethod
    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


class ModulePredictor(Predictor):
    """A PyTorch detector in memory (trained, loaded or freshly quantized) behind the Predictor interface.

    Args:
        model: the detector; put in eval mode.
        card: its model card.
        device: where the batch is run (the model must already be there).
    """

    backend = "pytorch"

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.card = card
        self.device = torch.device(device) if device is not None else _module_device(model)

    @torch.inference_mode()
    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.model(images.to(self.device), None if mask is None else mask.to(self.device))
        return out.pred_logits.float().cpu(), out.pred_boxes.float().cpu()


def check_input_size(card: ModelCard, images: Tensor, where: str) -> None:
    """Raise a one-line DataError when a fixed-size artefact is given a batch of another size.

    Args:
        card: the artefact's card (``input_size`` is (width, height), or None for any size).
        images: the batch (B, 3, H, W).
        where: the file, for the message.
    """
    if card.input_size is None:
        return
    width, height = card.input_size
    if tuple(images.shape[-2:]) != (height, width):
        raise DataError(
            f"{where}: exported for {width}x{height} input, got a batch of {images.shape[-1]}x{images.shape[-2]}; "
            "resize to the exported size (input_width/input_height)."
        )


def _module_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def class_name(names: Sequence[str], label: int) -> str:
    """The name of a category id, or its number when unnamed."""
    return names[label] if 0 <= label < len(names) and names[label] else str(label)


def decode(
    logits: Tensor,
    boxes: Tensor,
    orig_sizes: Tensor,
    *,
    num_select: int,
    conf_threshold: float = 0.0,
    class_names: Sequence[str] = (),
) -> list[Detections]:
    """Raw outputs -> detections: top-k, unnamed classes dropped, threshold.

    Args:
        logits: (B, Q, C) raw class logits.
        boxes: (B, Q, 4) normalised (cx, cy, w, h) relative to each unpadded image.
        orig_sizes: (B, 2) original (height, width) in pixels.
        num_select: top-k (query, class) pairs kept per image before thresholding, clamped to Q * C.
        conf_threshold: detections with a lower score are dropped.
        class_names: names indexed by category id; ids they leave unnamed ('' such as COCO's unused id 0, or
            beyond the list) are dropped unless no id is named at all.

    Returns:
        One :class:`Detections` per image, in batch order, on the CPU.
    """
    names = list(class_names)
    k = min(num_select, logits.shape[1] * logits.shape[2])
    named = torch.tensor([bool(n) for n in names] + [False], dtype=torch.bool) if any(names) else None
    results: list[Detections] = []
    for raw in postprocess(logits.float(), boxes.float(), orig_sizes.to(logits.device), k):
        keep = raw["scores"] >= conf_threshold
        if named is not None:
            keep &= named.to(keep.device)[raw["labels"].clamp(max=len(names))]
        labels = raw["labels"][keep].cpu()
        results.append(
            Detections(
                boxes=raw["boxes"][keep].cpu(),
                scores=raw["scores"][keep].cpu(),
                labels=labels,
                class_names=tuple(class_name(names, int(label)) for label in labels.tolist()),
            )
        )
    return results


@torch.inference_mode()
def detect(
    predictor: Predictor,
    images: Tensor,
    mask: Tensor | None,
    orig_sizes: Tensor,
    *,
    num_select: int | None = None,
    conf_threshold: float = 0.0,
    class_names: Sequence[str] | None = None,
) -> list[Detections]:
    """Run the predictor on a batch and :func:`decode` its outputs.

    Args:
        predictor: the model to run.
        images: (B, 3, H, W) normalised batch.
        mask: (B, H, W) True = padding, or None.
        orig_sizes: (B, 2) original (height, width) in pixels.
        num_select: top-k kept per image before thresholding; default the card's.
        conf_threshold: detections with a lower score are dropped.
        class_names: names indexed by category id (default the card's); see :func:`decode`.

    Returns:
        One :class:`Detections` per image, in batch order.
    """
    logits, boxes = predictor(images, mask)
    return decode(
        logits,
        boxes,
        orig_sizes,
        num_select=num_select or predictor.card.num_select,
        conf_threshold=conf_threshold,
        class_names=predictor.card.class_names if class_names is None else class_names,
    )


def predict_images(
    predictor: Predictor,
    images: ImageInput | Sequence[ImageInput],
    *,
    conf_threshold: float = 0.5,
    num_select: int | None = None,
    batch_size: int = 4,
    class_names: Sequence[str] | None = None,
) -> list[Detections]:
    """Detect objects in image paths, PIL images or RGB arrays, preprocessed as the card says.

    Args:
        predictor: the model to run; its card gives the resize, normalisation and fixed input size.
        images: one or several image paths, PIL images or HxWx3 uint8 RGB arrays.
        conf_threshold: detections with a lower score are dropped.
        num_select: top-k before thresholding (default the card's ``num_select``).
        batch_size: images per forward pass.
        class_names: names indexed by category id (default the card's).

    Returns:
        One :class:`Detections` per input image, in order (a list even for one image).
    """
    items = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
    card = predictor.card
    results: list[Detections] = []
    for start in range(0, len(items), batch_size):
        batch, mask, sizes = preprocess_images(
            items[start : start + batch_size],
            card.mean,
            card.std,
            card.shortest_side,
            card.max_size,
            input_size=card.input_size,
        )
        results.extend(
            detect(
                predictor,
                batch,
                mask,
                sizes,
                num_select=num_select,
                conf_threshold=conf_threshold,
                class_names=class_names,
            )
        )
    return results
