"""``ddetr evaluate``: COCO mAP of a checkpoint (or ONNX file / engine) on ``dataset.test_data_sources``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from ddetr.errors import SpecError
from ddetr.fileio import atomic_write_text
from ddetr.model.predict import class_name
from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import EvaluateResult

logger = logging.getLogger(__name__)


def print_metrics(title: str, stats: dict[str, float], per_class: dict[str, float]) -> None:
    """A rich table of the COCO numbers and per-class AP, on stderr."""
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


@recorded("evaluate")
def run(spec: Spec) -> EvaluateResult:
    """Evaluate; writes metrics.json, detections.json, status.json and report.html under ``<results_dir>/evaluate``.

    ``detections.json`` is a COCO results file in the image ids of the user's json (with each image's
    ``file_name``), so it scores against the annotations with the COCO API.

    Raises:
        SpecError: no model file or no test data given. CheckpointError / DataError: unusable files.
    """
    from ddetr.data.sources import resolve_sources
    from ddetr.runtime.devices import explain_oom
    from ddetr.runtime.evaluation import coco_dataset, evaluate_predictor
    from ddetr.tasks.common import model_path, open_predictor, prepare_results_dir, status_logger
    from ddetr.tasks.report import write_report_quietly

    section = spec.evaluate
    path = model_path(spec, "evaluate")
    out_dir = prepare_results_dir(spec, "evaluate")
    status = status_logger(out_dir)
    with status.action(f"Evaluating {path}."):
        predictor = open_predictor(spec, "evaluate")
        pairs = resolve_sources(spec.dataset.test_data_sources, spec.dataset.archive_limits)
        if not pairs:
            raise SpecError(
                "dataset.test_data_sources: required for evaluate, not given (image_dir and json_file)."
            )
        dataset = coco_dataset(predictor, pairs)
        batch_size = section.batch_size if section.batch_size > 0 else spec.dataset.batch_size
        field = "evaluate.batch_size" if section.batch_size > 0 else "dataset.batch_size"
        with explain_oom(field, batch_size):
            evaluation = evaluate_predictor(
                predictor,
                dataset,
                batch_size=batch_size,
                workers=spec.dataset.workers,
                conf_threshold=section.conf_threshold,
                eval_class_ids=spec.dataset.eval_class_ids,
                progress=True,
            )
        summary, names = evaluation.summary, evaluation.class_names
        stats = {name: float(v) for name, v in summary["stats"].items()}
        per_class = {class_name(names, int(cid)): float(ap) for cid, ap in summary["per_class_AP"].items()}
        metrics_json, detections_json = out_dir / "metrics.json", out_dir / "detections.json"
        result = EvaluateResult(
            model=Path(path),
            backend=predictor.backend,
            images=evaluation.images,
            test_mAP=evaluation.mAP,
            test_mAP50=evaluation.mAP50,
            stats=stats,
            per_class_AP=per_class,
            metrics_json=metrics_json,
            detections_json=detections_json,
        )
        metrics = {
            "model": str(path),
            "backend": predictor.backend,
            "images": result.images,
            "test_mAP": result.test_mAP,
            "test_mAP50": result.test_mAP50,
            "stats": stats,
            "per_class_AP": per_class,
        }
        atomic_write_text(metrics_json, json.dumps(metrics, indent=2))
        atomic_write_text(detections_json, json.dumps(evaluation.detections))
        print_metrics(f"COCO bbox evaluation: {Path(path).name}", stats, per_class)
        status.write(
            status="SUCCESS",
            message="Evaluation finished.",
            kpi={"test_mAP": result.test_mAP, "test_mAP50": result.test_mAP50},
        )
        return replace(result, report=write_report_quietly(out_dir, "evaluate"))
