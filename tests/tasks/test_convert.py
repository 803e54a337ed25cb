"""``ddetr convert`` as a user runs it (a real subprocess): help, summary, one-line errors, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from cli_helpers import one_error_line, run_ddetr


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (64, 48), (10, 200, 90)).save(images / f"{name}.jpg")
    (labels / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.25 0.25 0.125 0.125\n")
    (labels / "b.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    return images, labels


def test_help_explains_the_formats_and_flags() -> None:
    proc = run_ddetr("convert", "--help")
    assert proc.returncode == 0, proc.stderr
    for text in ("{voc,kitti,yolo}", "--images DIR", "--labels DIR", "--classes FILE", "-o OUT.json",
                 "xmin - 1", "DontCare", "cx cy w h", "dataset.num_classes", "--skip-unlisted"):  # fmt: skip
        assert text in proc.stdout
    assert "convert" in run_ddetr("--help").stdout


def test_summary_and_classmap(tmp_path: Path) -> None:
    images, labels = _dataset(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [leaf, stem]\n")
    out, classmap = tmp_path / "coco" / "train.json", tmp_path / "classmap.txt"
    proc = run_ddetr("convert", "yolo", "--images", images, "--labels", labels, "--classes", tmp_path / "data.yaml",
                "-o", out, "--classmap", classmap)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "3 images (1 without a label file" in lines[0] and "3 boxes" in lines[0]
    assert lines[1].split() == ["1", "leaf", "1"] and lines[2].split() == ["2", "stem", "2"]
    assert "spec: dataset.num_classes: 3" in proc.stdout
    assert f"spec: dataset.infer_data_sources.classmap: {classmap}" in proc.stdout
    assert classmap.read_text() == "leaf\nstem\n"
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["leaf", "stem"]
    assert coco["annotations"][0]["bbox"] == [24.0, 12.0, 16.0, 24.0]


def test_bad_label_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    images, labels = _dataset(tmp_path)
    (labels / "c.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    out = tmp_path / "train.json"
    line = one_error_line(run_ddetr("convert", "yolo", "--images", images, "--labels", labels, "-o", out))
    assert f"{labels / 'c.txt'}:2: expected 5 fields" in line
    assert not out.exists() and not list(tmp_path.glob(".train.json*"))

    line = one_error_line(run_ddetr("convert", "kitti", "--images", images, "--labels", labels, "-o", out,
                                "--drop-difficult"))  # fmt: skip
    assert "--drop-difficult applies to VOC labels only" in line
    assert "invalid choice" in one_error_line(run_ddetr("convert", "coco", "--images", images, "--labels", labels,
                                                    "-o", out))  # fmt: skip
    assert "unrecognized arguments: extra=1" in one_error_line(
        run_ddetr("convert", "yolo", "--images", images, "--labels", labels, "-o", out, "extra=1")
    )
