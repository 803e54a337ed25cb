"""data/synthetic.py: deterministic, valid COCO, objects where the boxes say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ddetr.data.coco import CocoDetection
from ddetr.data.synthetic import generate_synthetic_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", num_train=6, num_val=3, image_size=(96, 80), seed=3)
    generate_synthetic_dataset(tmp_path / "b", num_train=6, num_val=3, image_size=(96, 80), seed=3)
    generate_synthetic_dataset(tmp_path / "c", num_train=6, num_val=3, image_size=(96, 80), seed=4)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 6 + 3 + 2 + 1 + 1
    assert fa == fb
    assert fa["images/train/000000.jpg"] != fc["images/train/000000.jpg"]
    assert a["num_classes"] == 4 and a["class_names"] == ["", "circle", "square", "triangle"]
    assert (tmp_path / "a" / "classmap.txt").read_text().split() == ["circle", "square", "triangle"]


def test_reuse_and_regenerate(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, num_train=3, num_val=2, image_size=(64, 64))
    js = tmp_path / "annotations" / "train.json"
    js.write_text("tampered")  # reused as-is when the parameters match
    generate_synthetic_dataset(tmp_path, num_train=3, num_val=2, image_size=(64, 64))
    assert js.read_text() == "tampered"
    generate_synthetic_dataset(tmp_path, num_train=4, num_val=2, image_size=(64, 64))
    assert len(json.loads(js.read_text())["images"]) == 4


def test_objects_are_where_boxes_say(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path, num_train=12, num_val=4, image_size=(128, 96), seed=1)
    coco = json.loads(Path(out["train"]["json_file"]).read_text())
    per_image: dict[int, int] = {}
    colour_channel = {1: 0, 2: 1, 3: 2}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        x, y, w, h = ann["bbox"]
        assert 0.25 * 96 - 1 <= w <= 0.50 * 96 + 1 and w == h  # the default object_size
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96
        img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        arr = np.asarray(Image.open(Path(out["train"]["image_dir"]) / img["file_name"])).astype(int)
        cy, cx = int(y + h * 0.6), int(x + w / 2)  # inside every shape (the triangle too)
        ch = colour_channel[ann["category_id"]]
        px = arr[cy, cx]
        assert px[ch] > 150 and px[ch] - max(np.delete(px, ch)) > 60, (ann, px.tolist())
    assert all(1 <= n <= 3 for n in per_image.values())  # the default objects_per_image
    assert len(per_image) == 12
    ds = CocoDetection([(out["val"]["image_dir"], out["val"]["json_file"])], out["num_classes"], train=False)
    assert len(ds) == 4 and ds.class_names == out["class_names"]


def test_difficulty_parameters(tmp_path: Path) -> None:
    import pytest

    out = generate_synthetic_dataset(
        tmp_path,
        num_train=8,
        num_val=1,
        image_size=(100, 100),
        objects_per_image=(1, 1),
        object_size=(0.3, 0.3),
    )
    coco = json.loads(Path(out["train"]["json_file"]).read_text())
    assert len(coco["annotations"]) == 8 and {a["bbox"][2] for a in coco["annotations"]} == {30}
    with pytest.raises(ValueError, match="objects_per_image"):
        generate_synthetic_dataset(tmp_path / "x", objects_per_image=(3, 2))
    with pytest.raises(ValueError, match="object_size"):
        generate_synthetic_dataset(tmp_path / "x", object_size=(0.5, 1.5))


def test_test_split_is_separate(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path, num_train=4, num_val=3, num_test=5, image_size=(64, 64))
    assert set(out) >= {"train", "val", "test"}
    files = _files(tmp_path)
    test_images = {k: v for k, v in files.items() if k.startswith("images/test/")}
    assert len(test_images) == 5 and len(json.loads(files["annotations/test.json"])["images"]) == 5
    others = {v for k, v in files.items() if k.startswith(("images/train/", "images/val/"))}
    assert not others & set(test_images.values())  # no test image is a training or validation image
    # without num_test there is no test split
    plain = generate_synthetic_dataset(tmp_path / "plain", num_train=2, num_val=1, image_size=(64, 64))
    assert "test" not in plain and not (tmp_path / "plain" / "images" / "test").exists()
