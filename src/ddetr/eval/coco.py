"""COCO bbox mAP (pycocotools' COCOeval), the one place train-time validation and ``evaluate`` use.

:func:`evaluate_detections` scores a COCO results file against a ground-truth file.
:class:`CocoEvaluator` collects per-image predictions during a validation loop and summarises them.
pycocotools prints to stdout; both stay silent unless ``verbose=True``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ddetr.errors import DataError

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _load_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise DataError(f"{what} '{path}' does not exist.") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} '{path}' is not valid JSON: {exc}") from exc


def _coco_from_dict(gt: Mapping[str, Any], verbose: bool) -> COCO:
    data = dict(copy.deepcopy(gt))
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"Ground truth is not COCO detection json: missing list '{key}'.")
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _run_cocoeval(
    coco_gt: COCO, detections: list[dict[str, Any]], cat_ids: Sequence[int] | None, verbose: bool
) -> COCOeval | None:
    """Evaluate, accumulate, summarise; None when there are no detections (every AP/AR is then 0)."""
    if not detections:
        return None
    unknown = {int(d["image_id"]) for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise DataError(
            f"{len(unknown)} detection image id(s) are not in the ground truth (e.g. {sorted(unknown)[:5]})."
        )
    detections = [dict(d) for d in detections]  # loadRes adds fields in place
    with _quiet(verbose):
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def evaluate_detections(
    gt_json: str | Path | Mapping[str, Any],
    detections: str | Path | Sequence[Mapping[str, Any]],
    *,
    eval_class_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> list[float]:
    """The 12 COCOeval bbox summary numbers (order :data:`STAT_NAMES`) of COCO-format results.

    Args:
        gt_json: COCO ground-truth file or dict.
        detections: COCO results file or list of ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        eval_class_ids: category ids to score; None = all.
        verbose: let pycocotools print its tables.

    Returns:
        12 floats; all 0.0 when there are no detections.

    Example:
        >>> gt = {"images": [{"id": 7, "width": 100, "height": 100}],
        ...       "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 40]}],
        ...       "categories": [{"id": 1, "name": "cell"}]}
        >>> found = [{"image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 40], "score": 0.9}]
        >>> {name: round(value, 6) for name, value in zip(STAT_NAMES[:3], evaluate_detections(gt, found))}
        {'AP': 1.0, 'AP50': 1.0, 'AP75': 1.0}
    """
    gt = gt_json if isinstance(gt_json, Mapping) else _load_json(gt_json, "Ground-truth file")
    dets = (
        detections if not isinstance(detections, (str, Path)) else _load_json(detections, "Detections file")
    )
    if not isinstance(dets, list):
        raise DataError("Detections must be a COCO results list of {image_id, category_id, bbox, score}.")
    ev = _run_cocoeval(_coco_from_dict(gt, verbose), list(dets), eval_class_ids, verbose)
    return [0.0] * 12 if ev is None else [float(s) for s in ev.stats]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class CocoEvaluator:
    """Collects predictions image by image and computes COCO bbox mAP against ``coco_gt``.

    Args:
        coco_gt: ground-truth dict (e.g. :attr:`ddetr.data.coco.CocoDetection.coco_gt`); image ids of the
            predictions must be its ids.
        eval_class_ids: category ids scored (``dataset.eval_class_ids``); None = all categories.
        verbose: let pycocotools print its tables.

    Example:
        >>> ev = CocoEvaluator({"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [],
        ...                     "categories": [{"id": 1, "name": "a"}]})
        >>> ev.summarize()["mAP"]
        0.0
    """

    def __init__(
        self,
        coco_gt: Mapping[str, Any],
        eval_class_ids: Sequence[int] | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        self.verbose = verbose
        self.eval_class_ids = list(eval_class_ids) if eval_class_ids is not None else None
        self.coco_gt = _coco_from_dict(coco_gt, verbose)
        self.detections: list[dict[str, Any]] = []
        self.cocoeval: COCOeval | None = None  # the last summarize()'s evaluation (None: no detections)

    def reset(self) -> None:
        """Forget collected predictions."""
        self.detections = []

    def add(self, image_id: int, boxes: Any, scores: Any, labels: Any) -> None:
        """Add one image's predictions.

        Args:
            image_id: the ground truth's image id.
            boxes: Tensor[N, 4] (x1, y1, x2, y2) in original-image pixels.
            scores: Tensor[N] confidences.
            labels: Tensor[N] category ids (= logit indices).
        """
        b = _as_numpy(boxes).reshape(-1, 4)
        s, lab = _as_numpy(scores).reshape(-1), _as_numpy(labels).reshape(-1)
        for (x1, y1, x2, y2), score, label in zip(b.tolist(), s.tolist(), lab.tolist()):
            self.detections.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )

    def update(self, image_ids: Iterable[int], results: Iterable[Mapping[str, Any]]) -> None:
        """Add a batch: one ``{"boxes", "scores", "labels"}`` dict (post-processed, xyxy pixels) per image id."""
        for image_id, res in zip(image_ids, results):
            self.add(int(image_id), res["boxes"], res["scores"], res["labels"])

    def extend(self, detections: Iterable[Mapping[str, Any]]) -> None:
        """Add COCO-results dicts directly (e.g. gathered from other processes)."""
        self.detections.extend(dict(d) for d in detections)

    def summarize(self) -> dict[str, Any]:
        """Score everything collected.

        Returns:
            ``{"mAP", "mAP50", "stats": {name: value for the 12 COCO stats}, "per_class_AP": {category id:
            AP@[.5:.95] (all areas, 100 detections)} for scored categories with ground truth,
            "num_detections"}``. With no detections every number is 0.0.
        """
        known = set(self.coco_gt.getImgIds())
        dets = [d for d in self.detections if d["image_id"] in known]
        if len(dets) < len(self.detections):
            logger.warning(
                "%d detections name image ids absent from the ground truth; they are ignored.",
                len(self.detections) - len(dets),
            )
        ev = _run_cocoeval(self.coco_gt, dets, self.eval_class_ids, self.verbose)
        self.cocoeval = ev
        cat_ids = self.eval_class_ids if self.eval_class_ids is not None else self.coco_gt.getCatIds()
        with_gt = [c for c in cat_ids if self.coco_gt.getAnnIds(catIds=[c])]
        stats = [0.0] * 12 if ev is None else [float(s) for s in ev.stats]
        per_class: dict[int, float] = {c: 0.0 for c in with_gt}
        if ev is not None:
            precision = ev.eval["precision"]  # (T iou thresholds, R recalls, K classes, A areas, M max dets)
            for k, c in enumerate(ev.params.catIds):
                p = precision[:, :, k, 0, -1]
                if c in per_class:
                    per_class[c] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        return {
            "mAP": stats[0],
            "mAP50": stats[1],
            "stats": dict(zip(STAT_NAMES, stats)),
            "per_class_AP": per_class,
            "num_detections": len(dets),
        }


#: COCOeval's recall thresholds (0, 0.01, ..., 1): the x values of :func:`precision_recall`'s curves.
RECALL_POINTS: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))
_AREAS = ("all", "small", "medium", "large")


def _area_ap(precision: np.ndarray, k: int, area: int, iou: int | None = None) -> float | None:
    """Mean of COCOeval's precision for class index ``k`` at one area (and IoU index); None without ground truth."""
    p = precision[:, :, k, area, -1] if iou is None else precision[iou, :, k, area, -1]
    kept = p[p > -1]
    return round(float(kept.mean()), 6) if kept.size else None


def precision_recall(
    gt_json: str | Path | Mapping[str, Any],
    detections: str | Path | Sequence[Mapping[str, Any]],
    *,
    eval_class_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-class precision-recall curves and AP by object size, from COCOeval's accumulated precision array.

    The precision array is (T=10 IoU thresholds, R=101 recall points, K classes, A=4 areas, M=3 max
    detections); the curves are its slices at IoU 0.50 and 0.75, all areas, 100 detections per image.

    Args:
        gt_json: COCO ground-truth file or dict.
        detections: COCO results (file or list).
        eval_class_ids: category ids to score; None = all.

    Returns:
        ``{"recall": RECALL_POINTS, "classes": {category id: {"precision50": [101 floats], "precision75":
        [...], "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}}}`` (4 and 6 decimals) for every
        scored category with
        ground truth; an AP is None where the category has no ground truth of that size. Empty ``classes``
        when there are no detections.

    Example:
        >>> gt = {"images": [{"id": 1, "width": 100, "height": 100}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40]}],
        ...       "categories": [{"id": 1, "name": "cell"}]}
        >>> pr = precision_recall(gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "score": 0.9}])
        >>> pr["classes"][1]["precision50"][-1], pr["classes"][1]["AP_small"], pr["classes"][1]["AP_medium"]
        (1.0, None, 1.0)
    """
    gt = gt_json if isinstance(gt_json, Mapping) else _load_json(gt_json, "Ground-truth file")
    dets = (
        detections if not isinstance(detections, (str, Path)) else _load_json(detections, "Detections file")
    )
    coco_gt = _coco_from_dict(gt, False)
    ev = _run_cocoeval(coco_gt, list(dets), eval_class_ids, False)
    classes: dict[int, dict[str, Any]] = {}
    if ev is not None:
        precision = ev.eval["precision"]
        for k, cat in enumerate(ev.params.catIds):
            if not coco_gt.getAnnIds(catIds=[cat]):
                continue
            row: dict[str, Any] = {
                f"precision{name}": [round(max(0.0, float(v)), 4) for v in precision[t, :, k, 0, -1]]
                for t, name in ((0, "50"), (5, "75"))
            }
            row["AP"] = _area_ap(precision, k, 0)
            row["AP50"] = _area_ap(precision, k, 0, 0)
            row["AP75"] = _area_ap(precision, k, 0, 5)
            for a, area in enumerate(_AREAS[1:], start=1):
                row[f"AP_{area}"] = _area_ap(precision, k, a)
            classes[int(cat)] = row
    return {"recall": list(RECALL_POINTS), "classes": classes}
