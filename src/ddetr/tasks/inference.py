"""``ddetr inference``: detections on a folder (or archive) of images: annotated images, KITTI labels, COCO json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ddetr.errors import DataError, SpecError
from ddetr.spec.sections import Spec, is_set
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import InferenceResult

logger = logging.getLogger(__name__)


def list_images(image_dirs: list[str], limits: Any = None) -> list[Path]:
    """Every image file under the given folders or archives, sorted per source.

    ``limits`` is ``dataset.archive_limits`` (None: the defaults).
    """
    from ddetr.data.annotations import find_images
    from ddetr.data.sources import resolve_image_dir

    found: list[Path] = []
    for image_dir in image_dirs:
        if not image_dir:
            continue
        folder = resolve_image_dir(image_dir, limits=limits)
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
    if is_set(classmap):  # empty or TAO's ???: the model's own names
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


@recorded("inference")
def run(spec: Spec) -> InferenceResult:
    """Run inference; writes images_annotated/, labels/ and detections.json under ``<results_dir>/inference``.

    ``detections.json`` is a COCO results list with ``image_id`` the image's 0-based position in the sorted
    listing and its ``file_name`` (path).

    Raises:
        SpecError: no model file or no images given. CheckpointError / DataError: unusable files.
    """
    from rich.progress import Progress

    from ddetr.data.coco import load_image
    from ddetr.fileio import atomic_path, atomic_write_text
    from ddetr.model.predict import detect
    from ddetr.model.preprocess import preprocess_images
    from ddetr.runtime.devices import explain_oom
    from ddetr.tasks.common import model_path, open_predictor, prepare_results_dir, status_logger
    from ddetr.viz.draw import class_color, draw_detections, parse_color

    section = spec.inference
    path = model_path(spec, "inference")
    out_dir = prepare_results_dir(spec, "inference")
    status = status_logger(out_dir)
    with status.action(f"Inference with {path}."):
        predictor = open_predictor(spec, "inference")
        card = predictor.card
        source = spec.dataset.infer_data_sources
        dirs = source.image_dir if isinstance(source.image_dir, list) else [source.image_dir]
        if not any(dirs):
            raise SpecError("dataset.infer_data_sources.image_dir: required for inference, not given.")
        images = list_images(dirs, spec.dataset.archive_limits)
        names = resolve_class_names(source.classmap, list(card.class_names), card.num_classes)
        colors = {str(k): parse_color(v) for k, v in (section.color_map or {}).items()}
        batch_size = section.batch_size if section.batch_size > 0 else spec.dataset.batch_size
        field = "inference.batch_size" if section.batch_size > 0 else "dataset.batch_size"
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
                for image_id, p in enumerate(paths, start=start):
                    try:
                        pil.append((image_id, p, load_image(p)))
                    except (OSError, SyntaxError, ValueError) as exc:
                        logger.warning("Skipping unreadable image %s: %s", p, exc)
                if not pil:
                    progress.advance(task, len(paths))
                    continue
                batch, mask, orig = preprocess_images(
                    [im for _, _, im in pil],
                    card.mean,
                    card.std,
                    card.shortest_side,
                    card.max_size,
                    input_size=card.input_size,
                )
                with explain_oom(field, batch_size):
                    found = detect(
                        predictor, batch, mask, orig, conf_threshold=section.conf_threshold, class_names=names
                    )
                for (image_id, p, im), det in zip(pil, found):
                    boxes, scores = det.boxes.tolist(), det.scores.tolist()
                    labels = list(det.class_names)
                    cols = [
                        colors.get(n, class_color(int(lbl))) for n, lbl in zip(labels, det.labels.tolist())
                    ]
                    drawn = draw_detections(im, boxes, labels, scores, cols, section.outline_width)
                    with atomic_path(annotated_dir / f"{p.stem}.jpg") as tmp:
                        drawn.save(tmp, format="JPEG", quality=92)
                    rows = [kitti_line(n, b, s) for n, b, s in zip(labels, boxes, scores)]
                    atomic_write_text(labels_dir / f"{p.stem}.txt", "\n".join(rows) + ("\n" if rows else ""))
                    results.extend(det.to_coco(image_id, str(p)))
                    counted += len(rows)
                progress.advance(task, len(paths))
        detections_json = atomic_write_text(out_dir / "detections.json", json.dumps(results))
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
        return InferenceResult(
            images=len(images),
            detections=counted,
            images_annotated=annotated_dir,
            labels=labels_dir,
            detections_json=detections_json,
        )
