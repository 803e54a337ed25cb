"""Detections matched to ground truth at one score threshold: a confusion matrix and each image's errors.

COCOeval ranks detections over all thresholds; a deployed model keeps the boxes above one threshold. This
module answers the questions that threshold raises: which classes are mistaken for which, which objects are
missed (the background column), which boxes are false alarms (the background row) and which images are
worst.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImageErrors", "Matching", "box_iou_xywh", "match_detections"]


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), both x, y, w, h pixels; (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class ImageErrors:
    """One image's outcome at the threshold: boxes found right, missed, false alarms and wrong classes."""

    correct: int = 0
    missed: int = 0
    false: int = 0
    wrong_class: int = 0

    @property
    def errors(self) -> int:
        """Missed + false + wrongly classified boxes: what "worst image" sorts by."""
        return self.missed + self.false + self.wrong_class


@dataclass(frozen=True)
class Matching:
    """The outcome of :func:`match_detections`.

    Attributes:
        class_ids: the category ids of the matrix's rows and columns, in order; index ``len(class_ids)`` is
            the background.
        confusion: (C + 1, C + 1) counts; row = ground-truth class, column = predicted class. The last
            column holds the missed objects of each class, the last row the false alarms of each class.
        per_image: image key -> :class:`ImageErrors`.
    """

    class_ids: tuple[int, ...]
    confusion: np.ndarray
    per_image: dict[Any, ImageErrors] = field(default_factory=dict)

    def worst(self, count: int) -> list[Any]:
        """The ``count`` image keys with the most errors (ties: in key order), errorless images last."""
        order = sorted(self.per_image, key=lambda k: (-self.per_image[k].errors, str(k)))
        return order[:count]


def match_detections(
    ground_truth: Mapping[Any, Sequence[tuple[int, Sequence[float]]]],
    detections: Mapping[Any, Iterable[tuple[int, Sequence[float], float]]],
    class_ids: Sequence[int],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> Matching:
    """Match each image's detections above ``score_threshold`` to its ground truth, greedily by score.

    A detection takes the unmatched ground-truth box of its own class with the highest IoU >= ``iou_threshold``;
    failing that, the unmatched box of another class with the highest such IoU (a class confusion); failing
    that it is a false alarm. Ground truth left unmatched is missed.

    Args:
        ground_truth: image key -> [(category id, (x, y, w, h) pixels)] (crowd boxes left out by the caller).
        detections: image key -> [(category id, (x, y, w, h), score)]; keys absent from ``ground_truth``
            are images without objects.
        class_ids: the categories of the matrix (others are ignored, on both sides).
        score_threshold: detections with a lower score are dropped.
        iou_threshold: the overlap that makes a match.

    Returns:
        The confusion matrix and each image's errors.

    Example:
        >>> m = match_detections({1: [(1, (0, 0, 10, 10)), (2, (20, 20, 10, 10))]},
        ...                      {1: [(2, (0, 0, 10, 10), 0.9), (1, (50, 50, 5, 5), 0.8)]}, [1, 2])
        >>> m.confusion.tolist()
        [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
        >>> m.per_image[1]
        ImageErrors(correct=0, missed=1, false=1, wrong_class=1)
    """
    ids = tuple(int(c) for c in class_ids)
    index = {c: i for i, c in enumerate(ids)}
    background = len(ids)
    confusion = np.zeros((background + 1, background + 1), dtype=np.int64)
    per_image: dict[Any, ImageErrors] = {}
    for key in {*ground_truth, *detections}:
        gt = [(index[int(c)], box) for c, box in ground_truth.get(key, ()) if int(c) in index]
        found = sorted(
            (
                (index[int(c)], box, float(s))
                for c, box, s in detections.get(key, ())
                if int(c) in index and float(s) >= score_threshold
            ),
            key=lambda d: -d[2],
        )
        gt_cls = np.array([c for c, _ in gt], dtype=np.int64)
        iou = (
            box_iou_xywh(np.array([b for _, b, _ in found]), np.array([b for _, b in gt]))
            if gt and found
            else np.zeros((len(found), len(gt)))
        )
        taken = np.zeros(len(gt), dtype=bool)
        correct = false = wrong = 0
        for d, (cls, _, _) in enumerate(found):
            free = (~taken) & (iou[d] >= iou_threshold) if len(gt) else np.zeros(0, dtype=bool)
            same = free & (gt_cls == cls)
            pool = same if same.any() else free
            if not pool.any():
                confusion[background, cls] += 1
                false += 1
                continue
            g = int(np.argmax(np.where(pool, iou[d], -1.0)))
            taken[g] = True
            confusion[gt_cls[g], cls] += 1
            if gt_cls[g] == cls:
                correct += 1
            else:
                wrong += 1
        for g in np.flatnonzero(~taken):
            confusion[gt_cls[g], background] += 1
        per_image[key] = ImageErrors(correct, int((~taken).sum()), false, wrong)
    return Matching(ids, confusion, per_image)
