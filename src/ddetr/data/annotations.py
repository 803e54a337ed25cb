"""COCO annotation helpers that need neither torch nor a dataset: parsing, image size, box clipping, ids.

Shared by the training dataset (:mod:`ddetr.data.coco`), the label converters (:mod:`ddetr.data.formats`)
and ``ddetr dataset``'s checks, so that all three apply the same rules; importing this module stays cheap.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from ddetr.errors import DataError

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_SUFFIXES",
    "bad_category_ids",
    "check_file_name",
    "clip_box",
    "find_images",
    "image_size",
    "read_coco_json",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File name endings (lower case) taken as images when a folder is listed."""


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (sub-folders included, hidden files not), sorted by path."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, UnidentifiedImageError)
"""What PIL raises on a corrupt, truncated or foreign file."""


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) in pixels as displayed (EXIF rotation applied), read from the file header only.

    A PNG's EXIF is read only when its eXIf chunk comes before the pixels (PIL would decode the whole image
    to look for one after them).

    Returns:
        None when the file cannot be opened as an image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            exif_in_header = im.format != "PNG" or "exif" in im.info
            if exif_in_header and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations swapping sides
                w, h = h, w
        return h, w
    except DECODE_ERRORS:
        return None


def clip_box(
    bbox: Sequence[float], width: float, height: float
) -> tuple[tuple[float, float, float, float] | None, bool]:
    """Clip a COCO box to the image.

    Args:
        bbox: ``[x, y, w, h]`` in pixels (top-left corner, width, height).
        width, height: the image size in pixels.

    Returns:
        ``((x1, y1, x2, y2), clipped)``: the corners inside the image and whether clipping moved any of them;
        ``(None, clipped)`` when nothing is left (``w`` or ``h`` <= 0, or the box lies outside the image).
    """
    x, y, bw, bh = (float(v) for v in bbox)
    if bw <= 0 or bh <= 0:
        return None, False
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + bw, float(width)), min(y + bh, float(height))
    clipped = (x1, y1, x2, y2) != (x, y, x + bw, y + bh)
    if x2 <= x1 or y2 <= y1:
        return None, clipped
    return (x1, y1, x2, y2), clipped


def bad_category_ids(data: dict[str, Any], num_classes: int) -> list[int]:
    """Sorted distinct category ids (declared or used) outside ``0 .. num_classes - 1``."""
    ids = {int(c["id"]) for c in data["categories"]} | {int(a["category_id"]) for a in data["annotations"]}
    return sorted(i for i in ids if i < 0 or i >= num_classes)


def _fail(json_file: str, what: str) -> DataError:
    return DataError(f"Annotation file '{json_file}' is not COCO detection json: {what}.")


def check_file_name(json_file: str, index: int, image: dict[str, Any]) -> str:
    """The ``file_name`` of ``images[index]``, refused when it could name a file outside ``image_dir``.

    The check is on the text alone, before anything is opened: an absolute path (POSIX or Windows), a
    ``..`` that climbs above ``image_dir``, an empty name or a NUL character is refused. Symbolic links
    inside ``image_dir`` are followed as the file system does (the folder's owner put them there).

    Args:
        json_file: the annotation file, for the message.
        index: position of the entry in ``images``.
        image: the entry (``id``, ``file_name``, ...).

    Returns:
        ``file_name`` as text, to join to ``image_dir``.

    Raises:
        DataError: one line naming the json file, the entry and the file name.
    """
    name = str(image["file_name"])
    posix = name.replace("\\", "/")
    normal = posixpath.normpath(posix) if posix else ""
    escapes = (
        not name.strip()
        or "\0" in name
        or PurePosixPath(posix).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or bool(PureWindowsPath(name).drive)
        or normal == ".."
        or normal.startswith("../")
    )
    if escapes:
        raise DataError(
            f"Annotation file '{json_file}': images[{index}] (id {image.get('id')!r}) has file_name {name!r}, "
            "which is not a relative path inside image_dir (absolute, empty or climbing out with '..'); "
            "refused without opening it."
        )
    return name


def read_coco_json(json_file: str, local: Path) -> dict[str, Any]:
    """Load and structurally check a COCO json (``images``, ``annotations``, ``categories``).

    Every ``file_name`` passes :func:`check_file_name`, so neither training nor ``ddetr dataset`` ever opens
    a file outside ``image_dir``.
    """
    try:
        with open(local, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(json_file, f"invalid JSON ({exc})") from exc
    except RecursionError:
        raise _fail(json_file, "invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise _fail(json_file, f"top level is a {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(json_file, f"missing list '{key}'")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise _fail(json_file, f"images[{i}] has no 'id' or 'file_name'")
        check_file_name(json_file, i, img)
    for i, ann in enumerate(data["annotations"]):
        missing = [
            k for k in ("image_id", "bbox", "category_id") if not isinstance(ann, dict) or k not in ann
        ]
        if missing:
            raise _fail(json_file, f"annotations[{i}] has no {', '.join(repr(m) for m in missing)}")
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise _fail(json_file, f"annotations[{i}] bbox is not [x, y, w, h]")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise _fail(json_file, f"categories[{i}] has no 'id'")
    return data


def check_field_types(json_file: str, data: dict[str, Any]) -> None:
    """Refuse entries whose fields have the wrong type for training and evaluation (after :func:`read_coco_json`).

    Ids are integers, ``file_name`` a string, ``bbox`` four numbers, sizes and ``area`` numbers, ``iscrowd``
    0/1. ``ddetr dataset`` reports such entries one by one instead; the datasets that train and evaluate
    need every entry usable.

    Raises:
        DataError: one line naming the file, the entry, the field and its value.
    """
    for i, img in enumerate(data["images"]):
        _check_types(json_file, f"images[{i}]", img, {"id": _INT, "width": _SIZE, "height": _SIZE})
        if not isinstance(img["file_name"], str):
            raise _fail(json_file, f"images[{i}] file_name {img['file_name']!r} is not a string")
    for i, ann in enumerate(data["annotations"]):
        if not all(_is_number(v) for v in ann["bbox"]):
            raise _fail(json_file, f"annotations[{i}] bbox {ann['bbox']!r} is not [x, y, w, h] numbers")
        kinds = {"image_id": _INT, "category_id": _INT, "iscrowd": _FLAG, "area": _SIZE}
        _check_types(json_file, f"annotations[{i}]", ann, kinds)
    for i, cat in enumerate(data["categories"]):
        _check_types(json_file, f"categories[{i}]", cat, {"id": _INT})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what an entry's fields may hold: (test, words for the message); absent fields are not checked here
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
_SIZE = (lambda v: v is None or _is_number(v), "a number")
_FLAG = (lambda v: v is None or isinstance(v, (bool, int)), "0 or 1")


def _check_types(json_file: str, where: str, entry: dict[str, Any], kinds: dict[str, Any]) -> None:
    for key, (test, words) in kinds.items():
        if key in entry and not test(entry[key]):
            raise _fail(json_file, f"{where} {key} {entry[key]!r} is not {words}")
