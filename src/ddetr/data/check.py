"""Dataset checks behind ``ddetr dataset`` and ``ddetr train``: every problem of every source, collected.

One set of rules serves both: ``ddetr dataset`` decodes every image and writes a report; training runs the
same rules on the file headers only (:func:`check_splits` with ``decode=False``: sizes without decoding)
before its first step, and :func:`enforce` stops it on any error (one line: the count and examples) and
warns once per kind of warning, with its count.

A split (``train``, ``val``, ...) is one or more sources, each an image folder with a COCO json, or an image
folder alone (inference and calibration images). :func:`check_splits` resolves each source the way training
does (:mod:`ddetr.data.sources`), parses the json with the same structural check
(:func:`ddetr.data.coco.read_coco_json`), decodes every image once, and applies the rules the loader
applies (:mod:`ddetr.data.annotations`), recording each broken rule as a :class:`Problem`:

- errors (the data cannot be used as it is): a source that cannot be read or is not COCO json, an image
  that is missing, cannot be decoded (corrupt, truncated) or whose size differs from the json, a category
  id outside ``0 .. num_classes - 1``, a duplicate image id, a bbox that is not four numbers, a split with no
  image (or, where boxes are needed, no box);
- warnings (the loader copes, but it is probably a mistake): a box of zero width or height or outside its
  image (dropped by the loader), one crossing the border by more than 1 pixel (clipped), an image without
  annotations, a file name listed twice, an annotation of an unknown image, a category id used but not
  declared.

Box sizes are classed with COCO's area ranges: small below 32², medium below 96², large from 96² (the
annotation's ``area`` when given, as COCOeval uses it, else ``w * h``).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from PIL import Image

from ddetr.data.annotations import DECODE_ERRORS, bad_category_ids, clip_box, image_size
from ddetr.errors import DataError

__all__ = [
    "BORDER_TOLERANCE",
    "ImageCheck",
    "Problem",
    "Split",
    "SplitReport",
    "check_splits",
    "enforce",
    "header_check",
    "verify_image",
]

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
BORDER_TOLERANCE = 1.0  # pixels a box may cross the image border before it is reported
MAX_EXAMPLES = 20

KINDS: dict[str, tuple[Severity, str]] = {
    # kind: (severity, description; "{...}" filled from the split or the spec)
    "source_incomplete": ("error", "a source of {field} has no {missing}"),
    "source_unreadable": ("error", "source that cannot be used"),
    "missing_image": ("error", "images missing from the image folder"),
    "unreadable_image": ("error", "images that cannot be decoded (corrupt or truncated)"),
    "size_mismatch": ("error", "images whose size differs from the json's width x height"),
    "duplicate_image_id": ("error", "image ids listed more than once"),
    "category_id_out_of_range": ("error", "category ids outside 0..{top} (dataset.num_classes is {num_classes})"),
    "bad_annotation": ("error", "annotations whose image_id, category_id or bbox is not a number"),
    "empty_split": ("error", "{field} has no usable image"),
    "too_few_images": ("error", "{field} has {images} usable images, fewer than one batch of {need} "
                       "(dataset.batch_size * processes per node * train.num_nodes)"),
    "no_boxes": ("error", "{field} has no box: nothing to learn from or score"),
    "degenerate_box": ("warning", "boxes of zero or negative width or height (dropped by the loader)"),
    "box_outside_image": ("warning", "boxes entirely outside their image (dropped by the loader)"),
    "box_crosses_border": ("warning", "boxes crossing the image border by more than {tolerance:g} px (clipped)"),
    "image_without_annotations": ("warning", "images without any usable box"),
    "duplicate_file_name": ("warning", "file names listed more than once"),
    "unknown_image_id": ("warning", "annotations of an image_id not in images (ignored)"),
    "undeclared_category": ("warning", "annotations whose category_id is not declared in categories"),
    "classmap_unreadable": ("error", "{reason}"),
    "classmap_short": ("error", "names {names} classes but dataset.num_classes is {num_classes}: inference needs "
                       "one name per line for ids 1..{top}"),
    "classmap_mismatch": ("warning", "classmap lines that differ from the json's category names (line i = id i)"),
    "category_name_conflict": ("warning", "category ids named differently in different files"),
    "num_classes_unused": ("warning", "dataset.num_classes is {num_classes} but the largest category id is "
                           "{largest}: set dataset.num_classes: {wanted} unless the extra classes are meant"),
}  # fmt: skip
_SPLIT_LEVEL = {
    "source_incomplete", "empty_split", "too_few_images", "no_boxes", "num_classes_unused", "classmap_unreadable",
    "classmap_short",
}  # fmt: skip


@dataclass
class Problem:
    """One kind of problem in one source, with how often it occurs and where (the first few places)."""

    severity: Severity
    kind: str
    description: str
    source: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """One line: ``"<source>: <description>: <count>"`` (no count for a whole-split problem)."""
        if self.kind in _SPLIT_LEVEL:
            return f"{self.source}: {self.description}"
        return f"{self.source}: {self.description}: {self.count}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "source": self.source,
            "count": self.count,
            "message": self.message,
            "examples": list(self.examples),
        }


def make_problem(kind: str, source: str, **values: Any) -> Problem:
    """A :class:`Problem` of a kind listed in :data:`KINDS`, its description filled with ``values``."""
    severity, text = KINDS[kind]
    return Problem(severity, kind, text.format(tolerance=BORDER_TOLERANCE, **values), source)


@dataclass
class Split:
    """What to check: a named group of sources taken from one spec field.

    Attributes:
        name: short name used in the report (``train``, ``val``, ``infer``, ...).
        field: the spec field the sources come from, for messages.
        sources: ``(image_dir, json_file)`` pairs; ``json_file`` empty for an image folder alone.
        needs_json: each source needs a json_file (training and evaluation data).
        needs_boxes: a split without any box is an error (training and evaluation data).
        min_images: fewer usable images is an error (``dataset.batch_size * world size`` for train).
    """

    name: str
    field: str
    sources: list[tuple[str, str]]
    needs_json: bool = True
    needs_boxes: bool = True
    min_images: int = 1


@dataclass
class SplitReport:
    """Counts and problems of one split. ``box_sides`` (sqrt of each box area, pixels) feeds the plot."""

    name: str
    field: str
    sources: list[dict[str, str]] = field(default_factory=list)
    images: int = 0
    boxes: int = 0
    images_without_annotations: int = 0
    per_class: Counter[int] = field(default_factory=Counter)
    class_names: dict[int, str] = field(default_factory=dict)
    area: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0, "large": 0})
    box_sides: list[float] = field(default_factory=list)
    problems: dict[tuple[str, str, str], Problem] = field(default_factory=dict)
    annotated: bool = True

    def add(self, kind: str, source: str, example: str = "", **values: Any) -> None:
        """Count one occurrence of a problem (:data:`KINDS`); keep the first :data:`MAX_EXAMPLES` places."""
        key = (KINDS[kind][0], kind, source)
        problem = self.problems.get(key)
        if problem is None:
            problem = self.problems[key] = make_problem(kind, source, **values)
        problem.count += 1
        if example and len(problem.examples) < MAX_EXAMPLES:
            problem.examples.append(example)

    def count(self, severity: Severity) -> int:
        """Occurrences of all problems of one severity."""
        return sum(p.count for p in self.problems.values() if p.severity == severity)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "sources": self.sources, "images": self.images}
        if self.annotated:
            names = self.class_names
            ids = sorted(set(self.per_class) | set(names))
            out |= {
                "boxes": self.boxes,
                "images_without_annotations": self.images_without_annotations,
                "per_class": [
                    {"id": i, "name": names.get(i, ""), "boxes": self.per_class.get(i, 0)} for i in ids
                ],
                "area": dict(self.area),
            }
        out["errors"] = self.count("error")
        out["warnings"] = self.count("warning")
        out["problems"] = [p.to_dict() for p in self.problems.values()]
        return out


class ImageCheck(NamedTuple):
    """The outcome of decoding one image: (height, width) as displayed, or the decoder's complaint."""

    size: tuple[int, int] | None
    error: str | None


def verify_image(path: Path) -> ImageCheck:
    """Open ``path`` with PIL, ``verify()`` it, then decode it fully (``verify`` alone misses truncated JPEGs)."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except DECODE_ERRORS as exc:
        return ImageCheck(None, " ".join(f"{type(exc).__name__}: {exc}".split()))
    return ImageCheck(image_size(path), None)


def header_check(path: Path) -> ImageCheck:
    """The size from the file header only (PIL opens the file without decoding the pixels): fast, for training.

    A truncated file passes (the loader skips it when it fails to decode); a file PIL cannot identify fails.
    """
    size = image_size(path)
    return ImageCheck(size, None) if size is not None else ImageCheck(None, "not an image PIL can open")


def verify_images(
    paths: Iterable[Path],
    on_done: Callable[[], None] | None = None,
    workers: int | None = None,
    check: Callable[[Path], ImageCheck] = verify_image,
) -> dict[Path, ImageCheck]:
    """Check each distinct existing file once with ``check``, on a few threads (PIL releases the GIL)."""
    unique = sorted({p for p in paths if p.is_file()})
    workers = workers or min(4, os.cpu_count() or 1)
    results: dict[Path, ImageCheck] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, check_result in zip(unique, pool.map(check, unique)):
            results[path] = check_result
            if on_done is not None:
                on_done()
    return results


# ----------------------------------------------------------------------------- opening sources


@dataclass
class _Opened:
    """A source resolved to local files: the image folder, the parsed json (None for images alone)."""

    report: SplitReport
    label: str
    folder: Path
    data: dict[str, Any] | None
    images: list[Path]


def _open(
    split: Split,
    report: SplitReport,
    image_dir: str,
    json_file: str,
    cache_dir: Path | None,
    archive_limits: Any = None,
) -> _Opened | None:
    from ddetr.data.annotations import read_coco_json
    from ddetr.data.formats import list_images
    from ddetr.data.sources import resolve_file, resolve_image_dir

    label = json_file or image_dir or report.field
    report.sources.append({"image_dir": image_dir, "json_file": json_file})
    missing = "image_dir" if not image_dir else "json_file" if split.needs_json and not json_file else ""
    if missing:
        report.add("source_incomplete", label, field=split.field, missing=missing)
        return None
    try:
        folder = resolve_image_dir(image_dir, cache_dir, limits=archive_limits)
        if not json_file:
            return _Opened(report, label, folder, None, list(list_images(folder).values()))
        data = read_coco_json(json_file, resolve_file(json_file, cache_dir))
    except DataError as exc:
        report.add("source_unreadable", label, " ".join(str(exc).split()))
        return None
    return _Opened(report, label, folder, data, [folder / str(rec["file_name"]) for rec in data["images"]])


# ----------------------------------------------------------------------------- the rules


def _check_coco(src: _Opened, data: dict[str, Any], checks: dict[Path, ImageCheck], num_classes: int) -> None:
    report, label = src.report, src.label
    declared = {int(cat["id"]): str(cat.get("name", "")) for cat in data["categories"]}
    for cid, name in declared.items():
        report.class_names.setdefault(cid, name)
    sizes, names = _check_images(src, data, checks)
    bad_ids = set(bad_category_ids(data, num_classes))
    limits = {"top": num_classes - 1, "num_classes": num_classes}
    for cid in sorted(bad_ids & set(declared)):
        report.add("category_id_out_of_range", label, f"categories: id {cid} ({declared[cid]})", **limits)
    annotated: set[int] = set()
    for index, ann in enumerate(data["annotations"]):
        where = f"annotation id {ann.get('id', f'[{index}]')}"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
            bbox = [float(v) for v in ann["bbox"]]
        except (TypeError, ValueError):
            report.add("bad_annotation", label, where)
            continue
        if image_id not in names:
            report.add("unknown_image_id", label, f"{where}: image_id {image_id}")
            continue
        where = f"{names[image_id]}, {where}"
        if category_id in bad_ids:
            report.add("category_id_out_of_range", label, f"{where}: category_id {category_id}", **limits)
            continue
        if category_id not in declared:
            report.add("undeclared_category", label, f"{where}: category_id {category_id}")
        if not all(math.isfinite(v) for v in bbox):
            report.add("bad_annotation", label, f"{where}: bbox {bbox}")
            continue
        if image_id not in sizes:  # the image is missing or unreadable: reported already
            continue
        h, w = sizes[image_id]
        if _box_kept(report, label, where, bbox, w, h):
            annotated.add(image_id)
            report.boxes += 1
            report.per_class[category_id] += 1
            area = float(ann.get("area") or 0) or bbox[2] * bbox[3]
            report.area["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"] += 1
            report.box_sides.append(math.sqrt(bbox[2] * bbox[3]))
    for image_id in sizes:
        if image_id not in annotated:
            report.images_without_annotations += 1
            report.add("image_without_annotations", label, names[image_id])


def _check_images(
    src: _Opened, data: dict[str, Any], checks: dict[Path, ImageCheck]
) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """({image id: (height, width)} of the usable images, {image id: file name}); problems recorded."""
    report, label = src.report, src.label
    ids = Counter(int(rec["id"]) for rec in data["images"])
    for image_id, n in ids.items():
        if n > 1:
            report.add("duplicate_image_id", label, f"id {image_id} x{n}")
    for name, n in Counter(str(rec["file_name"]) for rec in data["images"]).items():
        if n > 1:
            report.add("duplicate_file_name", label, f"{name} x{n}")
    sizes: dict[int, tuple[int, int]] = {}
    names: dict[int, str] = {}
    for rec in data["images"]:
        name = str(rec["file_name"])
        names.setdefault(int(rec["id"]), name)
        check = checks.get(src.folder / name)
        if check is None:
            report.add("missing_image", label, f"{name} (in {src.folder})")
            continue
        if check.size is None:
            report.add("unreadable_image", label, f"{name}: {check.error}")
            continue
        h, w = check.size
        declared = (rec.get("height"), rec.get("width"))
        if all(declared) and (int(declared[0]), int(declared[1])) != (h, w):
            report.add("size_mismatch", label, f"{name}: json {declared[1]}x{declared[0]}, file {w}x{h}")
            continue
        report.images += 1
        if ids[int(rec["id"])] == 1:
            sizes[int(rec["id"])] = (h, w)
    return sizes, names


def _box_kept(report: SplitReport, label: str, where: str, bbox: Sequence[float], w: int, h: int) -> bool:
    """The loader's box rule (:func:`ddetr.data.annotations.clip_box`); True when the box is kept."""
    x, y, bw, bh = bbox
    corners, _ = clip_box(bbox, w, h)
    shown = f"{where}: bbox [{x:g}, {y:g}, {bw:g}, {bh:g}] in a {w}x{h} image"
    if corners is None:
        report.add("degenerate_box" if bw <= 0 or bh <= 0 else "box_outside_image", label, shown)
        return False
    if max(-x, -y, x + bw - w, y + bh - h) > BORDER_TOLERANCE:
        report.add("box_crosses_border", label, shown)
    return True


def _check_images_only(src: _Opened, checks: dict[Path, ImageCheck]) -> None:
    for path in src.images:
        check = checks.get(path)
        if check is None or check.size is None:
            reason = check.error if check is not None else "missing"
            src.report.add(
                "unreadable_image", src.label, f"{path.relative_to(src.folder).as_posix()}: {reason}"
            )
            continue
        src.report.images += 1


def _check_split(split: Split, report: SplitReport) -> None:
    """Whole-split rules: not empty, enough images for a batch, some boxes where they are needed."""
    where = split.field
    if report.images == 0:
        if not report.count("error"):  # a source that failed is reported already
            report.add("empty_split", where, field=split.field)
    elif report.images < split.min_images:
        report.add("too_few_images", where, field=split.field, images=report.images, need=split.min_images)
    if split.needs_boxes and report.annotated and report.images and report.boxes == 0:
        report.add("no_boxes", where, field=split.field)


def cross_split_problems(reports: Sequence[SplitReport], num_classes: int) -> list[Problem]:
    """Rules over all splits: one name per category id, and ``num_classes`` not far above the ids used."""
    problems: list[Problem] = []
    seen: dict[int, set[str]] = {}
    for report in reports:
        for cid, name in report.class_names.items():
            if name:
                seen.setdefault(cid, set()).add(name)
    conflicts = {cid: names for cid, names in seen.items() if len(names) > 1}
    if conflicts:
        problem = make_problem("category_name_conflict", "json files")
        problem.count = len(conflicts)
        problem.examples = [f"id {cid}: {' / '.join(sorted(n))}" for cid, n in sorted(conflicts.items())]
        problems.append(problem)
    ids = {cid for r in reports for cid in (*r.class_names, *r.per_class)}
    largest = max(ids, default=-1)
    if ids and largest + 1 < num_classes:
        problem = make_problem(
            "num_classes_unused", "spec", num_classes=num_classes, largest=largest, wanted=largest + 1
        )
        problem.count = 1
        problems.append(problem)
    return problems


# ----------------------------------------------------------------------------- entry point


def check_splits(
    splits: Sequence[Split],
    num_classes: int,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
    archive_limits: Any = None,
    decode: bool = True,
) -> list[SplitReport]:
    """Check every source of every split; bad data never raises, it is all in the reports.

    Args:
        splits: what to check.
        num_classes: ``dataset.num_classes``; category ids must lie in ``0 .. num_classes - 1``.
        cache_dir: cache root for archives and remote files (default: :func:`ddetr.data.sources.default_cache_dir`).
        progress: called once with the number of images to decode; returns the callback run after each one.
        archive_limits: ``dataset.archive_limits`` for image archives (None: the defaults).
        decode: decode every image (``ddetr dataset``); False reads sizes from the headers only (training).

    Returns:
        One :class:`SplitReport` per split, in order.
    """
    reports: list[SplitReport] = []
    opened: list[_Opened] = []
    for split in splits:
        report = SplitReport(split.name, split.field, annotated=any(j for _, j in split.sources))
        reports.append(report)
        for image_dir, json_file in split.sources:
            src = _open(split, report, image_dir, json_file, cache_dir, archive_limits)
            if src is not None:
                opened.append(src)
    paths = {p for src in opened for p in src.images if p.is_file()}
    on_done = progress(len(paths)) if progress is not None else None
    checks = verify_images(paths, on_done, check=verify_image if decode else header_check)
    for src in opened:
        if src.data is None:
            _check_images_only(src, checks)
        else:
            _check_coco(src, src.data, checks, num_classes)
    for split, report in zip(splits, reports):
        _check_split(split, report)
    return reports


def enforce(reports: Sequence[SplitReport], extra: Sequence[Problem] = (), *, examples: int = 3) -> None:
    """Stop on any error, warn once per kind of warning: how training applies the rules of ``ddetr dataset``.

    Args:
        reports: from :func:`check_splits`.
        extra: more problems, e.g. from :func:`cross_split_problems`.
        examples: places shown per kind of problem.

    Raises:
        DataError: one line with the number of errors, each kind with its count and first places.
    """
    problems = [p for r in reports for p in r.problems.values()] + list(extra)

    def shown(p: Problem) -> str:
        more = f" (e.g. {'; '.join(p.examples[:examples])})" if p.examples else ""
        return f"{p.message}{more}"

    for p in problems:
        if p.severity == "warning":
            logger.warning("%s", shown(p))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        total = sum(max(p.count, 1) for p in errors)
        listed = " | ".join(shown(p) for p in errors)
        raise DataError(
            " ".join(
                f"The data has {total} error(s), nothing was trained: {listed} "
                "(`ddetr dataset` with this spec writes the full report).".split()
            )
        )
