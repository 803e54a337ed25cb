"""evaluate and inference on a checkpoint trained in the test, and the Python predict API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddetr.errors import CheckpointError, DataError, SpecError
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import evaluate, inference, train


@pytest.fixture(scope="module")
def trained(
    tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], Path]:
    """A 1-epoch checkpoint of the tiny model and the overrides that made it."""
    args = [*tiny_overrides(tiny_data, tmp_path_factory.mktemp("trained")), "train.num_epochs=1"]
    result = train.run(load_spec(None, args))
    return args, result.latest


def test_evaluate_writes_metrics_status_and_detections(trained) -> None:
    args, ckpt = trained
    spec = load_spec(None, [*args, f"evaluate.checkpoint={ckpt}"])
    result = evaluate.run(spec)
    out = Path(spec.results_dir) / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["stats"]) == 12
    assert 0.0 <= metrics["test_mAP"] <= 1.0 and metrics["test_mAP"] == result.test_mAP
    assert set(metrics["per_class_AP"]) == {"circle", "square", "triangle"}
    events = read_status(out / "status.json")
    assert events[-1]["status"] == "SUCCESS"
    assert set(events[-1]["kpi"]) == {"test_mAP", "test_mAP50"}
    dets = json.loads((out / "detections.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0])
    assert (out / "experiment.yaml").is_file()


def test_evaluate_conf_threshold_filters(trained) -> None:
    args, ckpt = trained
    spec = load_spec(None, [*args, f"evaluate.checkpoint={ckpt}", "evaluate.conf_threshold=0.99"])
    evaluate.run(spec)
    dets = json.loads((Path(spec.results_dir) / "evaluate" / "detections.json").read_text())
    assert all(d["score"] >= 0.99 for d in dets)


def test_spec_model_section_differs_checkpoint_wins(trained, caplog: pytest.LogCaptureFixture) -> None:
    args, ckpt = trained
    # a TAO evaluate template full of default model fields must work on this non-default checkpoint
    defaults = [a for a in args if not a.startswith("model.")]
    spec = load_spec(None, [*defaults, f"evaluate.checkpoint={ckpt}", "model.num_select=10"])
    with caplog.at_level("WARNING"):
        result = evaluate.run(spec)
    assert "hidden_dim" in caplog.text and "256" in caplog.text and "32" in caplog.text
    assert result.images == 8


def test_inference_outputs(trained) -> None:
    args, ckpt = trained
    spec = load_spec(None, [*args, f"inference.checkpoint={ckpt}", "inference.conf_threshold=0.0"])
    result = inference.run(spec)
    out = Path(spec.results_dir) / "inference"
    annotated = sorted((out / "images_annotated").glob("*.jpg"))
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(annotated) == len(labels) == 8 == result.images
    with Image.open(annotated[0]) as im:
        assert im.size == (64, 64)
    row = labels[0].read_text().splitlines()[0].split()
    assert len(row) == 16 and row[0] in {"circle", "square", "triangle"}
    x1, y1, x2, y2 = map(float, row[4:8])
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == result.detections and dets[0]["bbox"][2] >= 0


def test_inference_classmap_too_short(trained, tmp_path: Path) -> None:
    args, ckpt = trained
    classmap = tmp_path / "classmap.txt"
    classmap.write_text("circle\n")
    spec = load_spec(
        None, [*args, f"inference.checkpoint={ckpt}", f"dataset.infer_data_sources.classmap={classmap}"]
    )
    with pytest.raises(DataError, match="names 1 classes"):
        inference.run(spec)


def test_not_a_checkpoint(trained, tmp_path: Path) -> None:
    args, _ = trained
    bogus = tmp_path / "model.pth"
    bogus.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        evaluate.run(load_spec(None, [*args, f"evaluate.checkpoint={bogus}"]))


def test_missing_checkpoint_field(trained) -> None:
    args, _ = trained
    with pytest.raises(SpecError, match=r"evaluate\.checkpoint"):
        evaluate.run(load_spec(None, [*args, "evaluate.checkpoint=???"]))


def test_predict_api_accepts_paths_pil_and_arrays(trained, tiny_data: dict) -> None:
    from ddetr import DeformableDETR

    _, ckpt = trained
    model = DeformableDETR.from_checkpoint(ckpt)
    path = sorted(Path(tiny_data["val"]["image_dir"]).glob("*.jpg"))[0]
    with Image.open(path) as im:
        pil = im.convert("RGB")
    results = model.predict([path, pil, np.asarray(pil)], conf_threshold=0.0)
    assert len(results) == 3
    for det in results:
        assert det.boxes.shape[1] == 4 and len(det.class_names) == len(det) == det.labels.numel()
        assert set(det.class_names) <= {"circle", "square", "triangle"}
        assert (det.boxes[:, 2] <= 64.0 + 1e-3).all()
    assert np.allclose(results[0].scores.numpy(), results[1].scores.numpy(), atol=1e-5)
    single = model.predict(str(path))
    assert isinstance(single, list) and len(single) == 1
