"""``ddetr dataset``: check every data source the spec names, before anyone trains on it.

Checks ``dataset.train_data_sources``, ``val_data_sources``, ``test_data_sources``,
``infer_data_sources`` (images and classmap), ``quant_calibration_data_sources`` and
``gen_trt_engine.tensorrt.calibration.cal_image_dir`` (the rules: :mod:`ddetr.data.check`), and writes into
``<results_dir>/dataset/``:

- ``dataset_report.json``: per split the images, boxes, boxes per class, COCO small/medium/large counts and
  every problem (kind, severity, count, first places);
- ``dataset_report.png``: boxes per class per split, and a histogram of box sizes;
- ``status.json`` and ``experiment.yaml``, as every action.

A rich table summarises it on stderr. Warnings do not fail the action; any error does, with one line naming
the number of errors and the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ddetr.errors import DataError, SpecError
from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import DatasetResult

logger = logging.getLogger(__name__)

REPORT_NAME = "dataset_report.json"
PLOT_NAME = "dataset_report.png"
PROGRESS_MIN_IMAGES = 50  # fewer images are checked in about a second: no progress bar
_MAX_TABLE_PROBLEMS = 30


def splits_from_spec(spec: Any) -> list[Any]:
    """The :class:`~ddetr.data.check.Split` of every data source set in the spec (unset ones are left out)."""
    from ddetr.data.check import Split
    from ddetr.spec.sections import is_set

    d = spec.dataset

    def pairs(sources: list[Any]) -> list[tuple[str, str]]:
        return [
            (
                s.image_dir.strip() if is_set(s.image_dir) else "",
                s.json_file.strip() if is_set(s.json_file) else "",
            )
            for s in sources
            if is_set(s.image_dir) or is_set(s.json_file)
        ]

    infer_dirs = d.infer_data_sources.image_dir
    infer_dirs = [infer_dirs] if isinstance(infer_dirs, str) else list(infer_dirs)
    trt_dirs = spec.gen_trt_engine.tensorrt.calibration.cal_image_dir
    import torch

    batch = d.batch_size * spec.train.world_size(torch.cuda.is_available())
    candidates = [
        Split("train", "dataset.train_data_sources", pairs(d.train_data_sources), min_images=batch),
        Split("val", "dataset.val_data_sources", pairs(d.val_data_sources)),
        Split("test", "dataset.test_data_sources", pairs([d.test_data_sources])),
        Split(
            "infer", "dataset.infer_data_sources.image_dir", [(x.strip(), "") for x in infer_dirs if is_set(x)],
            needs_json=False, needs_boxes=False,
        ),
        Split(
            "quant_calibration", "dataset.quant_calibration_data_sources",
            pairs([d.quant_calibration_data_sources]), needs_json=False, needs_boxes=False,
        ),
        Split(
            "trt_calibration", "gen_trt_engine.tensorrt.calibration.cal_image_dir",
            [(x.strip(), "") for x in trt_dirs if is_set(x)], needs_json=False, needs_boxes=False,
        ),
    ]  # fmt: skip
    return [split for split in candidates if split.sources]


def _check_classmap(spec: Any, reports: list[Any]) -> None:
    """The inference classmap: readable, one name per category id, in the json files' order."""
    from ddetr.spec.sections import is_set
    from ddetr.tasks.inference import read_classmap

    classmap = spec.dataset.infer_data_sources.classmap
    infer = next((r for r in reports if r.name == "infer"), None)
    if not is_set(classmap) or infer is None:
        return
    num_classes = spec.dataset.num_classes
    try:
        names = read_classmap(classmap)
    except DataError as exc:
        infer.add("classmap_unreadable", classmap, reason=" ".join(str(exc).split()))
        return
    if len(names) < num_classes:
        infer.add(
            "classmap_short", classmap, names=len(names) - 1, num_classes=num_classes, top=num_classes - 1
        )
    declared = {cid: name for r in reports for cid, name in r.class_names.items() if name}
    for cid, name in enumerate(names):
        if cid and cid in declared and declared[cid] != name:
            infer.add(
                "classmap_mismatch", classmap, f"line {cid}: '{name}', json category {cid}: '{declared[cid]}'"
            )


def _progress(stack: ExitStack) -> Callable[[int], Callable[[], None]]:
    """A rich progress bar on stderr for :func:`ddetr.data.check.check_splits`, when there are many images."""

    def start(total: int) -> Callable[[], None]:
        if total < PROGRESS_MIN_IMAGES:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        stack.enter_context(progress)
        task = progress.add_task("images", total=total)
        return lambda: progress.advance(task)

    return start


def print_summary(report: dict[str, Any], class_names: dict[int, str]) -> None:
    """Rich tables on stderr: counts per split, then the problems (most severe first)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    ids = sorted(class_names)
    table = Table(title=f"Dataset check (dataset.num_classes = {report['num_classes']})")
    for column in ("split", "images", "boxes", *(class_names[i] or str(i) for i in ids)):
        table.add_column(escape(column), justify="left" if column == "split" else "right")
    for column in ("small", "medium", "large", "no box", "errors", "warnings"):
        table.add_column(column, justify="right")
    for name, split in report["splits"].items():
        if "per_class" in split:
            per_class = {c["id"]: c["boxes"] for c in split["per_class"]}
            counts = [str(split["boxes"]), *(str(per_class.get(i, 0)) for i in ids)]
            counts += [str(split["area"][k]) for k in ("small", "medium", "large")]
            counts.append(str(split["images_without_annotations"]))
        else:
            counts = ["-"] * (len(ids) + 5)
        errors = f"[red]{split['errors']}[/red]" if split["errors"] else "0"
        table.add_row(name, str(split["images"]), *counts, errors, str(split["warnings"]))
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: do not squeeze the columns into 80 characters
        console = Console(stderr=True, width=max(100, 12 * (len(ids) + 11)))
    console.print(table)
    problems = [(name, p) for name, split in report["splits"].items() for p in split["problems"]]
    problems += [("all", p) for p in report["problems"]]
    if not problems:
        console.print("No problem found.")
        return
    problems.sort(key=lambda item: item[1]["severity"] != "error")
    listed = Table(title="Problems (all of them, with examples, in the report)")
    for column in ("severity", "split", "problem", "first example"):
        listed.add_column(column)
    for name, p in problems[:_MAX_TABLE_PROBLEMS]:
        severity = "[red]error[/red]" if p["severity"] == "error" else "[yellow]warning[/yellow]"
        listed.add_row(
            severity, name, escape(p["message"]), escape(p["examples"][0] if p["examples"] else "")
        )
    console.print(listed)
    if len(problems) > _MAX_TABLE_PROBLEMS:
        console.print(f"... and {len(problems) - _MAX_TABLE_PROBLEMS} more in the report.")


@recorded("dataset")
def run(spec: Spec) -> DatasetResult:
    """Check the data; writes the report, the plot and status.json under ``<results_dir>/dataset``.

    Returns:
        The report and plot paths, ``images`` and ``boxes`` (over all splits), ``errors`` (0) and ``warnings``.

    Raises:
        SpecError: no data source is set.
        DataError: the data has errors (one line: how many, of which kinds, and where the report is).
    """
    from ddetr.data.check import check_splits, cross_split_problems
    from ddetr.fileio import atomic_write_text
    from ddetr.tasks.common import prepare_results_dir, status_logger
    from ddetr.viz.plots import plot_dataset_summary

    splits = splits_from_spec(spec)
    if not splits:
        raise SpecError(
            "dataset: no data source is set; set dataset.train_data_sources / val_data_sources / "
            "test_data_sources / infer_data_sources (image_dir, json_file) in the spec."
        )
    num_classes = spec.dataset.num_classes
    out_dir = prepare_results_dir(spec, "dataset")
    status = status_logger(out_dir)
    with status.action(f"Checking {', '.join(s.name for s in splits)}."):
        with ExitStack() as stack:
            reports = check_splits(
                splits, num_classes, progress=_progress(stack), archive_limits=spec.dataset.archive_limits
            )
        _check_classmap(spec, reports)
        overall = cross_split_problems(reports, num_classes)
        class_names: dict[int, str] = {}
        for r in reports:
            for cid in (*r.class_names, *r.per_class):
                if not class_names.get(cid):
                    class_names[cid] = r.class_names.get(cid, "")
        errors = sum(r.count("error") for r in reports) + sum(
            p.count for p in overall if p.severity == "error"
        )
        warnings = sum(r.count("warning") for r in reports) + sum(
            p.count for p in overall if p.severity == "warning"
        )
        report = {
            "num_classes": num_classes,
            "usable": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "classes": [{"id": cid, "name": class_names[cid]} for cid in sorted(class_names)],
            "splits": {r.name: r.to_dict() for r in reports},
            "problems": [p.to_dict() for p in overall],
            "plot": PLOT_NAME,
        }
        report_path = atomic_write_text(out_dir / REPORT_NAME, json.dumps(report, indent=2))
        annotated = [r for r in reports if r.annotated]
        plot_path = plot_dataset_summary(
            class_names,
            {r.name: dict(r.per_class) for r in annotated},
            {r.name: r.box_sides for r in annotated},
            out_dir / PLOT_NAME,
            title=f"dataset check: {', '.join(r.name for r in annotated)}",
        )
        print_summary(report, class_names)
    result = DatasetResult(
        report=Path(report_path),
        plot=Path(plot_path),
        images=sum(r.images for r in reports),
        boxes=sum(r.boxes for r in reports),
        errors=errors,
        warnings=warnings,
    )
    if errors:
        kinds = [
            f"{r.name}: {p.count} {p.kind}"
            for r in reports
            for p in r.problems.values()
            if p.severity == "error"
        ] + [f"{p.count} {p.kind}" for p in overall if p.severity == "error"]
        message = (
            f"dataset: {errors} error{'s' if errors != 1 else ''} in the data ({', '.join(kinds)}); "
            f"every problem is listed in {report_path}"
        )
        status.failure(message)
        raise DataError(message)
    status.success(f"Data usable: {result.images} images, {result.boxes} boxes, {warnings} warnings.")
    return result
