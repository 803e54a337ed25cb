"""``ddetr inference``: detections on a folder (or archive) of images: annotated images, KITTI labels, COCO json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ddetr.errors import DataError, SpecError

logger = logging.getLogger(__name__)


def list_images(image_dirs: list[str]) -> list[Path]:
    """Every image file under the given folders or archives, sorted per source."""
    from ddetr.data.annotations import find_images
    from ddetr.data.sources import resolve_image_dir

    found: list[Path] = []
    for image_dir in image_dirs:
        if not image_dir:
            continue
        folder = resolve_image_dir(image_dir)
        found.extend(find_images(folder))
    if not found:
        raise DataError(f"dataset.infer_data_sources.image_dir: no images found in {image_dirs}.")
    return found


def read_classmap(path: str) -> list[str]:
    """Class names from a classmap file (line i = category id i + 1) as a list indexed by category id."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset.infer_data_sources.classmap: {path} does not exist.")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return ["", *names]


def resolve_class_names(classmap: str, model_names: list[str], num_classes: int) -> list[str]:
    """The classmap's names if given (must cover the model's classes), else the model's own names."""
    if classmap:
        names = read_classmap(classmap)
        if len(names) < num_classes:
            raise DataError(
                f"dataset.infer_data_sources.classmap: {classmap} names {len(names) - 1} classes, but the model "
                f"predicts category ids up to {num_classes - 1}; give one name per line for ids 1..{num_classes - 1}."
            )
        return names
    return list(model_names)


def kitti_line(name: str, box: list[float], score: float) -> str:
    """One KITTI label row (TAO's layout: truncation/occlusion/alpha and 3D fields zero)."""
    x1, y1, x2, y2 = box
    name = name.replace(" ", "_")
    return f"{name} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0.00 0.00 0.00 0.00 0.00 0.00 0.00 {score:.4f}"


def run(spec: Any) -> dict[str, Any]:
    """Run inference; writes images_annotated/, labels/ and detections.json under ``<results_dir>/inference``."""
    from rich.progress import Progress

    from ddetr.data.coco import load_image
    from ddetr.data.collate import preprocess_images
    from ddetr.fileio import atomic_write_text
    from ddetr.runtime import load_predictor
    from ddetr.runtime.detect import class_name, detect, drop_unnamed, to_coco_results
    from ddetr.status import StatusLogger
    from ddetr.tasks.common import prepare_results_dir
    from ddetr.tasks.evaluate import input_size_for, model_path
    from ddetr.viz.draw import class_color, draw_detections, parse_color

    section = spec.inference
    path = model_path(section, "inference")
    out_dir = prepare_results_dir(spec, "inference")
    status = StatusLogger(out_dir / "status.json")
    with status.action(f"Inference with {path}."):
        predictor = load_predictor(path, spec_model=spec.model, encryption_key=spec.encryption_key)
        source = spec.dataset.infer_data_sources
        dirs = source.image_dir if isinstance(source.image_dir, list) else [source.image_dir]
        if not any(dirs):
            raise SpecError("dataset.infer_data_sources.image_dir: required for inference, not given.")
        images = list_images(dirs)
        names = resolve_class_names(source.classmap, predictor.info.class_names, predictor.info.num_classes)
        colors = {str(k): parse_color(v) for k, v in (section.color_map or {}).items()}
        size = input_size_for(section, predictor)
        aug = spec.dataset.augmentation
        batch_size = section.batch_size if section.batch_size > 0 else spec.dataset.batch_size
        annotated_dir, labels_dir = out_dir / "images_annotated", out_dir / "labels"
        annotated_dir.mkdir(exist_ok=True)
        labels_dir.mkdir(exist_ok=True)
        results: list[dict] = []
        counted = 0
        with Progress(transient=True) as progress:
            task = progress.add_task("inference", total=len(images))
            for start in range(0, len(images), batch_size):
                paths = images[start : start + batch_size]
                pil = []
                for p in paths:
                    try:
                        pil.append((p, load_image(p)))
                    except (OSError, SyntaxError, ValueError) as exc:
                        logger.warning("Skipping unreadable image %s: %s", p, exc)
                if not pil:
                    progress.advance(task, len(paths))
                    continue
                batch, mask, orig = preprocess_images(
                    [im for _, im in pil],
                    mean=predictor.info.mean,
                    std=predictor.info.std,
                    shortest_side=aug.test_random_resize,
                    max_size=aug.random_resize_max_size,
                    input_size=size,
                )
                dets = detect(
                    predictor,
                    batch,
                    mask,
                    orig,
                    num_select=spec.model.num_select,
                    conf_threshold=section.conf_threshold,
                )
                for image_id, ((p, im), det) in enumerate(zip(pil, dets), start=start):
                    det = drop_unnamed(det, names)
                    labels = [class_name(names, int(lbl)) for lbl in det["labels"].tolist()]
                    boxes, scores = det["boxes"].tolist(), det["scores"].tolist()
                    cols = [
                        colors.get(n, class_color(int(lbl))) for n, lbl in zip(labels, det["labels"].tolist())
                    ]
                    drawn = draw_detections(im, boxes, labels, scores, cols, section.outline_width)
                    drawn.save(annotated_dir / f"{p.stem}.jpg", quality=92)
                    rows = [kitti_line(n, b, s) for n, b, s in zip(labels, boxes, scores)]
                    (labels_dir / f"{p.stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
                    for entry in to_coco_results(image_id, det):
                        entry["file_name"] = str(p)
                        results.append(entry)
                    counted += len(rows)
                progress.advance(task, len(paths))
        atomic_write_text(out_dir / "detections.json", json.dumps(results))
        logger.info(
            "Inference: %d images, %d detections >= %.2f. Pictures in %s",
            len(images),
            counted,
            section.conf_threshold,
            annotated_dir,
        )
        status.write(
            status="SUCCESS", message=f"Inference finished: {len(images)} images, {counted} detections."
        )
        return {
            "images": len(images),
            "detections": counted,
            "images_annotated": str(annotated_dir),
            "labels": str(labels_dir),
            "detections_json": str(out_dir / "detections.json"),
        }
