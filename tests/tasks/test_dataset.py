"""``ddetr dataset``: every data source of a spec checked on real files (BCCD, and broken copies of it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from asset_paths import BCCD
from ddetr.cli import main
from ddetr.status import read_status

DDETR = Path(sys.executable).parent / "ddetr"


def _source(image_dir: Path, json_file: Path) -> str:
    return f"{{image_dir: {image_dir}, json_file: {json_file}}}"


def _report(results: Path) -> dict:
    return json.loads((results / "dataset" / "dataset_report.json").read_text())


def _subset(tmp_path: Path, count: int = 10) -> tuple[Path, Path, dict]:
    """The first ``count`` BCCD val images copied (real JPEG files) with their annotations."""
    data = json.loads((BCCD / "annotations" / "val.json").read_text())
    data["images"] = data["images"][:count]
    kept = {rec["id"] for rec in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    images = tmp_path / "images"
    images.mkdir()
    for rec in data["images"]:
        shutil.copy(BCCD / "images" / rec["file_name"], images / rec["file_name"])
    json_file = tmp_path / "val.json"
    json_file.write_text(json.dumps(data))
    return images, json_file, data


def test_bccd_spec_sources_pass_with_the_right_counts(tmp_path: Path) -> None:
    ann, results = BCCD / "annotations", tmp_path / "results"
    classmap = tmp_path / "classmap.txt"
    classmap.write_text("Platelets\nRBC\nWBC\n")
    argv = [
        "dataset",
        f"results_dir={results}",
        "dataset.num_classes=4",
        f"dataset.train_data_sources=[{_source(BCCD / 'images', ann / 'train.json')}]",
        f"dataset.val_data_sources=[{_source(BCCD / 'images', ann / 'val.json')}]",
        f"dataset.test_data_sources={_source(BCCD / 'images', ann / 'test.json')}",
        f"dataset.infer_data_sources={{image_dir: [{BCCD / 'images'}], classmap: {classmap}}}",
    ]
    assert main(argv) == 0
    report = _report(results)
    assert report["usable"] and report["errors"] == 0 and report["num_classes"] == 4
    assert report["classes"] == [
        {"id": 1, "name": "Platelets"},
        {"id": 2, "name": "RBC"},
        {"id": 3, "name": "WBC"},
    ]
    for split in ("train", "val", "test"):
        data = json.loads((ann / f"{split}.json").read_text())
        got = report["splits"][split]
        counts = Counter(a["category_id"] for a in data["annotations"])
        assert got["images"] == len(data["images"]) and got["boxes"] == len(data["annotations"])
        assert {c["id"]: c["boxes"] for c in got["per_class"]} == dict(counts)
        areas = [a["area"] for a in data["annotations"]]
        assert got["area"] == {
            "small": sum(a < 32**2 for a in areas),
            "medium": sum(32**2 <= a < 96**2 for a in areas),
            "large": sum(a >= 96**2 for a in areas),
        }
        assert got["problems"] == [] and got["images_without_annotations"] == 0
    assert report["splits"]["infer"]["images"] == len(list((BCCD / "images").glob("*.jpg")))
    with Image.open(results / "dataset" / "dataset_report.png") as plot:
        assert plot.format == "PNG" and plot.width > 400 and plot.height > 200
    events = read_status(results / "dataset" / "status.json")
    assert [e["status"] for e in events] == ["STARTED", "SUCCESS"]
    assert (results / "dataset" / "experiment.yaml").is_file()


def test_broken_copy_reports_both_errors_in_one_line_exit_2(tmp_path: Path) -> None:
    images, json_file, data = _subset(tmp_path)
    truncated = images / data["images"][3]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:4000])
    data["annotations"][5]["category_id"] = 7
    json_file.write_text(json.dumps(data))
    results = tmp_path / "results"
    proc = subprocess.run(
        [str(DDETR), "dataset", f"results_dir={results}", "dataset.num_classes=4",
         f"dataset.val_data_sources=[{_source(images, json_file)}]"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    report_path = results / "dataset" / "dataset_report.json"
    assert "2 errors" in errors[0] and str(report_path) in errors[0]
    problems = {p["kind"]: p for p in _report(results)["splits"]["val"]["problems"]}
    assert set(problems) == {"unreadable_image", "category_id_out_of_range"}
    assert problems["unreadable_image"]["count"] == 1
    assert problems["unreadable_image"]["examples"][0].startswith(f"{truncated.name}: OSError")
    assert problems["category_id_out_of_range"]["examples"] == [
        f"{data['images'][0]['file_name']}, annotation id {data['annotations'][5]['id']}: category_id 7"
    ]
    assert read_status(results / "dataset" / "status.json")[-1]["status"] == "FAILURE"


def test_warnings_only_is_usable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, json_file, data = _subset(tmp_path, count=6)
    first, second = data["images"][0]["id"], data["images"][1]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != second]  # image without boxes
    data["annotations"].append({"id": 9001, "image_id": first, "category_id": 2, "bbox": [600, 400, 80, 50]})
    data["annotations"].append({"id": 9002, "image_id": first, "category_id": 2, "bbox": [10, 10, 0, 5]})
    data["annotations"].append({"id": 9003, "image_id": 424242, "category_id": 2, "bbox": [10, 10, 5, 5]})
    json_file.write_text(json.dumps(data))
    results = tmp_path / "results"
    argv = ["dataset", f"results_dir={results}", "dataset.num_classes=10", "dataset.batch_size=2"]
    assert main([*argv, f"dataset.train_data_sources=[{_source(images, json_file)}]"]) == 0
    report = _report(results)
    kinds = {p["kind"]: p["count"] for p in report["splits"]["train"]["problems"]}
    assert kinds == {
        "box_crosses_border": 1,
        "degenerate_box": 1,
        "unknown_image_id": 1,
        "image_without_annotations": 1,
    }
    assert [p["kind"] for p in report["problems"]] == ["num_classes_unused"]
    assert report["usable"] and report["warnings"] == 5
    assert report["splits"]["train"]["images_without_annotations"] == 1
    assert "dataset.num_classes: 4" in report["problems"][0]["message"]
    assert "box_crosses_border" not in capsys.readouterr().out  # the tables go to stderr


def test_every_error_is_reported_not_only_the_first(tmp_path: Path) -> None:
    images, json_file, data = _subset(tmp_path, count=5)
    data["images"][1]["id"] = data["images"][0]["id"]  # duplicate id
    data["images"][2]["width"] = 320  # size differs from the file
    (images / data["images"][3]["file_name"]).unlink()  # missing file
    data["annotations"][0]["bbox"] = [1, 2, "x", 4]
    json_file.write_text(json.dumps(data))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    results = tmp_path / "results"
    argv = [
        "dataset",
        f"results_dir={results}",
        "dataset.num_classes=4",
        "dataset.batch_size=8",
        f"dataset.train_data_sources=[{_source(images, json_file)}]",
        f"dataset.val_data_sources=[{_source(images, empty)}]",
        f"dataset.test_data_sources={_source(images, tmp_path / 'nope.json')}",
        f"dataset.infer_data_sources={{image_dir: [{tmp_path / 'no_images'}]}}",
    ]
    assert main(argv) == 2
    report = _report(results)
    train = {p["kind"] for p in report["splits"]["train"]["problems"] if p["severity"] == "error"}
    assert train == {
        "duplicate_image_id",
        "size_mismatch",
        "missing_image",
        "bad_annotation",
        "too_few_images",
    }
    assert [p["kind"] for p in report["splits"]["val"]["problems"]] == ["empty_split"]
    assert [p["kind"] for p in report["splits"]["test"]["problems"]] == ["source_unreadable"]
    assert "nope.json" in report["splits"]["test"]["problems"][0]["examples"][0]
    assert [p["kind"] for p in report["splits"]["infer"]["problems"]] == ["source_unreadable"]
    assert report["errors"] == sum(s["errors"] for s in report["splits"].values()) >= 8


def test_classmap_checked_against_num_classes_and_names(tmp_path: Path) -> None:
    images, json_file, _ = _subset(tmp_path, count=2)
    classmap = tmp_path / "classmap.txt"
    classmap.write_text("Platelets\nWBC\n")
    results = tmp_path / "results"
    argv = [
        "dataset",
        f"results_dir={results}",
        "dataset.num_classes=4",
        f"dataset.val_data_sources=[{_source(images, json_file)}]",
        f"dataset.infer_data_sources={{image_dir: [{images}], classmap: {classmap}}}",
    ]
    assert main(argv) == 2
    problems = {p["kind"]: p for p in _report(results)["splits"]["infer"]["problems"]}
    assert set(problems) == {"classmap_short", "classmap_mismatch"}
    assert "names 2 classes but dataset.num_classes is 4" in problems["classmap_short"]["message"]
    assert problems["classmap_mismatch"]["examples"] == ["line 2: 'WBC', json category 2: 'RBC'"]


def test_no_source_set_is_a_spec_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", f"results_dir={tmp_path}"]) == 2
    assert "error: dataset: no data source is set" in capsys.readouterr().err
    assert not (tmp_path / "dataset").exists()
