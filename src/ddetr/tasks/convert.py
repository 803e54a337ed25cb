"""``ddetr convert {voc,kitti,yolo}``: a folder of labels -> one COCO json (no spec).

The readers live in :mod:`ddetr.data.formats`; this task writes the json (and the classmap) atomically and
returns what a user needs next: counts, ``dataset.num_classes`` and the classmap
(:meth:`~ddetr.tasks.results.ConvertResult.lines` is what the command prints).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ddetr.errors import DataError
from ddetr.tasks.results import ConvertResult

logger = logging.getLogger(__name__)


def run(
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
) -> ConvertResult:
    """Convert, write ``output`` (and ``classmap``) atomically, and return the summary.

    Args:
        fmt: ``voc``, ``kitti`` or ``yolo`` (the layouts: ``ddetr convert --help``).
        images: the folder of the images (sub-folders included).
        labels: the folder of the label files.
        output: the COCO json to write (replaced if it exists).
        classes: class names, one per line (YOLO also takes a data.yaml with ``names``); default: the sorted
            names found in the labels (YOLO: ``labels/classes.txt``, else ``class_<k>``).
        classmap: also write the class names here, one per line.
        drop_difficult: VOC: leave out objects marked difficult.
        skip_unlisted: VOC/KITTI with ``classes``: leave out objects of other classes instead of stopping.
        tolerance: pixels a box may cross the image border before it is counted as clipped.

    Returns:
        Counts (images, boxes, boxes per class in id order, clipped, skipped per reason), ``num_classes`` and
        the file that can serve as ``dataset.infer_data_sources.classmap`` (or None).

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
    return ConvertResult(
        format=fmt,
        output=Path(output),
        images=len(conversion.coco["images"]),
        images_without_labels=conversion.images_without_labels,
        boxes=len(conversion.coco["annotations"]),
        boxes_per_class=dict(conversion.boxes_per_class()),
        num_classes=conversion.num_classes,
        clipped=conversion.clipped,
        size_mismatch=conversion.size_mismatch,
        skipped=dict(conversion.skipped),
        examples={k: list(v) for k, v in conversion.examples.items()},
        classmap=Path(usable_classmap) if usable_classmap else None,
    )
