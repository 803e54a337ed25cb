"""data/coco.py: parsing, checks, id remapping, robust decoding, sample format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asset_paths import BCCD
from ddetr.data.coco import CocoDetection, check_min_size
from ddetr.errors import DataError
from ddetr.model.preprocess import load_image


def _rgb(w: int = 40, h: int = 30, colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def _write_coco(path: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    cats = categories if categories is not None else [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def _ann(i: int, image_id: int, bbox: list[float], cat: int = 1, **kw) -> dict:
    return {"id": i, "image_id": image_id, "bbox": bbox, "category_id": cat, **kw}


def _one_box(json_file: Path, category_id: int, categories: list[dict]) -> Path:
    """One 40x30 image ``a.jpg`` beside ``json_file``, with one box of ``category_id``; returns the json."""
    _rgb().save(json_file.parent / "a.jpg")
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}
    return _write_coco(json_file, [image], [_ann(1, 1, [1, 1, 4, 4], category_id)], categories)


# ----------------------------------------------------------------------------- decoding


def _exif_rotated(path: Path) -> None:
    # stored 40 wide x 20 high, left half red; orientation 6 = rotate 90 degrees clockwise to display
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    _exif_rotated(tmp_path / "r.jpg")
    im = load_image(tmp_path / "r.jpg")
    assert im.size == (20, 40)  # displayed: 20 wide x 40 high
    arr = np.asarray(im)
    assert arr[5, 10, 0] > 200 and arr[35, 10, 0] < 60  # red half now on top


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (8, 6), 128),
        lambda: Image.new("LA", (8, 6), (128, 50)),
        lambda: Image.new("RGBA", (8, 6), (10, 200, 30, 0)),
        lambda: Image.new("RGB", (8, 6), (10, 200, 30)).convert("P"),
        lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((6, 8), 65535 // 2, np.uint16)),
        lambda: Image.fromarray(np.full((6, 8), 40000, np.int32), mode="I"),
    ],
    ids=["L", "LA", "RGBA", "P", "CMYK", "I16", "I"],
)
def test_modes_become_rgb(tmp_path: Path, make) -> None:
    im = make()
    suffix = ".tif" if im.mode in ("CMYK", "I") else ".png"
    im.save(tmp_path / f"x{suffix}")
    out = load_image(tmp_path / f"x{suffix}")
    assert out.mode == "RGB" and out.size == (8, 6)
    arr = np.asarray(out)
    if im.mode in ("I;16", "I"):  # 16-bit range rescaled, not clipped to white
        assert 100 < arr[0, 0, 0] < 170
    if im.mode == "CMYK":  # pure red
        assert arr[0, 0, 0] > 200 and arr[0, 0, 1] < 50


# ----------------------------------------------------------------------------- dataset


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    _rgb().save(img_dir / "a.jpg")
    _rgb().save(img_dir / "b.jpg")
    _rgb().save(img_dir / "empty.jpg")
    images = [
        {"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 20, "file_name": "b.jpg", "width": 40, "height": 30},
        {"id": 30, "file_name": "empty.jpg", "width": 40, "height": 30},
        {"id": 40, "file_name": "gone1.jpg", "width": 40, "height": 30},
        {"id": 50, "file_name": "gone2.jpg", "width": 40, "height": 30},
    ]
    anns = [
        _ann(1, 10, [4, 3, 10, 12], 1),
        _ann(2, 10, [30, 20, 20, 20], 2),  # past the edge -> clipped to [30, 20, 10, 10]
        _ann(3, 10, [5, 5, 0, 4], 1),  # zero width -> dropped
        _ann(4, 20, [1, 1, 5, 5], 2, iscrowd=1),  # crowd
        _ann(5, 20, [10, 10, 8, 6], 1),
        _ann(6, 40, [1, 1, 5, 5], 1),  # image missing
    ]
    return img_dir, _write_coco(tmp_path / "ann.json", images, anns)


def test_summary_warnings_and_targets(small, caplog: pytest.LogCaptureFixture) -> None:
    img_dir, js = small
    with caplog.at_level(logging.INFO, logger="ddetr.data.coco"):
        ds = CocoDetection([(str(img_dir), str(js))], 3, train=True)
    assert len(ds) == 3  # two missing images dropped, the box-less image kept
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "2 image(s)" in warn[0] and "gone1.jpg" in warn[0] and "gone2.jpg" in warn[0]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1
    assert "3 images" in info[0] and "4 boxes" in info[0] and "(1 crowd)" in info[0]
    assert "1 degenerate" in info[0] and "1 clipped" in info[0] and "2 missing" in info[0]

    img, t = ds[0]
    assert img.shape == (3, 30, 40) and img.dtype == torch.float32
    assert t["labels"].tolist() == [1, 2] and t["labels"].dtype == torch.long
    expected = torch.tensor([[9 / 40, 9 / 30, 10 / 40, 12 / 30], [35 / 40, 25 / 30, 10 / 40, 10 / 30]])
    torch.testing.assert_close(t["boxes"], expected)
    assert t["orig_size"].tolist() == [30, 40] and t["size"].tolist() == [30, 40]
    # normalised with ImageNet mean/std by default: red channel of (200, 30, 30)
    assert abs(img[0, 0, 0].item() - (200 / 255 - 0.485) / 0.229) < 0.05

    _, t2 = ds[1]  # crowd box removed from training targets
    assert t2["labels"].tolist() == [1] and t2["iscrowd"].tolist() == [0]
    _, t3 = ds[2]
    assert t3["boxes"].shape == (0, 4) and t3["labels"].shape == (0,)


def test_eval_mode_keeps_crowd_and_gt(small) -> None:
    img_dir, js = small
    ds = CocoDetection([(str(img_dir), str(js))], 3, train=False)
    _, t = ds[1]
    assert sorted(zip(t["labels"].tolist(), t["iscrowd"].tolist())) == [(1, 0), (2, 1)]
    gt = ds.coco_gt
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1
    assert len(gt["annotations"]) == 4
    clipped = next(a for a in gt["annotations"] if a["category_id"] == 2 and a["iscrowd"] == 0)
    assert clipped["bbox"] == [30, 20, 10, 10]
    assert ds.class_names == ["", "a", "b"]


def test_two_sources_ids_distinct_and_mapped(small, tmp_path: Path) -> None:
    img_dir, js = small
    ds = CocoDetection([(str(img_dir), str(js)), (str(img_dir), str(js))], 3, train=True)
    assert len(ds) == 6
    ids = [ds[i][1]["image_id"] for i in range(len(ds))]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert ds.id_map == [{10: 1, 20: 2, 30: 3}, {10: 4, 20: 5, 30: 6}]
    assert ds.original_image_id(5) == (1, 20)
    assert len({a["id"] for a in ds.coco_gt["annotations"]}) == 8


def test_category_id_too_large(tmp_path: Path) -> None:
    js = _one_box(tmp_path / "big.json", 7, [{"id": 7, "name": "x"}])
    with pytest.raises(DataError) as err:
        CocoDetection([(str(tmp_path), str(js))], 4, train=True)
    msg = str(err.value)
    assert "big.json" in msg and "7" in msg and "num_classes: 8" in msg


@pytest.mark.parametrize(
    "content,missing",
    [
        ("[1, 2]", "top level"),
        ('{"images": [], "categories": []}', "annotations"),
        ('{"images": [{"file_name": "a.jpg"}], "annotations": [], "categories": []}', "images[0]"),
        (
            '{"images": [], "annotations": [{"image_id": 1, "bbox": [0,0,1,1]}], "categories": []}',
            "category_id",
        ),
        ("{not json", "invalid JSON"),
    ],
)
def test_not_coco_json(tmp_path: Path, content: str, missing: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError) as err:
        CocoDetection([(str(tmp_path), str(tmp_path / "bad.json"))], 4, train=True)
    assert "bad.json" in str(err.value) and missing in str(err.value)


def test_corrupt_and_truncated_images_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.jpg"
    _rgb(colour=(0, 0, 255)).save(good, quality=95)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noise.save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all")
    images = [
        {"id": 1, "file_name": "trunc.jpg", "width": 64, "height": 64},
        {"id": 2, "file_name": "garbage.jpg", "width": 40, "height": 30},
        {"id": 3, "file_name": "good.jpg", "width": 40, "height": 30},
    ]
    js = _write_coco(tmp_path / "c.json", images, [_ann(1, 3, [1, 1, 5, 5], 1)])
    ds = CocoDetection([(str(tmp_path), str(js))], 3, train=True)
    with caplog.at_level(logging.WARNING, logger="ddetr.data.coco"):
        img, t = ds[0]
    assert t["image_id"] == 3 and img.shape == (3, 30, 40)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "trunc.jpg" in text and "garbage.jpg" in text


def test_all_images_corrupt_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    js = _write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "bad.jpg", "width": 4, "height": 4}], [])
    ds = CocoDetection([(str(tmp_path), str(js))], 3, train=True)
    with pytest.raises(DataError, match="decoded"):
        ds[0]


def test_size_from_file_when_json_lacks_it(tmp_path: Path) -> None:
    _exif_rotated(tmp_path / "r.jpg")
    js = _write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "r.jpg"}], [_ann(1, 1, [2, 2, 10, 30], 1)])
    ds = CocoDetection([(str(tmp_path), str(js))], 3, train=False)
    img, t = ds[0]
    assert img.shape == (3, 40, 20) and t["orig_size"].tolist() == [40, 20]
    assert ds.coco_gt["images"][0]["height"] == 40


def test_check_min_size(small) -> None:
    img_dir, js = small
    ds = CocoDetection([(str(img_dir), str(js))], 3, train=True)
    check_min_size(ds, 3, 1, 1)
    with pytest.raises(DataError, match=r"3 images.*2 \* 2 \* 1 = 4"):
        check_min_size(ds, 2, 2, 1)


def test_bccd_real_dataset() -> None:
    if not BCCD.is_dir():
        pytest.fail(f"BCCD dataset not found at {BCCD}")
    ds = CocoDetection([(str(BCCD / "images"), str(BCCD / "annotations" / "test.json"))], 4, train=False)
    assert len(ds) == 72
    assert ds.class_names == ["", "Platelets", "RBC", "WBC"]
    assert len(ds.coco_gt["annotations"]) == 945
    img, t = ds[3]
    assert img.shape == (3, 480, 640)
    assert t["boxes"].shape[0] == t["labels"].shape[0] > 0
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    with pytest.raises(DataError, match="num_classes: 4"):
        CocoDetection([(str(BCCD / "images"), str(BCCD / "annotations" / "test.json"))], 3, train=False)


def test_undeclared_category_still_in_gt(tmp_path: Path) -> None:
    js = _one_box(tmp_path / "u.json", 2, [{"id": 1, "name": "one"}])
    ds = CocoDetection([(str(tmp_path), str(js))], 3, train=True)
    assert ds.class_names == ["", "one", ""]
    assert [c["id"] for c in ds.coco_gt["categories"]] == [1, 2]
