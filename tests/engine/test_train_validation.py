"""Training applies the rules of ``ddetr dataset`` (data/check.py) before its first step.

Each case is a real COCO json with real image files written by the test; ``ddetr dataset``'s checker and the
training data module must agree: errors stop both (training in one line with the count and examples),
warnings are logged once per kind with their count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from ddetr.data.check import Split, check_splits
from ddetr.engine.datamodule import DetectionDataModule
from ddetr.errors import DataError
from ddetr.spec.load import load_spec
from ddetr.spec.sections import Spec
from ddetr.tasks import train

NUM_CLASSES = 3


def _dataset(folder: Path, name: str, edit=None, n: int = 4) -> tuple[str, str]:
    """``n`` 40x30 PNG images and a COCO json with one box each; ``edit(data)`` breaks it."""
    images = folder / name
    images.mkdir(parents=True)
    data: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    for i in range(n):
        Image.new("RGB", (40, 30), (i * 40, 90, 160)).save(images / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 30})
        data["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1 + i % 2,
                "bbox": [5, 5, 10, 8],
                "area": 80,
                "iscrowd": 0,
            }
        )
    if edit is not None:
        edit(data)
    json_file = folder / f"{name}.json"
    json_file.write_text(json.dumps(data))  # NaN and Infinity are written as JSON's usual extension
    return str(images), str(json_file)


def _spec(train_pair: tuple[str, str], val_pair: tuple[str, str]) -> Spec:
    return Spec.model_validate(
        {
            "dataset": {
                "num_classes": NUM_CLASSES,
                "batch_size": 1,
                "workers": 0,
                "train_data_sources": [{"image_dir": train_pair[0], "json_file": train_pair[1]}],
                "val_data_sources": [{"image_dir": val_pair[0], "json_file": val_pair[1]}],
            }
        }
    )


def _nan_box(data: dict) -> None:
    data["annotations"][1]["bbox"] = [5, float("nan"), 10, 8]
    data["annotations"][2]["bbox"] = [5, 5, float("inf"), 8]


def _duplicate_id(data: dict) -> None:
    data["images"][1]["id"] = data["images"][0]["id"]


def _wrong_size(data: dict) -> None:
    data["images"][2]["width"] = 400


CASES = {
    "nan_inf_box": (_nan_box, "bad_annotation", 2, "bbox [5.0, nan"),
    "duplicate_image_id": (_duplicate_id, "duplicate_image_id", 1, "id 1 x2"),
    "size_mismatch": (_wrong_size, "size_mismatch", 1, "2.png: json 400x30, file 40x30"),
}


@pytest.mark.parametrize("case", CASES)
def test_train_refuses_what_dataset_refuses(tmp_path: Path, case: str) -> None:
    edit, kind, count, example = CASES[case]
    train_pair = _dataset(tmp_path, "train", edit)
    val_pair = _dataset(tmp_path, "val")

    # ddetr dataset: the same kind, as an error
    (report,) = check_splits([Split("train", "dataset.train_data_sources", [train_pair])], NUM_CLASSES)
    errors = {p.kind: p for p in report.problems.values() if p.severity == "error"}
    assert set(errors) == {kind} and errors[kind].count == count

    # training: refused in one line, with the count and an example
    with pytest.raises(DataError) as err:
        DetectionDataModule(_spec(train_pair, val_pair))
    message = str(err.value)
    assert "\n" not in message
    assert "error(s)" in message and f": {count}" in message and example in message


@pytest.mark.parametrize("case", CASES)
def test_validation_split_is_checked_too(tmp_path: Path, case: str) -> None:
    edit = CASES[case][0]
    with pytest.raises(DataError, match=r"dataset\.val_data_sources|val\.json"):
        DetectionDataModule(_spec(_dataset(tmp_path, "train"), _dataset(tmp_path, "val", edit)))


def test_train_task_stops_before_any_step(
    tmp_path: Path, tiny_overrides: Callable[[dict, Path], list[str]]
) -> None:
    train_pair = _dataset(tmp_path, "train", _duplicate_id)
    val_pair = _dataset(tmp_path, "val")
    classmap = tmp_path / "classmap.txt"
    classmap.write_text("a\nb\nc\n")
    data = {
        "train": {"image_dir": train_pair[0], "json_file": train_pair[1]},
        "val": {"image_dir": val_pair[0], "json_file": val_pair[1]},
        "classmap": str(classmap),
    }
    results = tmp_path / "results"
    args = [*tiny_overrides(data, results), "dataset.batch_size=1", "train.num_epochs=1"]
    with pytest.raises(DataError, match="image ids listed more than once: 1"):
        train.run(load_spec(None, args))
    assert not list((results / "train").glob("*.pth"))


def test_warnings_are_logged_once_with_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def crossing(data: dict) -> None:
        for ann in data["annotations"][:3]:
            ann["bbox"] = [30, 5, 20, 8]  # 10 px past the right border of a 40 px image

    spec = _spec(_dataset(tmp_path, "train", crossing), _dataset(tmp_path, "val"))
    with caplog.at_level(logging.WARNING, logger="ddetr.data.check"):
        module = DetectionDataModule(spec)
    assert len(module.train_set) == 4
    crossing_lines = [r.getMessage() for r in caplog.records if "crossing the image border" in r.getMessage()]
    assert len(crossing_lines) == 1 and ": 3 (e.g." in crossing_lines[0]


def test_training_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes come from the file headers: no image is decoded before training starts."""
    spec = _spec(_dataset(tmp_path, "train"), _dataset(tmp_path, "val"))

    def no_decoding(self: Image.Image):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    module = DetectionDataModule(spec)
    assert len(module.train_set) == 4 and len(module.val_set) == 4
