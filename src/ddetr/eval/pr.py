"""Precision-recall curves per class from a finished COCO evaluation, as counts per score threshold.

COCOeval matches each detection to a ground-truth box (greedily, by score) at every IoU threshold. Counting
the matched (true positive) and unmatched (false positive) detections whose score is at least ``t``, for
evenly spaced thresholds ``t``, gives the curve TensorBoard's PR-curve plugin draws
(``add_pr_curve_raw``): precision = TP / (TP + FP) and recall = TP / (ground-truth boxes) at each ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PrCurve:
    """One class's precision-recall curve at one IoU threshold.

    Attributes:
        category_id: the class.
        iou_threshold: the IoU a detection needs to match a ground-truth box.
        thresholds: float[N] score thresholds ``i / (N - 1)``, ascending.
        tp, fp, fn: int[N] counts of detections with score >= threshold that match (tp) or do not (fp),
            and of ground-truth boxes no such detection matches (fn).
        precision, recall: float[N] (precision is 1.0 where nothing scores that high).
        num_gt: ground-truth boxes of the class (crowd boxes excluded).
    """

    category_id: int
    iou_threshold: float
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_gt: int


def pr_curves(cocoeval: Any, *, iou_threshold: float = 0.5, num_thresholds: int = 101) -> list[PrCurve]:
    """Per-class precision-recall counts from a ``COCOeval`` that ran ``evaluate()``.

    Args:
        cocoeval: a ``pycocotools.cocoeval.COCOeval`` after ``evaluate()`` (bbox, area range 'all').
        iou_threshold: one of ``cocoeval.params.iouThrs`` (0.5, 0.55, ..., 0.95).
        num_thresholds: score thresholds (>= 2), evenly spaced over [0, 1].

    Returns:
        One curve per evaluated category that has ground truth or detections, in category order.

    Example:
        >>> from ddetr.eval.coco import CocoEvaluator
        >>> ev = CocoEvaluator({"images": [{"id": 1, "width": 100, "height": 100}],
        ...                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
        ...                                      "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0}],
        ...                     "categories": [{"id": 1, "name": "a"}]})
        >>> ev.add(1, [[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.4], [1, 1])
        >>> _ = ev.summarize()
        >>> curve = pr_curves(ev.cocoeval, num_thresholds=11)[0]
        >>> curve.tp[[0, 5, 10]].tolist(), curve.fp[[0, 5, 10]].tolist()
        ([1, 1, 0], [1, 0, 0])
    """
    params = cocoeval.params
    iou_index = np.flatnonzero(np.isclose(np.asarray(params.iouThrs), iou_threshold))
    if iou_index.size == 0:
        raise ValueError(f"iou_threshold {iou_threshold} is not one of COCOeval's {list(params.iouThrs)}")
    t = int(iou_index[0])
    thresholds = np.linspace(0.0, 1.0, max(2, int(num_thresholds)))
    num_images = len(params.imgIds)
    num_areas = len(params.areaRng)
    curves = []
    for k, category_id in enumerate(params.catIds):
        entries = [
            e for e in cocoeval.evalImgs[k * num_areas * num_images : (k * num_areas + 1) * num_images] if e
        ]
        scores = np.concatenate(
            [np.asarray(e["dtScores"], dtype=np.float64) for e in entries] or [np.zeros(0)]
        )
        matched = np.concatenate(
            [np.asarray(e["dtMatches"])[t] != 0 for e in entries] or [np.zeros(0, dtype=bool)]
        )
        ignored = np.concatenate(
            [np.asarray(e["dtIgnore"])[t].astype(bool) for e in entries] or [np.zeros(0, dtype=bool)]
        )
        num_gt = int(sum(int((np.asarray(e["gtIgnore"]) == 0).sum()) for e in entries))
        if num_gt == 0 and not scores.size:
            continue
        above = scores[None, :] >= thresholds[:, None]  # [N thresholds, D detections]
        tp = (above & matched & ~ignored).sum(axis=1)
        fp = (above & ~matched & ~ignored).sum(axis=1)
        fn = num_gt - tp
        found = tp + fp
        precision = np.where(found > 0, tp / np.maximum(found, 1), 1.0)
        recall = tp / num_gt if num_gt else np.zeros_like(thresholds)
        curves.append(
            PrCurve(
                int(category_id), float(params.iouThrs[t]), thresholds, tp, fp, fn, precision, recall, num_gt
            )
        )
    return curves
