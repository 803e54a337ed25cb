"""``ddetr evaluate``: COCO mAP of a checkpoint (or ONNX file / engine) on ``dataset.test_data_sources``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ddetr.errors import SpecError
from ddetr.fileio import atomic_write_text

logger = logging.getLogger(__name__)


def model_path(section: Any, action: str) -> str:
    """``checkpoint`` or ``trt_engine`` of an evaluate/inference section, whichever is given."""
    for name in ("checkpoint", "trt_engine"):
        value = getattr(section, name, "") or ""
        if value and value != "???":
            return value
    raise SpecError(
        f"{action}.checkpoint: required, not given. Set {action}.checkpoint=PATH (or {action}.trt_engine)."
    )


def input_size_for(section: Any, predictor: Any) -> tuple[int, int] | None:
    """The (width, height) to resize to: the artefact's fixed size wins over the spec's, with one warning."""
    spec_size = (
        (section.input_width, section.input_height) if section.input_width and section.input_height else None
    )
    fixed = predictor.info.input_size
    if fixed is not None:
        if spec_size is not None and tuple(spec_size) != tuple(fixed):
            logger.warning(
                "The model was exported for %dx%d input; input_width/input_height %dx%d in the spec are ignored.",
                fixed[0],
                fixed[1],
                spec_size[0],
                spec_size[1],
            )
        return tuple(fixed)
    return spec_size


def print_metrics(title: str, stats: dict[str, float], per_class: dict[str, float]) -> None:
    """A rich table of the COCO numbers and per-class AP."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in stats.items():
        table.add_row(name, f"{value:.4f}")
    for name, value in per_class.items():
        table.add_row(escape(f"AP[{name}]"), f"{value:.4f}" if value == value else "n/a")
    Console(stderr=True).print(table)


def run(spec: Any) -> dict[str, Any]:
    """Evaluate; writes metrics.json and status.json under ``<results_dir>/evaluate``."""
    from rich.progress import Progress
    from torch.utils.data import DataLoader

    from ddetr.data.coco import CocoDetection
    from ddetr.data.collate import collate_detection
    from ddetr.data.transforms import build_transforms
    from ddetr.engine.datamodule import num_workers, resolve_sources, transform_kwargs
    from ddetr.eval.coco import CocoEvaluator
    from ddetr.runtime import load_predictor
    from ddetr.runtime.detect import class_name, detect
    from ddetr.status import StatusLogger
    from ddetr.tasks.common import prepare_results_dir

    section = spec.evaluate
    path = model_path(section, "evaluate")
    out_dir = prepare_results_dir(spec, "evaluate")
    status = StatusLogger(out_dir / "status.json")
    with status.action(f"Evaluating {path}."):
        predictor = load_predictor(path, spec_model=spec.model, encryption_key=spec.encryption_key)
        pairs = resolve_sources(spec.dataset.test_data_sources)
        if not pairs:
            raise SpecError(
                "dataset.test_data_sources: required for evaluate, not given (image_dir and json_file)."
            )
        kwargs = transform_kwargs(spec)
        kwargs["input_mean"], kwargs["input_std"] = list(predictor.info.mean), list(predictor.info.std)
        transforms = build_transforms(False, **kwargs, input_size=input_size_for(section, predictor))
        dataset = CocoDetection(pairs, predictor.info.num_classes, transforms, train=False)
        batch_size = section.batch_size if section.batch_size > 0 else spec.dataset.batch_size
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers(spec.dataset.workers),
            collate_fn=collate_detection,
        )
        evaluator = CocoEvaluator(dataset.coco_gt, eval_class_ids=spec.dataset.eval_class_ids)
        detections: list[dict] = []
        from ddetr.runtime.detect import to_coco_results

        with Progress(transient=True) as progress:
            task = progress.add_task("evaluate", total=len(loader))
            for images, mask, targets in loader:
                sizes = torch.stack([t["orig_size"] for t in targets])
                dets = detect(
                    predictor,
                    images,
                    mask,
                    sizes,
                    num_select=spec.model.num_select,
                    conf_threshold=section.conf_threshold,
                )
                for target, det in zip(targets, dets):
                    evaluator.add(int(target["image_id"]), det["boxes"], det["scores"], det["labels"])
                    detections.extend(to_coco_results(int(target["image_id"]), det))
                progress.advance(task)
        summary = evaluator.summarize()
        names = dataset.class_names or predictor.info.class_names
        stats = {name: float(v) for name, v in summary["stats"].items()}
        per_class = {class_name(names, int(cid)): float(ap) for cid, ap in summary["per_class_AP"].items()}
        result = {
            "model": str(path),
            "backend": predictor.backend,
            "images": len(dataset),
            "test_mAP": float(summary["mAP"]),
            "test_mAP50": float(summary["mAP50"]),
            "stats": stats,
            "per_class_AP": per_class,
        }
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
        atomic_write_text(out_dir / "detections.json", json.dumps(detections))
        print_metrics(f"COCO bbox evaluation: {Path(path).name}", stats, per_class)
        status.write(
            status="SUCCESS",
            message="Evaluation finished.",
            kpi={"test_mAP": result["test_mAP"], "test_mAP50": result["test_mAP50"]},
        )
        return result
