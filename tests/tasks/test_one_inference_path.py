"""One inference path: Python ``predict``, ``ddetr inference`` and ``ddetr evaluate`` give the same detections.

For a trained checkpoint and for its ONNX export, the same images give identical boxes, scores and labels
(at the precision the detection files keep: boxes to 0.01 px, scores to 1e-5) through all three, and the
checkpoint's ``num_select`` is used when the spec leaves the model section at its defaults. ``evaluate``'s
detection file carries the image ids of the user's json (here deliberately not 1..N) and scores against it
with the COCO API to the mAP the action reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddetr.eval.coco import evaluate_detections
from ddetr.model.predict import predict_images
from ddetr.runtime import load_predictor
from ddetr.spec.load import load_spec
from ddetr.tasks import evaluate, inference, train


@pytest.fixture(scope="module")
def setup(tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1-epoch checkpoint, its ONNX export, and a copy of the val json with image ids 1000 + 7 * i."""
    from ddetr.deploy.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("one_path")
    result = train.run(load_spec(None, [*tiny_overrides(tiny_data, folder / "train"), "train.num_epochs=1"]))
    checkpoint = result.latest
    onnx_file = export_onnx(checkpoint, folder / "model.onnx", input_size=(64, 64)).onnx_file
    data = json.loads(Path(tiny_data["val"]["json_file"]).read_text())
    new_id = {im["id"]: 1000 + 7 * i for i, im in enumerate(data["images"])}
    for im in data["images"]:
        im["id"] = new_id[im["id"]]
    for ann in data["annotations"]:
        ann["image_id"] = new_id[ann["image_id"]]
    renumbered = folder / "val_renumbered.json"
    renumbered.write_text(json.dumps(data))
    images = sorted(Path(tiny_data["val"]["image_dir"]).glob("*.jpg"))
    return {
        "checkpoint": checkpoint,
        "onnx": onnx_file,
        "json": renumbered,
        "images": images,
        "folder": folder,
    }


def _args(setup: dict, tiny_data: dict, results: Path, action: str, model_file: Path) -> list[str]:
    """A spec that leaves the model section and preprocessing at their defaults (as a TAO deploy spec may)."""
    field = "checkpoint" if model_file.suffix == ".pth" else "trt_engine"
    val_dir = tiny_data["val"]["image_dir"]
    return [
        f"results_dir={results}",
        "dataset.num_classes=4",
        "dataset.batch_size=4",
        "dataset.workers=0",
        f"dataset.test_data_sources={{image_dir: {val_dir}, json_file: {setup['json']}}}",
        f"dataset.infer_data_sources={{image_dir: [{val_dir}]}}",
        f"{action}.{field}={model_file}",
        f"{action}.conf_threshold=0.0",
    ]


def _by_file(entries: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in entries:
        out.setdefault(Path(e["file_name"]).name, []).append((e["category_id"], tuple(e["bbox"]), e["score"]))
    return {name: sorted(rows) for name, rows in out.items()}


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_predict_inference_and_evaluate_agree(
    setup: dict, tiny_data: dict, kind: str, tmp_path: Path
) -> None:
    model_file = setup[kind]
    predictor = load_predictor(model_file)
    assert predictor.card.num_select == 10  # the checkpoint's, not the spec default (300)
    found = predict_images(predictor, setup["images"], conf_threshold=0.0, batch_size=4)
    python = {}
    for path, det in zip(setup["images"], found):
        python[path.name] = sorted((e["category_id"], tuple(e["bbox"]), e["score"]) for e in det.to_coco(0))
    assert all(len(rows) > 0 for rows in python.values())

    inference.run(
        load_spec(None, _args(setup, tiny_data, tmp_path, "inference", model_file), action="inference")
    )
    inferred = json.loads((tmp_path / "inference" / "detections.json").read_text())
    evaluate_result = evaluate.run(
        load_spec(None, _args(setup, tiny_data, tmp_path, "evaluate", model_file), action="evaluate")
    )
    evaluated = json.loads((tmp_path / "evaluate" / "detections.json").read_text())

    assert _by_file(inferred) == python
    assert _by_file(evaluated) == python
    # at most num_select per image (unnamed class 0 dropped): the card's value decided, not the spec's 300
    assert max(len(rows) for rows in python.values()) <= 10

    # evaluate's file speaks the user's image ids and scores against the user's json as reported
    ids = {e["image_id"] for e in evaluated}
    assert ids <= {1000 + 7 * i for i in range(len(setup["images"]))} and len(ids) == len(setup["images"])
    stats = evaluate_detections(str(setup["json"]), evaluated)
    assert stats[0] == pytest.approx(evaluate_result.test_mAP, abs=1e-4)
