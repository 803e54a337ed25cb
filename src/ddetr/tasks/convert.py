"""``ddetr convert {voc,kitti,yolo}``: a folder of labels -> one COCO json (a command of its own, no spec).

The readers live in :mod:`ddetr.data.formats`; this module holds the command's arguments, writes the json
atomically and prints what a user needs next: counts, ``dataset.num_classes`` and the classmap.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ddetr.errors import DataError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Convert detection labels to one COCO json that a spec's json_file can name. Categories get ids 1..N in the
order of --classes (id 0 unused), so the spec needs dataset.num_classes: N + 1 (printed at the end).
Every image under --images becomes a COCO image (file_name relative to --images: use that folder as the
spec's image_dir); images without a label file are kept without boxes.

formats:
  voc    one .xml per image (anywhere under --labels); <filename> names the image; <bndbox> holds 1-based
         inclusive pixels, so x = xmin - 1, w = xmax - xmin + 1; class names compared exactly;
         difficult objects kept (marked "difficult": 1) unless --drop-difficult
  kitti  --labels/<image stem>.txt, 15 fields a line (type truncated occluded alpha x1 y1 x2 y2 h w l x y z
         rotation_y; a 16th score allowed), x1..y2 in pixels; DontCare skipped; class names compared
         case-insensitively (categories named as in --classes, else in lower case)
  yolo   --labels/<image stem>.txt, 'class cx cy w h' normalised to [0, 1]; class k becomes category k + 1;
         names from --classes (a text file or a data.yaml with names), else --labels/classes.txt, else class_<k>

A box crossing the image border is clipped (counted when by more than --tolerance pixels). A malformed
line, an unknown class, a box outside its image, a label file without an image or an unreadable image
stops the conversion with one line naming the file and line; nothing is written then.

example:
  ddetr convert voc --images VOC/JPEGImages --labels VOC/Annotations --classes classes.txt -o train.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convert`` sub-command's arguments (called by :mod:`ddetr.cli`)."""
    from ddetr.data.formats import DEFAULT_TOLERANCE, FORMATS

    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("format", choices=FORMATS, help="layout of the labels (see formats above)")
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder of the images (sub-folders included)"
    )
    parser.add_argument(
        "--labels", required=True, metavar="DIR", help="folder of the label files (.xml or .txt)"
    )
    parser.add_argument(
        "--classes",
        metavar="FILE",
        default=None,
        help="class names, one per line: line 1 is category id 1 (YOLO class 0); YOLO also takes a "
        "data.yaml with 'names'. Default: the sorted names found in the labels (YOLO: see above)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.json",
        help="the COCO json to write (replaced if it exists)",
    )
    parser.add_argument(
        "--classmap",
        metavar="FILE",
        default=None,
        help="also write the class names, one per line, for dataset.infer_data_sources.classmap",
    )
    parser.add_argument(
        "--drop-difficult", action="store_true", help="voc: leave out objects marked <difficult>1</difficult>"
    )
    parser.add_argument(
        "--skip-unlisted",
        action="store_true",
        help="voc/kitti with --classes: leave out (and count) objects of classes not in the file instead of "
        "stopping, e.g. to keep only Car and Pedestrian from KITTI",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="PX",
        help=f"pixels a box may cross the image border before it is counted as clipped (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run_convert(
    fmt: str,
    images: str | Path,
    labels: str | Path,
    output: str | Path,
    *,
    classes: str | Path | None = None,
    classmap: str | Path | None = None,
    drop_difficult: bool = False,
    skip_unlisted: bool = False,
    tolerance: float = 1.0,
) -> dict[str, Any]:
    """Convert, write ``output`` (and ``classmap``) atomically, and return the summary.

    Returns:
        ``images``, ``images_without_labels``, ``boxes``, ``boxes_per_class`` (name -> count, id order),
        ``num_classes``, ``clipped``, ``skipped`` (reason -> count), ``size_mismatch``, ``output``, ``classmap``
        (the file that can serve as ``dataset.infer_data_sources.classmap``, or None).

    Raises:
        DataError: bad input (one line naming the file and line) or an output that cannot be written.
    """
    from ddetr.data.formats import convert_labels, read_class_names
    from ddetr.fileio import atomic_write_text

    if tolerance < 0:
        raise DataError(f"--tolerance must be >= 0 pixels, got {tolerance:g}.")
    names = read_class_names(classes) if classes else None
    conversion = convert_labels(
        fmt,  # type: ignore[arg-type]
        images,
        labels,
        names,
        drop_difficult=drop_difficult,
        skip_unlisted=skip_unlisted,
        tolerance=tolerance,
    )
    try:
        atomic_write_text(output, json.dumps(conversion.coco))
        if classmap:
            atomic_write_text(classmap, "".join(f"{n}\n" for n in conversion.class_names))
    except OSError as exc:
        raise DataError(f"Cannot write '{exc.filename or output}': {exc.strerror or exc}.") from None
    usable_classmap = classmap or (
        classes if classes and Path(classes).suffix.lower() not in (".yaml", ".yml") else None
    )
    return {
        "format": fmt,
        "output": str(output),
        "images": len(conversion.coco["images"]),
        "images_without_labels": conversion.images_without_labels,
        "boxes": len(conversion.coco["annotations"]),
        "boxes_per_class": conversion.boxes_per_class(),
        "num_classes": conversion.num_classes,
        "clipped": conversion.clipped,
        "size_mismatch": conversion.size_mismatch,
        "skipped": dict(conversion.skipped),
        "examples": {k: list(v) for k, v in conversion.examples.items()},
        "classmap": str(usable_classmap) if usable_classmap else None,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The few lines ``ddetr convert`` prints at the end."""
    per_class = summary["boxes_per_class"]
    width = max((len(n) for n in per_class), default=5)
    lines = [
        f"{summary['format'].upper()} -> {summary['output']}: {summary['images']} images "
        f"({summary['images_without_labels']} without a label file, kept without boxes), {summary['boxes']} boxes",
        *(
            f"  {i:>3}  {name:<{width}}  {count}"
            for i, (name, count) in enumerate(per_class.items(), start=1)
        ),
    ]
    notes = [f"{count} {reason}" for reason, count in summary["skipped"].items()]
    if notes:
        lines.append("left out: " + ", ".join(notes))
    if summary["clipped"]:
        example = summary["examples"].get("clipped", [""])[0]
        lines.append(f"clipped to the image: {summary['clipped']} boxes (e.g. {example})")
    if summary["size_mismatch"]:
        example = summary["examples"].get("size mismatch", [""])[0]
        lines.append(
            f"<size> differs from the image in {summary['size_mismatch']} files, image size used (e.g. {example})"
        )
    lines.append(
        f"spec: dataset.num_classes: {summary['num_classes']}   ({len(per_class)} classes, id 0 unused)"
    )
    if summary["classmap"]:
        lines.append(f"spec: dataset.infer_data_sources.classmap: {summary['classmap']}")
    else:
        lines.append(
            "classmap for inference (one name per line; --classmap FILE writes it): " + ", ".join(per_class)
        )
    return lines


def main(args: argparse.Namespace) -> int:
    """``ddetr convert`` from parsed arguments; errors propagate to the CLI as :class:`DataError`."""
    from rich.console import Console

    summary = run_convert(
        args.format,
        args.images,
        args.labels,
        args.output,
        classes=args.classes,
        classmap=args.classmap,
        drop_difficult=args.drop_difficult,
        skip_unlisted=args.skip_unlisted,
        tolerance=args.tolerance,
    )
    console = Console(soft_wrap=True, markup=False, highlight=False)
    for line in summary_lines(summary):
        console.print(line)
    return 0
