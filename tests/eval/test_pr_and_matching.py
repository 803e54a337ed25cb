"""Per-class precision-recall curves from COCOeval, and detections matched to ground truth at a threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asset_paths import COCO_EVAL_REF
from ddetr.eval.coco import RECALL_POINTS, precision_recall
from ddetr.eval.matching import box_iou_xywh, match_detections


def test_per_class_curves_average_to_the_coco_numbers() -> None:
    gt = COCO_EVAL_REF / "instances_val2014_100.json"
    dets = COCO_EVAL_REF / "instances_val2014_fakebbox100_results.json"
    expected = json.loads((COCO_EVAL_REF / "expected_bbox_stats.json").read_text())
    stats = expected["stats"] if isinstance(expected, dict) else expected
    pr = precision_recall(gt, dets)
    classes = pr["classes"]
    assert len(pr["recall"]) == len(RECALL_POINTS) == 101
    assert all(len(c["precision50"]) == 101 and len(c["precision75"]) == 101 for c in classes.values())
    # COCO's AP is the mean over categories with ground truth of the per-category AP
    assert np.mean([c["AP"] for c in classes.values()]) == pytest.approx(stats[0], abs=1e-5)
    assert np.mean([c["AP50"] for c in classes.values()]) == pytest.approx(stats[1], abs=1e-5)
    # a curve's mean over the recall points is that class's AP50
    some = next(iter(classes.values()))
    assert np.mean(some["precision50"]) == pytest.approx(some["AP50"], abs=1e-3)
    small = [c["AP_small"] for c in classes.values() if c["AP_small"] is not None]
    assert np.mean(small) == pytest.approx(stats[3], abs=1e-5)


def test_no_detections_no_curves() -> None:
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    assert precision_recall(gt, [])["classes"] == {}


def test_iou() -> None:
    iou = box_iou_xywh(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 1, 1]]))
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_matching_counts_each_kind_of_error() -> None:
    gt = {
        "a": [(1, (0, 0, 10, 10)), (1, (100, 100, 10, 10)), (2, (50, 0, 10, 10))],
        "b": [(2, (0, 0, 10, 10))],
    }
    dets = {
        "a": [
            (1, (0, 0, 10, 10), 0.9),  # right
            (1, (1, 0, 10, 10), 0.8),  # a duplicate of a matched box: false alarm
            (1, (50, 0, 10, 10), 0.7),  # a class-2 object called class 1
            (2, (100, 100, 10, 10), 0.3),  # below the threshold: the class-1 object there is missed
        ],
        "b": [(2, (0, 0, 10, 10), 0.6)],
        "c": [
            (2, (0, 0, 3, 3), 0.99),
            (3, (0, 0, 3, 3), 0.99),
        ],  # an image without objects; class 3 not in the matrix
    }
    m = match_detections(gt, dets, [1, 2], score_threshold=0.5)
    #                   pred 1  pred 2  missed
    assert m.confusion.tolist() == [
        [1, 0, 1],  # gt 1
        [1, 1, 0],  # gt 2
        [1, 1, 0],  # background
    ]
    assert m.per_image["a"].errors == 3 and m.per_image["a"].correct == 1
    assert m.per_image["b"].errors == 0 and m.per_image["c"].false == 1
    assert m.worst(2) == ["a", "c"]


def test_same_class_preferred_over_a_higher_iou_of_another_class() -> None:
    gt = {1: [(1, (0, 0, 10, 10)), (2, (1, 0, 10, 10))]}
    m = match_detections(gt, {1: [(1, (1, 0, 10, 10), 0.9)]}, [1, 2])
    assert m.confusion[0, 0] == 1 and m.confusion[1, 2] == 1  # class 2 missed, not confused
