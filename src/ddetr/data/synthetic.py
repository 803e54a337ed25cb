"""The embedded demo dataset: coloured shapes on noisy backgrounds, generated deterministically.

Three classes with COCO ids 1 circle (red), 2 square (green), 3 triangle (blue), so ``num_classes`` is 4.
By default each 128x128 image has 1-3 objects whose sides are 25-50 % of the image side, overlapping little, on a
textured grey background: easy enough that the demo's small Deformable DETR learns it from scratch on a 2-core CPU
in a few minutes (``configs/demo.yaml``). The counts and sizes are parameters, for harder variants. The same seed
gives byte-identical files.

Layout under ``out_dir``::

    images/train/000000.jpg ...      images/val/000000.jpg ...      images/test/... (num_test > 0)
    annotations/train.json           annotations/val.json           annotations/test.json (COCO detection json)
    classmap.txt                     one class name per line, line i = category id i + 1
    manifest.json                    the generation parameters (written last)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ddetr.fileio import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

CLASS_NAMES = ("circle", "square", "triangle")  # category ids 1, 2, 3
_COLOURS = ((220, 40, 40), (40, 190, 60), (40, 80, 230))
_MAX_TRIES = 50


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Grey texture: a smooth random gradient plus pixel noise, uint8 [H, W, 3]."""
    base = rng.uniform(90, 170)
    gx, gy = rng.uniform(-40, 40, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    grad = base + gx * (xx / max(w - 1, 1) - 0.5) + gy * (yy / max(h - 1, 1) - 0.5)
    noise = rng.normal(0.0, 12.0, size=(h, w, 3))
    tint = rng.uniform(-8, 8, size=3)
    return np.clip(grad[..., None] + noise + tint, 0, 255).astype(np.uint8)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_image(
    rng: np.random.Generator, w: int, h: int, counts: tuple[int, int], sizes: tuple[float, float]
) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    """One image and its objects as (category id, [x1, y1, x2, y2]) integer pixel boxes."""
    image = Image.fromarray(_background(rng, w, h))
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, list[int]]] = []
    side = min(w, h)
    for _ in range(int(rng.integers(counts[0], counts[1] + 1))):
        for _try in range(_MAX_TRIES):
            size = max(4, int(rng.uniform(sizes[0], sizes[1]) * side))
            x1, y1 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
            box = [x1, y1, x1 + size, y1 + size]
            if all(_iou(box, other) < 0.1 for _, other in objects):
                break
        else:
            continue
        cls = int(rng.integers(1, 4))
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in _COLOURS[cls - 1])
        x2, y2 = box[2] - 1, box[3] - 1  # PIL draws inclusive of the end pixel
        if cls == 1:
            draw.ellipse([x1, y1, x2, y2], fill=colour)
        elif cls == 2:
            draw.rectangle([x1, y1, x2, y2], fill=colour)
        else:
            draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=colour)
        objects.append((cls, box))
    return image, objects


def _write_split(
    out: Path,
    split: str,
    n: int,
    w: int,
    h: int,
    seed: int,
    counts: tuple[int, int],
    sizes: tuple[float, float],
) -> dict[str, str]:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    split_seed = {"train": 0, "val": 1, "test": 2}[split]
    for i in range(n):
        rng = np.random.default_rng([seed, split_seed, i])
        image, objects = _draw_image(rng, w, h, counts, sizes)
        name = f"{i:06d}.jpg"
        with atomic_path(image_dir / name) as tmp:
            image.save(tmp, format="JPEG", quality=92)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for cls, (x1, y1, x2, y2) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"ddetr synthetic shapes, split {split}, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASS_NAMES)],
    }
    json_file = out / "annotations" / f"{split}.json"
    json_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_file, json.dumps(coco, indent=1, sort_keys=True))
    return {"image_dir": str(image_dir), "json_file": str(json_file)}


def generate_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 60,
    num_test: int = 0,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    objects_per_image: tuple[int, int] = (1, 3),
    object_size: tuple[float, float] = (0.25, 0.50),
    reuse: bool = True,
) -> dict[str, Any]:
    """Write the synthetic shapes dataset (JPEG images + COCO json per split + classmap).

    Args:
        out_dir: destination folder (created).
        num_train: number of training images.
        num_val: number of validation images.
        num_test: number of test images (0: no test split); drawn from their own seed, so they are never
            training or validation images.
        image_size: (width, height) in pixels.
        seed: generation seed; the same seed gives byte-identical files.
        objects_per_image: (min, max) objects per image, inclusive (fewer if they cannot be placed
            without overlapping).
        object_size: (min, max) object side as a fraction of the shorter image side.
        reuse: when ``out_dir`` already holds a complete dataset generated with the same parameters,
            return it without writing.

    Returns:
        ``{"train": {"image_dir", "json_file"}, "val": {...}, "test": {...} (when num_test > 0), "classmap": path,
        "num_classes": 4,
        "class_names": ["", "circle", "square", "triangle"]}`` (class_names indexed by category id).
    """
    out = Path(out_dir)
    w, h = int(image_size[0]), int(image_size[1])
    if w < 32 or h < 32:
        raise ValueError(f"image_size must be at least 32x32 pixels; got {image_size}")
    counts = (int(objects_per_image[0]), int(objects_per_image[1]))
    sizes = (float(object_size[0]), float(object_size[1]))
    if not 1 <= counts[0] <= counts[1]:
        raise ValueError(
            f"objects_per_image must be (min, max) with 1 <= min <= max; got {objects_per_image}"
        )
    if not 0 < sizes[0] <= sizes[1] <= 0.9:
        raise ValueError(f"object_size must be (min, max) with 0 < min <= max <= 0.9; got {object_size}")
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "image_size": [w, h],
        "seed": seed,
        "objects_per_image": list(counts),
        "object_size": list(sizes),
        "version": 1,
    }
    manifest = out / "manifest.json"
    result: dict[str, Any] = {
        "train": {
            "image_dir": str(out / "images" / "train"),
            "json_file": str(out / "annotations" / "train.json"),
        },
        "val": {"image_dir": str(out / "images" / "val"), "json_file": str(out / "annotations" / "val.json")},
        "classmap": str(out / "classmap.txt"),
        "num_classes": len(CLASS_NAMES) + 1,
        "class_names": ["", *CLASS_NAMES],
    }
    if num_test > 0:
        result["test"] = {
            "image_dir": str(out / "images" / "test"),
            "json_file": str(out / "annotations" / "test.json"),
        }
    if reuse and manifest.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")) == params:
                return result
        except json.JSONDecodeError:
            pass
    manifest.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "Generating synthetic dataset in %s (%d train, %d val, %d test, %dx%d)",
        out,
        num_train,
        num_val,
        num_test,
        w,
        h,
    )
    result["train"] = _write_split(out, "train", num_train, w, h, seed, counts, sizes)
    result["val"] = _write_split(out, "val", num_val, w, h, seed, counts, sizes)
    if num_test > 0:
        result["test"] = _write_split(out, "test", num_test, w, h, seed, counts, sizes)
    atomic_write_text(out / "classmap.txt", "\n".join(CLASS_NAMES) + "\n")
    atomic_write_text(manifest, json.dumps(params, sort_keys=True))
    return result
