"""What each validation shows besides numbers: a fixed sample of images with their detections, and PR curves.

After every validation, :class:`ValidationPictures` draws the same few validation images (ground truth on the
left, the model's detections on the right) and sends them to TensorBoard (an image summary) and to W&B (a
list of images) when those loggers are on; TensorBoard also gets one precision-recall curve per class at
IoU 0.5 (:func:`ddetr.eval.pr.pr_curves`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont

from ddetr.eval.pr import pr_curves
from ddetr.viz.draw import class_color, draw_detections

logger = logging.getLogger(__name__)

#: Validation images drawn after each validation (the first ones of the validation set).
NUM_SAMPLE_IMAGES = 4
#: Pictures are scaled so that their longer side lies in this range (pixels).
MIN_SIDE, MAX_SIDE = 256, 512
#: Score thresholds of the TensorBoard PR curves.
PR_THRESHOLDS = 101


def _scaled(image: Image.Image) -> tuple[Image.Image, float]:
    longest = max(image.size)
    scale = MIN_SIDE / longest if longest < MIN_SIDE else min(1.0, MAX_SIDE / longest)
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale


def _caption(image: Image.Image, text: str) -> Image.Image:
    font = ImageFont.load_default()
    band = 14
    out = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    out.paste(image, (0, band))
    ImageDraw.Draw(out).text((3, 1), text, fill=(0, 0, 0), font=font)
    return out


def sample_picture(
    image: Image.Image,
    gt_boxes: Sequence[Sequence[float]],
    gt_labels: Sequence[int],
    detections: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    score_threshold: float,
) -> Image.Image:
    """Ground truth (left) and detections with score >= ``score_threshold`` (right) of one image, side by side.

    Args:
        image: the original image.
        gt_boxes: ground-truth boxes (x1, y1, x2, y2) in original-image pixels.
        gt_labels: their category ids.
        detections: COCO results of this image (``bbox`` [x, y, w, h] pixels, ``score``, ``category_id``).
        class_names: names indexed by category id ('' or missing: the id is shown).
        score_threshold: the lowest score drawn.

    Returns:
        An RGB picture about twice as wide as the scaled image (longer side 256-512 pixels), with a caption
        band on top of each half.
    """
    base, scale = _scaled(image.convert("RGB"))

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) and class_names[label] else str(label)

    truth = base.copy()
    draw = ImageDraw.Draw(truth)
    font = ImageFont.load_default()
    for box, label in zip(gt_boxes, gt_labels):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=class_color(int(label)), width=2)
        draw.text((x1 + 2, y1 + 1), name(int(label)), fill=class_color(int(label)), font=font)
    kept = [d for d in detections if float(d["score"]) >= score_threshold]
    kept.sort(key=lambda d: float(d["score"]))  # the most confident drawn last, on top
    boxes = [
        [x * scale, y * scale, (x + w) * scale, (y + h) * scale] for x, y, w, h in (d["bbox"] for d in kept)
    ]
    predicted = draw_detections(
        base,
        boxes,
        [name(int(d["category_id"])) for d in kept],
        [float(d["score"]) for d in kept],
        [class_color(int(d["category_id"])) for d in kept],
        outline_width=2,
    )
    left = _caption(truth, f"ground truth ({len(gt_boxes)})")
    right = _caption(predicted, f"detections >= {score_threshold:g} ({len(kept)})")
    out = Image.new("RGB", (left.width + right.width + 4, left.height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 4, 0))
    return out


def validation_pictures(
    val_set: Any, detections: Sequence[dict[str, Any]], score_threshold: float, num_images: int
) -> list[tuple[str, Image.Image]]:
    """(file name, picture) of the first ``num_images`` images of ``val_set`` (a ``CocoDetection``).

    ``detections``: COCO results with the data set's (renumbered) image ids, e.g. a ``CocoEvaluator``'s.
    """
    by_image: dict[int, list[dict[str, Any]]] = {}
    for det in detections:
        by_image.setdefault(int(det["image_id"]), []).append(det)
    pictures = []
    for rec in val_set.records[:num_images]:
        try:
            with Image.open(rec["path"]) as img:
                image = img.convert("RGB")
        except OSError as exc:
            logger.warning("Sample picture: cannot read %s (%s); skipped.", rec["path"], exc)
            continue
        picture = sample_picture(
            image,
            rec["boxes"].tolist(),
            rec["labels"].tolist(),
            by_image.get(int(rec["image_id"]), []),
            val_set.class_names,
            score_threshold,
        )
        pictures.append((str(rec["file_name"]), picture))
    return pictures


def _grid(pictures: Sequence[Image.Image]) -> Image.Image:
    width = max(p.width for p in pictures)
    out = Image.new(
        "RGB", (width, sum(p.height for p in pictures) + 4 * (len(pictures) - 1)), (255, 255, 255)
    )
    y = 0
    for picture in pictures:
        out.paste(picture, (0, y))
        y += picture.height + 4
    return out


class ValidationPictures(Callback):
    """After each validation: sample pictures to TensorBoard and W&B, PR curves per class to TensorBoard.

    Args:
        score_threshold: the lowest detection score drawn.
        num_images: how many validation images (the first ones) are drawn.
    """

    def __init__(self, score_threshold: float = 0.5, num_images: int = NUM_SAMPLE_IMAGES) -> None:
        self.score_threshold = float(score_threshold)
        self.num_images = int(num_images)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        evaluator = getattr(pl_module, "last_val_evaluator", None)
        datamodule = getattr(trainer, "datamodule", None)
        val_set = getattr(datamodule, "val_set", None)
        if evaluator is None or val_set is None:
            return
        step = trainer.global_step
        pictures = validation_pictures(val_set, evaluator.detections, self.score_threshold, self.num_images)
        names = val_set.class_names
        curves = pr_curves(evaluator.cocoeval, num_thresholds=PR_THRESHOLDS) if evaluator.cocoeval else []
        for log in trainer.loggers:
            if isinstance(log, TensorBoardLogger):
                writer = log.experiment
                if pictures:
                    grid = _grid([p for _, p in pictures])
                    writer.add_image("val/samples", np.asarray(grid), step, dataformats="HWC")
                for curve in curves:
                    label = names[curve.category_id] if curve.category_id < len(names) else ""
                    writer.add_pr_curve_raw(
                        f"val/pr_iou50/{label or curve.category_id}",
                        curve.tp,
                        curve.fp,
                        np.zeros_like(curve.tp),
                        curve.fn,
                        curve.precision,
                        curve.recall,
                        global_step=step,
                        num_thresholds=len(curve.thresholds),
                    )
                writer.flush()
            elif isinstance(log, WandbLogger) and pictures:
                log.log_image(
                    "val/samples", [p for _, p in pictures], step=step, caption=[n for n, _ in pictures]
                )
