"""COCO mAP of any Predictor on COCO-format data, through the one inference path.

``ddetr evaluate``, the quantization report and the benchmarks all call :func:`evaluate_predictor`: images
are preprocessed as the predictor's card says, detections come from :func:`ddetr.model.predict.detect`, and
the detections it returns carry the dataset's own image ids and file names, so they score against the
user's json with the COCO API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ddetr.data.coco import CocoDetection
from ddetr.data.collate import collate_detection, num_workers
from ddetr.data.transforms import eval_transforms
from ddetr.eval.coco import CocoEvaluator
from ddetr.model.predict import Predictor, detect


@dataclass(frozen=True)
class CocoEvaluation:
    """The outcome of :func:`evaluate_predictor`.

    Attributes:
        summary: :meth:`ddetr.eval.coco.CocoEvaluator.summarize`'s dict (``stats``, ``mAP``, ``mAP50``,
            ``per_class_AP``).
        detections: COCO results entries (``image_id`` as in the user's json, ``file_name``, ``category_id``,
            ``bbox`` x, y, w, h pixels, ``score``).
        images: how many images were evaluated.
        class_names: names indexed by category id (the dataset's, else the model's).
    """

    summary: dict[str, Any]
    detections: list[dict[str, Any]]
    images: int
    class_names: list[str]

    @property
    def mAP(self) -> float:
        """COCO AP@[.5:.95]."""
        return float(self.summary["mAP"])

    @property
    def mAP50(self) -> float:
        """COCO AP@.5."""
        return float(self.summary["mAP50"])


def coco_dataset(predictor: Predictor, pairs: Sequence[tuple[str, str]]) -> CocoDetection:
    """The evaluation dataset of ``pairs``, preprocessed as the predictor's card says."""
    card = predictor.card
    transforms = eval_transforms(card.mean, card.std, card.shortest_side, card.max_size, card.input_size)
    return CocoDetection(list(pairs), card.num_classes, transforms, train=False)


def evaluate_predictor(
    predictor: Predictor,
    dataset: CocoDetection | Sequence[tuple[str, str]],
    *,
    batch_size: int = 1,
    workers: int = 0,
    conf_threshold: float = 0.0,
    eval_class_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> CocoEvaluation:
    """COCO bbox evaluation of ``predictor``.

    Args:
        predictor: any back end; its card gives preprocessing, ``num_select`` and class names.
        dataset: a dataset from :func:`coco_dataset`, or local (image folder, json) pairs to build one.
        batch_size: images per forward pass.
        workers: data loader processes (capped to the machine's cores).
        conf_threshold: detections with a lower score are dropped before scoring.
        eval_class_ids: category ids COCOeval scores (None: all).
        progress: show a progress bar on stderr.

    Returns:
        The summary and the detections.
    """
    if not isinstance(dataset, CocoDetection):
        dataset = coco_dataset(predictor, dataset)
    card = predictor.card
    in_gt = {int(c["id"]) for c in dataset.coco_gt["categories"]}
    # a class is kept if the model names it or the ground truth has it (declared or only used)
    names = [
        (card.class_names[i] if i < len(card.class_names) else "") or (str(i) if i in in_gt else "")
        for i in range(card.num_classes)
    ]
    loader = DataLoader(
        dataset,
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=num_workers(workers),
        collate_fn=collate_detection,
    )
    evaluator = CocoEvaluator(dataset.coco_gt, eval_class_ids=eval_class_ids)
    detections: list[dict[str, Any]] = []
    count = 0
    with _progress(progress, len(loader)) as advance:
        for images, mask, targets in loader:
            sizes = torch.stack([t["orig_size"] for t in targets])
            found = detect(predictor, images, mask, sizes, conf_threshold=conf_threshold, class_names=names)
            for target, det in zip(targets, found):
                image_id = int(target["image_id"])
                evaluator.add(image_id, det.boxes, det.scores, det.labels)
                _, own_id = dataset.original_image_id(image_id)
                detections.extend(det.to_coco(own_id, dataset.file_name(image_id)))
                count += 1
            advance()
    return CocoEvaluation(
        summary=evaluator.summarize(),
        detections=detections,
        images=count,
        class_names=list(dataset.class_names) if any(dataset.class_names) else list(card.class_names),
    )


class _progress:
    """A rich progress bar advanced once per batch, or nothing."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total

    def __enter__(self) -> Any:
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("evaluate", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self.bar.__exit__(*exc)
