"""data/formats.py and ``ddetr convert``: VOC / KITTI / YOLO labels -> COCO.

Round trips use the real BCCD validation split: its COCO json is written out as VOC XML, KITTI and YOLO label
files here, converted back with ``ddetr convert``, and compared box by box with the original.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from asset_paths import BCCD
from ddetr.cli import main
from ddetr.data.formats import (
    convert_labels,
    kitti_to_coco,
    read_class_names,
    voc_to_coco,
    yolo_to_coco,
)
from ddetr.errors import DataError

# ----------------------------------------------------------------------------- writers (test side)


def _bccd_val(tmp_path: Path) -> tuple[dict, Path]:
    """BCCD val json and a folder of symlinks to its images."""
    data = json.loads((BCCD / "annotations" / "val.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    for rec in data["images"]:
        (images / rec["file_name"]).symlink_to(BCCD / "images" / rec["file_name"])
    return data, images


def _by_image(data: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {rec["id"]: [] for rec in data["images"]}
    for ann in data["annotations"]:
        out[ann["image_id"]].append(ann)
    return out


def _write_label_files(
    data: dict, folder: Path, suffix: str, text: Callable[[dict, list[dict]], str]
) -> Path:
    """One label file per image, ``<image stem><suffix>``, holding ``text(image record, its annotations)``."""
    folder.mkdir()
    by_image = _by_image(data)
    for rec in data["images"]:
        (folder / (Path(rec["file_name"]).stem + suffix)).write_text(text(rec, by_image[rec["id"]]))
    return folder


def _write_voc(data: dict, folder: Path) -> Path:
    """One Pascal VOC XML per image: 1-based inclusive pixel indices (xmin = x + 1, xmax = x + w)."""
    names = {c["id"]: c["name"] for c in data["categories"]}

    def xml(rec: dict, anns: list[dict]) -> str:
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{a['bbox'][0] + 1:g}</xmin><ymin>{a['bbox'][1] + 1:g}</ymin>"
            f"<xmax>{a['bbox'][0] + a['bbox'][2]:g}</xmax><ymax>{a['bbox'][1] + a['bbox'][3]:g}</ymax></bndbox>"
            "</object>\n"
            for a in anns
        )
        return (
            f"<annotation>\n<folder>JPEGImages</folder><filename>{rec['file_name']}</filename>\n"
            f"<size><width>{rec['width']}</width><height>{rec['height']}</height><depth>3</depth></size>\n"
            f"{objects}</annotation>\n"
        )

    return _write_label_files(data, folder, ".xml", xml)


def _write_lines(data: dict, folder: Path, line: Callable[[dict, dict], str]) -> Path:
    """One ``<image stem>.txt`` per image: ``line(image record, annotation)`` for each of its annotations."""
    return _write_label_files(
        data, folder, ".txt", lambda rec, anns: "\n".join(line(rec, a) for a in anns) + "\n"
    )


def _write_kitti(data: dict, folder: Path) -> Path:
    """KITTI label files: type, 3 zeros, x1 y1 x2 y2 in pixels, 7 zeros (3D fields)."""
    names = {c["id"]: c["name"] for c in data["categories"]}

    def line(rec: dict, ann: dict) -> str:
        x, y, w, h = ann["bbox"]
        return f"{names[ann['category_id']]} 0.00 0 0.00 {x!r} {y!r} {x + w!r} {y + h!r} " + " ".join(
            ["0.00"] * 7
        )

    return _write_lines(data, folder, line)


def _write_yolo(data: dict, folder: Path) -> Path:
    """YOLO label files: class index (category id - 1), then cx cy w h normalised, 6 decimals as tools write."""

    def line(rec: dict, ann: dict) -> str:
        (x, y, w, h), width, height = ann["bbox"], rec["width"], rec["height"]
        return (
            f"{ann['category_id'] - 1} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
            f"{w / width:.6f} {h / height:.6f}"
        )

    return _write_lines(data, folder, line)


def _boxes(data: dict) -> list[tuple[str, str, list[float]]]:
    """(file name, class name, bbox) of every annotation, sorted: comparable across image/annotation ids."""
    files = {rec["id"]: rec["file_name"] for rec in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    found = [(files[a["image_id"]], names[a["category_id"]], a["bbox"]) for a in data["annotations"]]
    return sorted(found, key=lambda item: (item[0], item[1], [round(v, 2) for v in item[2]]))


def _categories(data: dict) -> list[tuple[int, str]]:
    return sorted((c["id"], c["name"]) for c in data["categories"])


# ----------------------------------------------------------------------------- round trips on BCCD


@pytest.mark.parametrize("fmt", ["voc", "kitti", "yolo"])
def test_bccd_round_trip_through_the_cli(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    original, images = _bccd_val(tmp_path)
    writer = {"voc": _write_voc, "kitti": _write_kitti, "yolo": _write_yolo}[fmt]
    labels = writer(original, tmp_path / "labels")
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{name}\n" for _, name in _categories(original)))
    out = tmp_path / "out" / "val.json"
    argv = ["convert", fmt, "--images", str(images), "--labels", str(labels), "--classes", str(classes)]
    assert main([*argv, "-o", str(out)]) == 0

    converted = json.loads(out.read_text())
    assert _categories(converted) == _categories(original) == [(1, "Platelets"), (2, "RBC"), (3, "WBC")]
    assert sorted((r["file_name"], r["width"], r["height"]) for r in converted["images"]) == sorted(
        (r["file_name"], r["width"], r["height"]) for r in original["images"]
    )
    got, want = _boxes(converted), _boxes(original)
    assert len(got) == len(want) == 1137
    for (g_file, g_name, g_box), (w_file, w_name, w_box) in zip(got, want):
        assert (g_file, g_name) == (w_file, w_name)
        if fmt == "yolo":  # 6 decimals of a 640-pixel side: well under a thousandth of a pixel
            assert g_box == pytest.approx(w_box, abs=1e-3)
        else:  # VOC's 1-based convention and KITTI's corners give back the exact pixels
            assert g_box == w_box
    assert all(
        a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in converted["annotations"]
    )

    printed = capsys.readouterr().out
    counts = Counter(name for _, name, _ in want)
    for name, count in counts.items():
        assert f"{name}  " in printed and f" {count}\n" in printed
    assert "dataset.num_classes: 4" in printed
    assert f"dataset.infer_data_sources.classmap: {classes}" in printed


def test_category_ids_follow_the_classes_file_order_and_default_to_sorted_names(tmp_path: Path) -> None:
    original, images = _bccd_val(tmp_path)
    labels = _write_voc(original, tmp_path / "voc")
    reordered = tmp_path / "classes.txt"
    reordered.write_text("WBC\n\nRBC\nPlatelets\n")  # blank lines are ignored, as in a classmap
    conv = voc_to_coco(images, labels, read_class_names(reordered))
    assert _categories(conv.coco) == [(1, "WBC"), (2, "RBC"), (3, "Platelets")]
    assert [(f, n) for f, n, _ in _boxes(conv.coco)] == [(f, n) for f, n, _ in _boxes(original)]
    default = voc_to_coco(images, labels)
    assert default.class_names == ["Platelets", "RBC", "WBC"] and default.num_classes == 4


# ----------------------------------------------------------------------------- small hand-written cases


def _image(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


def _txt(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _kitti(name: str, x1: float, y1: float, x2: float, y2: float, score: str = "") -> str:
    return f"{name} 0.00 0 -1.57 {x1} {y1} {x2} {y2} 1.5 1.6 3.9 1.0 1.7 20.0 -1.5 {score}".strip()


def test_kitti_dontcare_case_and_score_column(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.jpg")  # no label file: kept without boxes
    _txt(
        tmp_path / "lab" / "a.txt",
        _kitti("Car", 1, 2, 11.5, 12),
        _kitti("DontCare", 0, 0, 40, 30),
        _kitti("pedestrian", 5, 5, 9, 25, score="0.93"),
        "",
        _kitti("CAR", 20, 10, 30, 20),
    )
    conv = kitti_to_coco(tmp_path / "img", tmp_path / "lab")
    assert conv.class_names == ["car", "pedestrian"]  # lower case without a class list
    assert conv.skipped == {"DontCare": 1} and conv.images_without_labels == 1
    assert [r["file_name"] for r in conv.coco["images"]] == ["a.png", "b.jpg"]
    assert [(a["category_id"], a["bbox"]) for a in conv.coco["annotations"]] == [
        (1, [1.0, 2.0, 10.5, 10.0]),
        (2, [5.0, 5.0, 4.0, 20.0]),
        (1, [20.0, 10.0, 10.0, 10.0]),
    ]
    named = kitti_to_coco(tmp_path / "img", tmp_path / "lab", ["Pedestrian", "Car"])
    assert named.class_names == ["Pedestrian", "Car"]  # the list's spelling, compared case-insensitively
    assert [a["category_id"] for a in named.coco["annotations"]] == [2, 1, 2]


def test_kitti_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    label = _txt(tmp_path / "lab" / "a.txt", _kitti("Car", 1, 2, 10, 12), "Car 0 0 0 1 2 3")
    with pytest.raises(DataError, match=rf"{label}:2: expected 15 fields.*got 7"):
        kitti_to_coco(tmp_path / "img", tmp_path / "lab")
    _txt(label, _kitti("Car", 1, "two", 10, 12))
    with pytest.raises(DataError, match=rf"{label}:1: field 6 is not a number: 'two'"):
        kitti_to_coco(tmp_path / "img", tmp_path / "lab")


def test_unknown_classes_fail_or_are_skipped(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    label = _txt(tmp_path / "lab" / "a.txt", _kitti("Car", 1, 2, 10, 12), _kitti("Tram", 1, 2, 10, 12))
    with pytest.raises(DataError, match=rf"{label}:2: unknown class 'Tram'"):
        kitti_to_coco(tmp_path / "img", tmp_path / "lab", ["car"])
    conv = convert_labels("kitti", tmp_path / "img", tmp_path / "lab", ["car"], skip_unlisted=True)
    assert len(conv.coco["annotations"]) == 1 and conv.skipped == {"unlisted class": 1}

    _txt(tmp_path / "yolo" / "a.txt", "0 0.5 0.5 0.2 0.2", "3 0.5 0.5 0.2 0.2")
    with pytest.raises(DataError, match=r"a\.txt:2: unknown class id 3: the class names list 2 classes"):
        yolo_to_coco(tmp_path / "img", tmp_path / "yolo", ["x", "y"])


def test_yolo_names_from_data_yaml_classes_txt_or_indices(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "sub" / "a.jpg", (200, 100))
    _txt(tmp_path / "lab" / "sub" / "a.txt", "1 0.5 0.5 0.5 0.2", "0 0.1 0.2 0.2 0.2")
    assert yolo_to_coco(tmp_path / "img", tmp_path / "lab").class_names == ["class_0", "class_1"]

    data_yaml = _txt(tmp_path / "data.yaml", "path: .", "names:", "  0: cat", "  1: dog")
    conv = yolo_to_coco(tmp_path / "img", tmp_path / "lab", read_class_names(data_yaml))
    assert conv.class_names == ["cat", "dog"]
    assert conv.coco["images"] == [{"id": 1, "file_name": "sub/a.jpg", "width": 200, "height": 100}]
    assert [(a["category_id"], a["bbox"]) for a in conv.coco["annotations"]] == [
        (2, pytest.approx([50.0, 40.0, 100.0, 20.0])),
        (1, pytest.approx([0.0, 10.0, 40.0, 20.0])),
    ]
    _txt(tmp_path / "list.yaml", "names: [cat, dog, bird]")
    assert read_class_names(tmp_path / "list.yaml") == ["cat", "dog", "bird"]

    _txt(tmp_path / "lab" / "classes.txt", "red", "green")  # LabelImg's list beside the labels
    assert yolo_to_coco(tmp_path / "img", tmp_path / "lab").class_names == ["red", "green"]


def test_yolo_malformed_lines(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg")
    label = _txt(tmp_path / "lab" / "a.txt", "0 0.5 0.5 0.2")
    with pytest.raises(DataError, match=rf"{label}:1: expected 5 fields 'class cx cy w h', got 4"):
        yolo_to_coco(tmp_path / "img", tmp_path / "lab")
    _txt(label, "0 0.5 0.5 0.2 0.2", "1.5 0.5 0.5 0.2 0.2")
    with pytest.raises(DataError, match=rf"{label}:2: class must be an index"):
        yolo_to_coco(tmp_path / "img", tmp_path / "lab")
    _txt(label, "0 0.5 nan 0.2 0.2")
    with pytest.raises(DataError, match=rf"{label}:1: cy is not a finite number"):
        yolo_to_coco(tmp_path / "img", tmp_path / "lab")


def test_boxes_outside_the_image_are_clipped_counted_or_refused(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", (100, 50))
    label = _txt(
        tmp_path / "lab" / "a.txt",
        _kitti("car", -0.5, 0, 50, 50.5),  # within the 1 px tolerance: clipped, not counted
        _kitti("car", 80, 10, 110, 40),  # 10 px past the right edge: clipped and counted
        _kitti("car", 5, 5, 5, 20),  # zero width: left out and counted
    )
    conv = kitti_to_coco(tmp_path / "img", tmp_path / "lab")
    assert [a["bbox"] for a in conv.coco["annotations"]] == [[0.0, 0.0, 50.0, 50.0], [80.0, 10.0, 20.0, 30.0]]
    assert conv.clipped == 1 and conv.examples["clipped"] == [f"{label}:2 (by 10 px)"]
    assert conv.skipped == {"zero size": 1}
    assert kitti_to_coco(tmp_path / "img", tmp_path / "lab", tolerance=20).clipped == 0

    _txt(label, _kitti("car", 120, 10, 130, 40))
    with pytest.raises(DataError, match=rf"{label}:1: box .* lies outside the 100x50 image"):
        kitti_to_coco(tmp_path / "img", tmp_path / "lab")
    _txt(label, _kitti("car", 30, 10, 20, 40))
    with pytest.raises(DataError, match=rf"{label}:1: box corners are inverted"):
        kitti_to_coco(tmp_path / "img", tmp_path / "lab")


def test_label_without_image_and_unreadable_image(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    label = _txt(tmp_path / "lab" / "missing.txt", "0 0.5 0.5 0.2 0.2")
    with pytest.raises(DataError, match=rf"{label}: label file without an image: no missing"):
        yolo_to_coco(tmp_path / "img", tmp_path / "lab")
    label.unlink()
    _txt(tmp_path / "lab" / "a.txt", "0 0.5 0.5 0.2 0.2")
    broken = tmp_path / "img" / "z.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(DataError, match=rf"{broken}: image cannot be read"):
        yolo_to_coco(tmp_path / "img", tmp_path / "lab")


def _voc(path: Path, filename: str, *objects: str, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{''.join(objects)}</annotation>"
    )
    return path


def _obj(name: str, box: tuple[float, float, float, float], difficult: int = 0) -> str:
    tags = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{tags}</bndbox></object>"


def test_voc_difficult_kept_or_dropped_and_one_based_pixels(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg")
    _voc(tmp_path / "ann" / "a.xml", "a.jpg", _obj("dog", (1, 1, 40, 30)), _obj("cat", (11, 6, 20, 15), 1))
    conv = voc_to_coco(tmp_path / "img", tmp_path / "ann")
    assert [(a["bbox"], a["difficult"]) for a in conv.coco["annotations"]] == [
        ([0.0, 0.0, 40.0, 30.0], 0),  # the whole 40x30 image: pixels 1..40 x 1..30
        ([10.0, 5.0, 10.0, 10.0], 1),
    ]
    dropped = convert_labels("voc", tmp_path / "img", tmp_path / "ann", drop_difficult=True)
    assert len(dropped.coco["annotations"]) == 1 and dropped.skipped == {"difficult": 1}
    assert dropped.class_names == ["cat", "dog"]  # names come from every object, difficult ones included


def test_voc_errors_name_the_file_and_object(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg")
    xml = _voc(tmp_path / "ann" / "a.xml", "a.jpg", _obj("dog", (1, 1, 10, 10)), _obj("cow", (1, 1, 10, 10)))
    with pytest.raises(DataError, match=rf"{xml}: object 2: unknown class 'cow'"):
        voc_to_coco(tmp_path / "img", tmp_path / "ann", ["dog"])
    _voc(
        xml,
        "a.jpg",
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox></object>",
    )
    with pytest.raises(DataError, match=rf"{xml}: object 1 \(dog\): <ymax> is not a number"):
        voc_to_coco(tmp_path / "img", tmp_path / "ann")
    xml.write_text("<annotation><filename>a.jpg</filename>\n<object>\n</annotation>")
    with pytest.raises(DataError, match=rf"{xml}:3: not valid XML"):
        voc_to_coco(tmp_path / "img", tmp_path / "ann")
    _voc(xml, "elsewhere.jpg", _obj("dog", (1, 1, 10, 10)))
    _voc(tmp_path / "ann" / "b.xml", "b.jpg", _obj("dog", (1, 1, 10, 10)))
    with pytest.raises(DataError, match=r"b\.xml: label file without an image \(<filename> 'b\.jpg'"):
        voc_to_coco(tmp_path / "img", tmp_path / "ann")


def test_voc_size_mismatch_uses_the_image_and_is_counted(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg", (40, 30))
    _voc(tmp_path / "ann" / "a.xml", "a.jpg", _obj("dog", (1, 1, 10, 10)), size=(30, 40))
    conv = voc_to_coco(tmp_path / "img", tmp_path / "ann")
    assert conv.size_mismatch == 1 and conv.coco["images"][0]["width"] == 40


def test_class_names_file_errors(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"classes\.txt:3: class 'a' is listed twice \(first at .*classes\.txt:1\)"
    ):
        read_class_names(_txt(tmp_path / "classes.txt", "a", "b", "a"))
    with pytest.raises(DataError, match="expected a 'names' list"):
        read_class_names(_txt(tmp_path / "data.yaml", "nc: 2"))
    with pytest.raises(DataError, match="lists no class"):
        read_class_names(_txt(tmp_path / "empty.txt", ""))
