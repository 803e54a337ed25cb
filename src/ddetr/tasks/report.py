"""``ddetr report`` and the report every train, evaluate and AutoML run ends with: ``<action folder>/report.html``.

The report is drawn from the files a run leaves in its folder, so it can be rebuilt at any time, on any
machine that has the folder (and, for the example images, the data): ``experiment.yaml`` (the spec, key
blanked), ``status.json``, ``metrics.jsonl`` and the checkpoints (train), ``metrics.json`` and
``detections.json`` (evaluate), ``leaderboard.csv`` and ``param_importances.json`` (AutoML), ``job.json``
when a job runner wrote one. What goes into the page: docs/report.md.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import logging
import math
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ddetr.errors import DdetrError, SpecError
from ddetr.fileio import atomic_write_text
from ddetr.spec.sections import Spec
from ddetr.tasks.results import ReportResult

logger = logging.getLogger(__name__)

__all__ = ["REPORT_ACTIONS", "REPORT_NAME", "run", "write_report", "write_report_quietly"]

REPORT_NAME = "report.html"
REPORT_ACTIONS: tuple[str, ...] = ("train", "evaluate", "automl")
MAX_EXAMPLES = 12  # example images in a report: the page stays a few MB whatever the dataset's size
MAX_POINTS = 1500  # points of a per-step curve (longer runs are averaged over buckets of steps)
MAX_LEADERBOARD = 50  # trials listed
_VERSIONS = ("ddetr", "torch", "torchvision", "lightning", "timm", "pycocotools", "onnxruntime", "optuna")
_STAT_LABELS = {
    "AP": "AP @[IoU .50:.95]",
    "AP50": "AP @ IoU .50",
    "AP75": "AP @ IoU .75",
    "APs": "AP small (< 32² px)",
    "APm": "AP medium",
    "APl": "AP large (> 96² px)",
    "AR1": "AR, 1 detection per image",
    "AR10": "AR, 10 detections",
    "AR100": "AR, 100 detections",
    "ARs": "AR small",
    "ARm": "AR medium",
    "ARl": "AR large",
}


# ------------------------------------------------------------------------------------------------- files
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _recorded_spec(folder: Path) -> tuple[str, Spec | None]:
    """``experiment.yaml`` as text (encryption key blanked) and as a Spec (None when it does not load)."""
    from ddetr.spec.load import validate_spec

    path = folder / "experiment.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "", None
    if not isinstance(data, dict):
        return "", None
    if data.get("encryption_key"):
        data["encryption_key"] = ""
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        spec = validate_spec(data)
    except (DdetrError, ValueError) as exc:
        logger.debug("report: %s does not load as a spec: %s", path, exc)
        spec = None
    return text, spec


def _versions() -> list[tuple[str, str]]:
    rows = [("python", platform.python_version()), ("platform", platform.platform(terse=True))]
    for name in _VERSIONS:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return rows


def _about(folder: Path, action: str, spec_text: str) -> list[Any]:
    """The closing sections: the spec used, the versions, the job."""
    from ddetr.viz.report import Section, table

    sections = []
    job = _read_json(folder / "job.json")
    rows: list[tuple[str, Any]] = [("action", action), ("folder", str(folder.resolve()))]
    if isinstance(job, dict):
        rows += [("job id", job.get("job_id")), ("parent job id", job.get("parent_job_id"))]
    events = _status(folder)
    if events:
        rows += [
            ("started", f"{events[0].get('date', '')} {events[0].get('time', '')}".strip()),
            ("last status", f"{events[-1].get('status', '')}: {events[-1].get('message', '')}"),
        ]
    run = Section("Run", key="run").add(table(["", ""], rows))
    run.add("<h3>Versions (of the environment that wrote this report)</h3>")
    run.add(table(["package", "version"], _versions()))
    sections.append(run)
    spec_section = Section("Spec", key="spec")
    if spec_text:
        spec_section.add(f"<pre>{html.escape(spec_text)}</pre>")
    else:
        spec_section.text("experiment.yaml is missing or unreadable.")
    sections.append(spec_section)
    return sections


def _status(folder: Path) -> list[dict[str, Any]]:
    from ddetr.status import read_status

    try:
        return list(read_status(folder / "status.json"))
    except (OSError, ValueError, DdetrError):
        return []


# ------------------------------------------------------------------------------------------------ dataset
def _load_sources(sources: Any) -> list[tuple[str, dict[str, Any]]]:
    """(image folder, COCO dict) of each data source (archives and remote files resolved, as a run does)."""
    from ddetr.data.sources import resolve_sources

    loaded = []
    for image_dir, json_file in resolve_sources(sources):
        data = _read_json(Path(json_file))
        if isinstance(data, dict):
            loaded.append((image_dir, data))
    return loaded


def _dataset_section(spec: Spec, splits: Sequence[str]) -> Any:
    """Images, boxes and boxes per class of each split the run used."""
    from ddetr.viz.report import Section, table

    section = Section("Dataset", key="dataset")
    names: dict[int, str] = {}
    counts: dict[str, dict[int, int]] = {}
    totals: list[tuple[str, int, int]] = []
    for split in splits:
        try:
            loaded = _load_sources(getattr(spec.dataset, f"{split}_data_sources"))
        except DdetrError as exc:
            section.text(f"{split}: not readable here ({exc})")
            continue
        if not loaded:
            continue
        per_class: dict[int, int] = {}
        images = boxes = 0
        for _, data in loaded:
            for cat in data.get("categories", []):
                names.setdefault(int(cat["id"]), str(cat.get("name", cat["id"])))
            images += len(data.get("images", []))
            for ann in data.get("annotations", []):
                per_class[int(ann["category_id"])] = per_class.get(int(ann["category_id"]), 0) + 1
                boxes += 1
        counts[split] = per_class
        totals.append((split, images, boxes))
    if not totals:
        section.text("No data source of this run could be read.")
        return section
    section.add(table(["split", "images", "boxes"], totals))
    ids = sorted({c for split in counts.values() for c in split} | set(names))
    rows = [[f"{names.get(c, c)} (id {c})", *(counts[s].get(c, 0) for s in counts)] for c in ids]
    section.add(table(["class", *counts], rows))
    return section


# ----------------------------------------------------------------------------------------------- training
def _bucketed(xs: list[float], ys: list[float | None]) -> tuple[list[float], list[float | None]]:
    """At most MAX_POINTS points: means over equal buckets of consecutive points."""
    if len(xs) <= MAX_POINTS:
        return xs, ys
    size = math.ceil(len(xs) / MAX_POINTS)
    out_x, out_y = [], []
    for i in range(0, len(xs), size):
        vals = [y for y in ys[i : i + size] if y is not None]
        out_x.append(sum(xs[i : i + size]) / len(xs[i : i + size]))
        out_y.append(sum(vals) / len(vals) if vals else None)
    return out_x, out_y


def _training_section(folder: Path) -> Any:
    from ddetr.engine.callbacks import METRICS_NAME, read_metrics
    from ddetr.tasks.folders import best_checkpoint, checkpoint_records
    from ddetr.viz.report import Section, bar_chart, line_chart, table

    section = Section("Training", key="training")
    records = read_metrics(folder / METRICS_NAME)
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[int, dict[str, Any]] = {}
    vals: dict[int, dict[str, Any]] = {}
    for r in records:  # a resumed run repeats steps: the last line of a step wins
        if "loss" in r and "step" in r:
            steps[int(r["step"])] = r
        elif "epoch_seconds" in r:
            epochs[int(r["epoch"])] = r
        elif any(k.startswith("val_") for k in r):
            vals[int(r["epoch"])] = r
    if not vals:  # runs from before metrics.jsonl: status.json has the validations
        for event in _status(folder):
            kpi = event.get("kpi")
            if isinstance(kpi, dict) and "val_mAP" in kpi and "epoch" in event:
                vals[int(event["epoch"])] = {**kpi, "step": event.get("step")}
    charts = 0
    if steps:
        order = sorted(steps)
        keys = [k for k in ("loss", "loss_ce", "loss_bbox", "loss_giou") if any(k in steps[s] for s in order)]
        series = {
            ("total (weighted)" if k == "loss" else k): _bucketed(
                [float(s) for s in order], [steps[s].get(k) for s in order]
            )
            for k in keys
        }
        section.chart(
            "losses", line_chart(series, title="training loss per step", xlabel="step", ylabel="loss")
        )
        lr_keys = sorted({k for s in order for k in steps[s] if k == "lr" or k.startswith("lr_")})
        lrs = {k: _bucketed([float(s) for s in order], [steps[s].get(k) for s in order]) for k in lr_keys}
        section.chart(
            "lr", line_chart(lrs, title="learning rate per step", xlabel="step", ylabel="lr", log_y=True)
        )
        charts += 2
    else:
        section.text("No per-step losses (metrics.jsonl is missing: a run from an older ddetr).")
    if vals:
        order = sorted(vals)
        series = {
            name: ([float(e) for e in order], [vals[e].get(name) for e in order])
            for name in ("val_mAP", "val_mAP50")
        }
        section.chart(
            "val_map",
            line_chart(series, title="validation mAP per epoch", xlabel="epoch", ylabel="mAP", markers=True),
        )
        charts += 1
    if epochs:
        seconds = {str(e): float(epochs[e]["epoch_seconds"]) for e in sorted(epochs)}
        section.chart(
            "epoch_time",
            bar_chart(seconds, title="time per epoch", xlabel="seconds", horizontal=False, sort=False),
        )
        charts += 1
    records_ = checkpoint_records(folder)
    best = best_checkpoint(records_)
    section.add("<h3>Checkpoints</h3>")
    if records_:
        rows = [
            [r.path.name, r.epoch, r.step, r.val_mAP, r.val_mAP50, r.val_loss, "best" if r == best else ""]
            for r in records_
        ]
        marked = records_.index(best) if best is not None else None
        section.add(
            table(["file", "epoch", "step", "val_mAP", "val_mAP50", "val_loss", ""], rows, marked=marked)
        )
    else:
        section.text("No checkpoint in this folder.")
    return section


# --------------------------------------------------------------------------------------------- evaluation
def _merged_ground_truth(
    loaded: list[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, Any], dict[tuple[int, str], int], dict[int, tuple[Path, dict[str, Any]]]]:
    """One COCO dict of every source (ids renumbered), the map (own id, file name) -> new id, and each new
    id's image path and entry."""
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    ids: dict[tuple[int, str], int] = {}
    images: dict[int, tuple[Path, dict[str, Any]]] = {}
    seen_cats: set[int] = set()
    for image_dir, data in loaded:
        local: dict[int, int] = {}
        for img in data.get("images", []):
            new = len(merged["images"]) + 1
            local[int(img["id"])] = new
            ids[(int(img["id"]), str(img.get("file_name", "")))] = new
            merged["images"].append({**img, "id": new})
            images[new] = (Path(image_dir) / str(img.get("file_name", "")), img)
        for ann in data.get("annotations", []):
            if int(ann["image_id"]) in local:
                merged["annotations"].append(
                    {**ann, "id": len(merged["annotations"]) + 1, "image_id": local[int(ann["image_id"])]}
                )
        for cat in data.get("categories", []):
            if int(cat["id"]) not in seen_cats:
                seen_cats.add(int(cat["id"]))
                merged["categories"].append(cat)
    return merged, ids, images


def _evaluation_sections(folder: Path, spec: Spec | None) -> list[Any]:
    from ddetr.eval.coco import precision_recall
    from ddetr.eval.matching import match_detections
    from ddetr.viz.report import Section, bar_chart, confusion_chart, line_chart, table

    section = Section("Evaluation", key="evaluation")
    metrics = _read_json(folder / "metrics.json")
    if not isinstance(metrics, dict):
        section.text("metrics.json is missing: the evaluation did not finish.")
        return [section]
    section.add(
        f'<p class="note">{html.escape(str(metrics.get("model", "")))} ({html.escape(str(metrics.get("backend", "")))}),'
        f" {int(metrics.get('images', 0))} images</p>"
    )
    stats = metrics.get("stats", {})
    # COCOeval's -1: no ground truth of that size
    shown = [
        [k, _STAT_LABELS.get(k, ""), v if isinstance(v, (int, float)) and v >= 0 else None]
        for k, v in stats.items()
    ]
    section.add(table(["COCO metric", "", "value"], shown))
    per_class = {str(k): float(v) for k, v in metrics.get("per_class_AP", {}).items()}
    if per_class:
        section.chart(
            "per_class_ap", bar_chart(per_class, title="AP @[.50:.95] per class", xlabel="AP", limit=1.0)
        )
    sections = [section]
    detections = _read_json(folder / "detections.json")
    loaded: list[tuple[str, dict[str, Any]]] = []
    if spec is not None:
        try:
            loaded = _load_sources(spec.dataset.test_data_sources)
        except DdetrError as exc:
            section.text(f"The test data is not readable here ({exc}): curves and examples left out.")
    if not loaded or not isinstance(detections, list):
        if isinstance(detections, list):
            section.text("The test data of experiment.yaml is not available: curves and examples left out.")
        return sections
    gt, ids, images = _merged_ground_truth(loaded)
    single = len(loaded) == 1
    by_own_id = {own: new for (own, _), new in ids.items()}
    dets = []
    for d in detections:
        new = ids.get((int(d["image_id"]), str(d.get("file_name", ""))))
        if new is None and single:
            new = by_own_id.get(int(d["image_id"]))
        if new is not None:
            dets.append({**d, "image_id": new})
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    eval_ids = spec.dataset.eval_class_ids if spec is not None else None
    pr = precision_recall(gt, dets, eval_class_ids=eval_ids)
    curves = pr["classes"]
    if curves:
        series = {names.get(c, str(c)): (pr["recall"], row["precision50"]) for c, row in curves.items()}
        section.chart(
            "pr_curves",
            line_chart(
                series,
                title="precision-recall per class, IoU 0.50",
                xlabel="recall",
                ylabel="precision",
                unit_square=True,
            ),
        )
        sizes = {
            size: {names.get(c, str(c)): row[f"AP_{size}"] for c, row in curves.items()}
            for size in ("small", "medium", "large")
        }
        overall = {"small": stats.get("APs"), "medium": stats.get("APm"), "large": stats.get("APl")}
        for size in sizes:
            value = overall[size]
            sizes[size]["all classes"] = value if isinstance(value, (int, float)) and value >= 0 else None
        section.chart(
            "ap_by_size",
            bar_chart(
                {},
                title="AP @[.50:.95] by object size (no bar: no object of that size)",
                xlabel="AP",
                horizontal=False,
                sort=False,
                groups=sizes,
                limit=1.0,
            ),
        )
        rows = [
            [
                names.get(c, str(c)),
                r["AP"],
                r["AP50"],
                r["AP75"],
                r["AP_small"],
                r["AP_medium"],
                r["AP_large"],
            ]
            for c, r in sorted(curves.items(), key=lambda item: -(item[1]["AP"] or 0.0))
        ]
        section.add(table(["class", "AP", "AP50", "AP75", "AP small", "AP medium", "AP large"], rows))
    else:
        section.text("No detections: no precision-recall curve.")
    threshold = (
        spec.evaluate.conf_threshold if spec is not None and spec.evaluate.conf_threshold > 0 else None
    )
    if threshold is None:
        threshold = spec.inference.conf_threshold if spec is not None else 0.5
    class_ids = sorted(eval_ids) if eval_ids else sorted(names)
    truth: dict[int, list[tuple[int, list[float]]]] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd"):
            truth.setdefault(int(ann["image_id"]), []).append((int(ann["category_id"]), ann["bbox"]))
    found: dict[int, list[tuple[int, list[float], float]]] = {}
    for d in dets:
        found.setdefault(int(d["image_id"]), []).append((int(d["category_id"]), d["bbox"], float(d["score"])))
    for image_id in images:
        truth.setdefault(image_id, [])
    matching = match_detections(truth, found, class_ids, score_threshold=threshold)
    section.chart(
        "confusion",
        confusion_chart(
            matching.confusion,
            [names.get(c, str(c)) for c in class_ids],
            title=f"confusion matrix, score >= {threshold:g}, IoU >= 0.5",
        ),
    )
    section.add(
        '<p class="note">Rows: ground truth; columns: predictions. The background column counts missed '
        "objects, the background row false alarms. Colour: share of the row; numbers: boxes.</p>"
    )
    sections.append(_examples(matching, truth, found, images, names, class_ids, threshold))
    return sections


def _examples(
    matching: Any,
    truth: dict[int, list[tuple[int, list[float]]]],
    found: dict[int, list[tuple[int, list[float], float]]],
    images: dict[int, tuple[Path, dict[str, Any]]],
    names: dict[int, str],
    class_ids: list[int],
    threshold: float,
) -> Any:
    """Ground truth and predictions side by side for the MAX_EXAMPLES worst images."""
    from PIL import Image

    from ddetr.viz.report import Section, image_tag, side_by_side

    section = Section("Example images", key="examples")
    section.add(
        f'<p class="note">Worst images first (most missed, false and wrongly classified boxes at score >= '
        f"{threshold:g}); left: ground truth, right: predictions. {MAX_EXAMPLES} images at most.</p>"
    )
    keep = set(class_ids)
    figures = []
    for image_id in matching.worst(MAX_EXAMPLES):
        path, entry = images[image_id]
        try:
            with Image.open(path) as im:
                im.load()
                picture = im.convert("RGB")
        except OSError:
            continue
        gt = [(names.get(c, str(c)), c, b) for c, b in truth.get(image_id, []) if c in keep]
        pred = [
            (names.get(c, str(c)), c, b, s)
            for c, b, s in found.get(image_id, [])
            if c in keep and s >= threshold
        ]
        errors = matching.per_image[image_id]
        caption = (
            f"{entry.get('file_name', path.name)}: {errors.missed} missed, {errors.false} false, "
            f"{errors.wrong_class} wrong class, {errors.correct} right"
        )
        figures.append(
            f"<figure>{image_tag(side_by_side(picture, gt, pred), caption)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if figures:
        section.add(f'<div class="examples">{"".join(figures)}</div>')
    else:
        section.text("The test images are not readable here.")
    return section


# ------------------------------------------------------------------------------------------------- AutoML
def _automl_section(folder: Path, spec: Spec | None) -> Any:
    from ddetr.viz.report import Section, bar_chart, history_chart, table

    section = Section("AutoML", key="automl")
    metric = spec.automl.metric if spec is not None else "val_mAP"
    maximize = spec.automl.direction == "maximize" if spec is not None else True
    try:
        with open(folder / "leaderboard.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        section.text("leaderboard.csv is missing: no trial has finished.")
        return section

    def number(text: str) -> float | None:
        try:
            value = float(text)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    points = [
        (int(r["trial"]), v, r["state"])
        for r in rows
        if (v := number(r.get(metric, ""))) is not None and r["state"] in ("COMPLETE", "PRUNED")
    ]
    best = _read_json(folder / "best_trial.json")
    if isinstance(best, dict):
        section.add(
            f'<p class="note">best: trial {html.escape(str(best.get("trial")))}, {html.escape(metric)} '
            f"{html.escape(str(best.get('value')))}; retrain it with best_spec.yaml</p>"
        )
    if points:
        section.chart(
            "history",
            history_chart(points, metric=metric, maximize=maximize, title=f"{metric} per trial"),
        )
    importances = _read_json(folder / "param_importances.json")
    if isinstance(importances, dict) and importances:
        section.chart(
            "importance",
            bar_chart(
                {str(k): float(v) for k, v in importances.items()},
                title="parameter importance",
                xlabel="importance (Optuna's default evaluator)",
            ),
        )
    else:
        section.text("Parameter importance needs at least two complete trials with varying parameters.")
    columns = list(rows[0]) if rows else []
    marked = 0 if rows and rows[0].get("state") == "COMPLETE" else None
    section.add(f"<h3>Leaderboard ({len(rows)} trials{', best first' if rows else ''})</h3>")
    section.add(
        table(columns, [[r.get(c, "") for c in columns] for r in rows[:MAX_LEADERBOARD]], marked=marked)
    )
    return section


# ------------------------------------------------------------------------------------------------- public
def write_report(folder: str | Path, action: str) -> Path:
    """Write ``<folder>/report.html`` for the run of ``action`` (train, evaluate or automl) in ``folder``.

    Returns:
        The written report (replaced atomically if it existed).

    Raises:
        SpecError: an action without a report, or a folder that does not exist.
    """
    from ddetr._version import __version__
    from ddetr.viz.report import render_page

    folder = Path(folder)
    if action not in REPORT_ACTIONS:
        raise SpecError(
            f"report: no report for action {action!r}; reports exist for {', '.join(REPORT_ACTIONS)}"
        )
    if not folder.is_dir():
        raise SpecError(f"report: {folder} does not exist; run ddetr {action} first")
    spec_text, spec = _recorded_spec(folder)
    sections: list[Any] = []
    if action == "train":
        sections.append(_training_section(folder))
        if spec is not None:
            sections.append(_dataset_section(spec, ("train", "val")))
    elif action == "evaluate":
        sections += _evaluation_sections(folder, spec)
        if spec is not None:
            sections.append(_dataset_section(spec, ("test",)))
    else:
        sections.append(_automl_section(folder, spec))
    sections += _about(folder, action, spec_text)
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = render_page(
        f"ddetr {action} report", f"{folder.resolve()} · written {written} by ddetr {__version__}", sections
    )
    return atomic_write_text(folder / REPORT_NAME, page)


def write_report_quietly(folder: str | Path, action: str) -> Path | None:
    """:func:`write_report` at the end of a run: a report that cannot be made is one warning, never a failure."""
    try:
        path = write_report(folder, action)
    except Exception as exc:  # the run itself succeeded; its report must not turn it into a failure
        logger.warning("report.html not written: %s: %s", type(exc).__name__, exc)
        return None
    logger.info("Report: %s", path)
    return path


def run(spec: Spec) -> ReportResult:
    """``ddetr report``: rewrite ``report.html`` in each of ``<results_dir>/{train,evaluate,automl}`` that exists.

    Raises:
        SpecError: results_dir is not set, or none of those folders exists.
    """
    from ddetr.tasks.folders import action_dir

    written = []
    for action in REPORT_ACTIONS:
        folder = action_dir(spec, action)
        if (folder / "experiment.yaml").is_file() or (folder / "status.json").is_file():
            written.append(write_report(folder, action))
            logger.info("Report: %s", written[-1])
    if not written:
        where = Path(spec.results_dir).expanduser()
        raise SpecError(
            f"report: no train, evaluate or automl run in {str(where)!r}; set results_dir to the folder a run wrote"
        )
    return ReportResult(reports=tuple(written))
