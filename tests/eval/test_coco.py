"""eval/coco.py: COCOeval reproduction of the reference numbers; the per-image evaluator."""

from __future__ import annotations

import json

import pytest
import torch

from asset_paths import COCO_EVAL_REF
from ddetr.eval.coco import STAT_NAMES, CocoEvaluator, evaluate_detections
from ddetr.model.boxes import box_xywh_to_xyxy

GT = COCO_EVAL_REF / "instances_val2014_100.json"
DETS = COCO_EVAL_REF / "instances_val2014_fakebbox100_results.json"


def _expected() -> list[float]:
    return json.loads((COCO_EVAL_REF / "expected_bbox_stats.json").read_text())["stats"]


def test_reference_stats_from_files(capsys: pytest.CaptureFixture) -> None:
    stats = evaluate_detections(GT, DETS)
    assert len(stats) == 12
    assert max(abs(a - b) for a, b in zip(stats, _expected())) <= 1e-12
    assert capsys.readouterr().out == ""  # silent


def test_reference_stats_from_objects_and_verbose(capsys: pytest.CaptureFixture) -> None:
    gt = json.loads(GT.read_text())
    dets = json.loads(DETS.read_text())
    stats = evaluate_detections(gt, dets, verbose=True)
    assert max(abs(a - b) for a, b in zip(stats, _expected())) <= 1e-12
    assert "Average Precision" in capsys.readouterr().out


def test_evaluator_reproduces_reference(capsys: pytest.CaptureFixture) -> None:
    gt = json.loads(GT.read_text())
    dets = json.loads(DETS.read_text())
    ev = CocoEvaluator(gt)
    by_image: dict[int, list[dict]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    for image_id, ds in by_image.items():
        boxes = box_xywh_to_xyxy(torch.tensor([d["bbox"] for d in ds], dtype=torch.float64))
        ev.add(
            image_id,
            boxes,
            torch.tensor([d["score"] for d in ds]),
            torch.tensor([d["category_id"] for d in ds]),
        )
    out = ev.summarize()
    assert capsys.readouterr().out == ""
    exp = _expected()
    assert list(out["stats"]) == list(STAT_NAMES)
    assert max(abs(a - b) for a, b in zip(out["stats"].values(), exp)) <= 1e-9
    assert out["mAP"] == out["stats"]["AP"] and out["mAP50"] == out["stats"]["AP50"]
    assert out["num_detections"] == len(dets)
    per_class = out["per_class_AP"]
    assert set(per_class) <= {c["id"] for c in gt["categories"]}
    assert all(0.0 <= v <= 1.0 for v in per_class.values())
    # COCO's AP is the mean over categories with ground truth
    assert abs(sum(per_class.values()) / len(per_class) - exp[0]) < 1e-9


def test_no_detections_is_zero_not_crash() -> None:
    gt = json.loads(GT.read_text())
    out = CocoEvaluator(gt).summarize()
    assert out["mAP"] == 0.0 and out["mAP50"] == 0.0 and out["num_detections"] == 0
    assert all(v == 0.0 for v in out["per_class_AP"].values()) and out["per_class_AP"]
    assert evaluate_detections(gt, []) == [0.0] * 12


def _tiny_gt() -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30]},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_perfect_and_wrong_predictions_and_class_filter() -> None:
    ev = CocoEvaluator(_tiny_gt())
    ev.update(
        [1, 2],
        [
            {
                "boxes": torch.tensor([[10.0, 10, 50, 50]]),
                "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1]),
            },
            {
                "boxes": torch.tensor([[0.0, 0, 5, 5]]),
                "scores": torch.tensor([0.8]),
                "labels": torch.tensor([2]),
            },
        ],
    )
    out = ev.summarize()
    assert out["per_class_AP"] == {1: pytest.approx(1.0), 2: 0.0}
    assert out["mAP"] == pytest.approx(0.5)
    only_a = CocoEvaluator(_tiny_gt(), eval_class_ids=[1])
    only_a.extend(ev.detections)
    assert only_a.summarize()["mAP"] == pytest.approx(1.0)
    ev.reset()
    assert ev.summarize()["mAP"] == 0.0


def test_unknown_image_ids_ignored() -> None:
    ev = CocoEvaluator(_tiny_gt())
    ev.add(99, torch.tensor([[10.0, 10, 50, 50]]), torch.tensor([0.9]), torch.tensor([1]))
    ev.add(1, torch.tensor([[10.0, 10, 50, 50]]), torch.tensor([0.9]), torch.tensor([1]))
    out = ev.summarize()
    assert out["num_detections"] == 1 and out["per_class_AP"][1] == pytest.approx(1.0)


def test_detections_on_unknown_images_are_a_data_error() -> None:
    from ddetr.errors import DataError

    dets = [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(DataError, match="not in the ground truth"):
        evaluate_detections(_tiny_gt(), dets)
