"""A COCO ``file_name`` that leaves image_dir is refused before anything is opened, in training data,
``ddetr dataset`` and calibration alike (one check: ``annotations.check_file_name``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ddetr.cli import main
from ddetr.data.annotations import check_file_name
from ddetr.data.calibration import list_calibration_images
from ddetr.data.coco import CocoDetection
from ddetr.errors import DataError

ESCAPING = ["../outside/secret.jpg", "../../etc/passwd", "/etc/passwd", "sub/../../outside/secret.jpg",
            "..", "C:\\Windows\\win.ini", "..\\outside\\secret.jpg", "", "a\x00b.jpg"]  # fmt: skip
INSIDE = ["a.jpg", "sub/a.jpg", "./a.jpg", "sub/../a.jpg", "..a.jpg", "a..jpg"]


@pytest.mark.parametrize("name", ESCAPING)
def test_escaping_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(DataError, match=r"'ann\.json': images\[3\] \(id 17\) has file_name") as err:
        check_file_name("ann.json", 3, {"id": 17, "file_name": name})
    assert repr(name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", INSIDE)
def test_names_inside_are_kept(name: str) -> None:
    assert check_file_name("ann.json", 0, {"id": 1, "file_name": name}) == name


def _hostile_dataset(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """image_dir with one good image, a real image outside it, and a json listing both."""
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(images / "good.jpg")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "outside" / "secret.jpg")
    json_file = tmp_path / "ann.json"
    json_file.write_text(
        json.dumps({
            "images": [{"id": 1, "file_name": "good.jpg", "width": 32, "height": 32},
                       {"id": 2, "file_name": name, "width": 32, "height": 32}],
            "annotations": [{"id": i, "image_id": i, "bbox": [2, 2, 10, 10], "category_id": 1} for i in (1, 2)],
            "categories": [{"id": 1, "name": "a"}],
        })
    )  # fmt: skip
    return images, json_file


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path PIL is asked to open."""
    seen: list[str] = []
    real = Image.open

    def spy(fp, *args, **kwargs):
        seen.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return seen


@pytest.mark.parametrize("name", ["../outside/secret.jpg", "ABSOLUTE"])
def test_training_data_refuses_and_opens_nothing_outside(
    tmp_path: Path, name: str, opened: list[str]
) -> None:
    name = str(tmp_path / "outside" / "secret.jpg") if name == "ABSOLUTE" else name
    images, json_file = _hostile_dataset(tmp_path, name)
    with pytest.raises(DataError, match=r"ann\.json': images\[1\] \(id 2\) has file_name"):
        CocoDetection([(str(images), str(json_file))], num_classes=2, train=True)
    with pytest.raises(DataError, match=r"images\[1\] \(id 2\)"):
        list_calibration_images(str(images), str(json_file))
    assert not [p for p in opened if "secret" in p]


def test_dataset_action_reports_it_and_opens_nothing_outside(
    tmp_path: Path, opened: list[str], capsys: pytest.CaptureFixture
) -> None:
    images, json_file = _hostile_dataset(tmp_path, "../outside/secret.jpg")
    results = tmp_path / "results"
    source = f"{{image_dir: {images}, json_file: {json_file}}}"
    assert main(["dataset", f"results_dir={results}", "dataset.num_classes=2",
                 f"dataset.val_data_sources=[{source}]"]) == 2  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    report = json.loads((results / "dataset" / "dataset_report.json").read_text())
    problems = report["splits"]["val"]["problems"]
    assert any(
        "images[1] (id 2) has file_name '../outside/secret.jpg'" in " ".join(p["examples"]) for p in problems
    )
    assert not [p for p in opened if "secret" in p]
