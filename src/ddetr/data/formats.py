"""Detection labels in Pascal VOC, KITTI or YOLO layout -> one COCO detection dict.

Each reader takes an image folder, a label folder and (optionally) the class names, reads everything, and
returns a :class:`Conversion` whose ``coco`` is ready for ``json.dump``; nothing is written. Shared rules:

- Categories get ids 1..N in the order of ``class_names`` (id 0 stays unused, as TAO's Deformable DETR
  expects, so ``dataset.num_classes`` is N + 1). Without names, VOC and KITTI use the sorted names found in
  the labels; YOLO uses ``class_<k>`` for every index up to the largest one found.
- Every image under the image folder (sub-folders included) becomes a COCO image, ids 1..M in sorted
  ``file_name`` order, ``file_name`` relative to the image folder. Width and height come from the image
  header (EXIF rotation applied, as :func:`ddetr.data.coco.image_size`). An image without a label file is
  kept, without boxes, and counted.
- Boxes become COCO ``[x, y, w, h]`` in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``).
  A box that crosses the image border is clipped to it; one that crosses by more than ``tolerance`` pixels
  is also counted (:attr:`Conversion.clipped`). A zero-width or zero-height box is skipped and counted.
- Bad input raises :class:`~ddetr.errors.DataError` with one line naming the file (and line, or object
  number for VOC): a malformed line, an unknown class, a box with nothing inside the image, a label file
  without its image, an image that cannot be read.

Formats:

- **VOC**: one XML per image anywhere under the label folder; ``<filename>`` names the image (else the
  XML's own name is used); ``<object>`` has ``<name>``, ``<difficult>`` and ``<bndbox>`` with 1-based
  inclusive pixel indices, so ``x = xmin - 1`` and ``w = xmax - xmin + 1`` (same for y, h). Class names
  are compared exactly. ``difficult`` objects are kept (with ``"difficult": 1``) unless ``drop_difficult``.
- **KITTI**: ``<label folder>/<image stem>.txt`` (sub-folders mirror the image folder), one object per
  line with 15 fields (type, truncated, occluded, alpha, x1 y1 x2 y2, 3D height width length, 3D location
  x y z, rotation_y) or 16 (a trailing score, as ``ddetr inference`` writes). ``x1 y1 x2 y2`` are pixel
  corners: ``x = x1``, ``w = x2 - x1``. Class names are compared case-insensitively (KITTI writes
  ``Car``, TAO specs usually ``car``): a category is named as in ``class_names``, else in lower case.
  ``DontCare`` regions are skipped and counted.
- **YOLO**: ``<label folder>/<image stem>.txt``, one ``class cx cy w h`` line per object, class a 0-based
  index and the box normalised to [0, 1] by the image size. YOLO class ``k`` becomes category ``k + 1``.
  A ``classes.txt`` in the label folder (LabelImg writes one) is read as the class names when none are given.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddetr.data.annotations import IMAGE_SUFFIXES, clip_box, find_images, image_size
from ddetr.errors import DataError

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "Conversion",
    "convert_labels",
    "kitti_to_coco",
    "list_images",
    "read_class_names",
    "voc_to_coco",
    "yolo_to_coco",
]

Format = Literal["voc", "kitti", "yolo"]
FORMATS: tuple[str, ...] = ("voc", "kitti", "yolo")
DEFAULT_TOLERANCE = 1.0  # pixels a box may cross the image border without being counted as clipped
_KITTI_FIELDS = (15, 16)
_MAX_EXAMPLES = 5


@dataclass
class Conversion:
    """The result of a conversion.

    Attributes:
        coco: the COCO detection dict (``info``, ``licenses``, ``images``, ``annotations``, ``categories``).
        images_without_labels: images that had no label file (kept, without boxes).
        clipped: boxes that crossed the image border by more than the tolerance (clipped to it).
        size_mismatch: VOC files whose ``<size>`` disagrees with the image (the image's size is used).
        skipped: reason -> number of objects left out (``DontCare``, ``difficult``, ``unlisted class``,
            ``zero size``).
        examples: reason (``clipped``, a ``skipped`` reason, ``size mismatch``) -> a few ``file:line`` places.
    """

    coco: dict[str, Any]
    images_without_labels: int = 0
    clipped: int = 0
    size_mismatch: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Category names in id order (id 1 first)."""
        return [c["name"] for c in sorted(self.coco["categories"], key=lambda c: c["id"])]

    @property
    def num_classes(self) -> int:
        """``dataset.num_classes`` for these categories: the largest id + 1."""
        return max((int(c["id"]) for c in self.coco["categories"]), default=0) + 1

    def boxes_per_class(self) -> dict[str, int]:
        """Category name -> number of boxes, in id order (classes without boxes included, as 0)."""
        counts = Counter(int(a["category_id"]) for a in self.coco["annotations"])
        return {c["name"]: counts.get(int(c["id"]), 0) for c in sorted(self.coco["categories"], key=_id)}

    def _note(self, reason: str, where: str) -> None:
        listed = self.examples.setdefault(reason, [])
        if len(listed) < _MAX_EXAMPLES:
            listed.append(where)


def _id(category: dict[str, Any]) -> int:
    return int(category["id"])


@dataclass
class _Object:
    """One labelled box before category ids are known: corners in pixels of the displayed image."""

    label: str | int
    x1: float
    y1: float
    x2: float
    y2: float
    where: str
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- files and names


def list_images(image_dir: str | Path) -> dict[str, Path]:
    """Every image file under ``image_dir`` (sub-folders included, hidden files not).

    Returns:
        POSIX path relative to ``image_dir`` -> file, in sorted order.

    Raises:
        DataError: the folder does not exist or holds no image.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"Image folder '{image_dir}' does not exist or is not a folder.")
    found = {p.relative_to(root).as_posix(): p for p in find_images(root)}
    if not found:
        raise DataError(f"Image folder '{image_dir}' holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return dict(sorted(found.items()))


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line, blank lines ignored) or a YOLO ``data.yaml``.

    The first name gets category id 1 (YOLO class 0), and so on. In a YAML file, ``names`` is a list or a
    mapping ``{0: name, 1: name, ...}`` with indices 0..N-1.

    Raises:
        DataError: the file is missing, empty, has no ``names``, or lists a name twice.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Class names file '{path}' does not exist.")
    if p.suffix.lower() in (".yaml", ".yml"):
        names = _yaml_names(p)
        places = [f"{p}: names[{i}]" for i in range(len(names))]
    else:
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"Class names file '{path}' is not UTF-8 text ({exc.reason}).") from None
        numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
        names = [name for _, name in numbered]
        places = [f"{p}:{n}" for n, _ in numbered]
    if not names:
        raise DataError(f"Class names file '{path}' lists no class.")
    first: dict[str, str] = {}
    for name, where in zip(names, places):
        if name in first:
            raise DataError(f"{where}: class '{name}' is listed twice (first at {first[name]}).")
        first[name] = where
    return names


def _yaml_names(path: Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(
            f"Class names file '{path}' is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0, 1, ...") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys must be 0..{len(keys) - 1} without gaps, got {keys}.")
        by_index = {int(k): v for k, v in names.items()}
        names = [by_index[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: expected a 'names' list (or mapping index -> name) of the classes.")
    return [str(n).strip() for n in names]


def _by_stem(images: dict[str, Path]) -> dict[str, list[str]]:
    """Relative path without suffix -> relative image names sharing it (a.jpg and a.png both under 'a')."""
    out: dict[str, list[str]] = {}
    for rel in images:
        out.setdefault(rel.rsplit(".", 1)[0], []).append(rel)
    return out


def _image_for(stem: str, stems: dict[str, list[str]], label: Path, image_dir: Path) -> str:
    found = stems.get(stem, [])
    if not found:
        raise DataError(
            f"{label}: label file without an image: no {stem}{{{','.join(IMAGE_SUFFIXES)}}} in '{image_dir}'."
        )
    if len(found) > 1:
        raise DataError(f"{label}: more than one image matches this label file: {', '.join(found)}.")
    return found[0]


def _label_files(label_dir: str | Path, suffix: str) -> list[Path]:
    root = Path(label_dir)
    if not root.is_dir():
        raise DataError(f"Label folder '{label_dir}' does not exist or is not a folder.")
    files = sorted(p for p in root.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"Label folder '{label_dir}' holds no {suffix} label file.")
    return files


def _sizes(images: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """Relative name -> (height, width) from each header; an unreadable image is an error."""
    sizes: dict[str, tuple[int, int]] = {}
    for rel, path in images.items():
        size = image_size(path)
        if size is None:
            raise DataError(f"{path}: image cannot be read (corrupt, or a format PIL does not know).")
        sizes[rel] = size
    return sizes


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {what} is not a number: {text!r}.") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} is not a finite number: {text!r}.")
    return value


# ----------------------------------------------------------------------------- readers


def voc_to_coco(
    image_dir: str | Path,
    label_dir: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    drop_difficult: bool = False,
    skip_unlisted: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Conversion:
    """Pascal VOC XML files -> COCO (see the module docstring for the conventions).

    Args:
        image_dir: folder of the images.
        label_dir: folder of the ``.xml`` files (sub-folders included).
        class_names: category names in id order (id 1 first); None: the sorted names found.
        drop_difficult: leave out objects marked ``<difficult>1</difficult>`` (counted).
        skip_unlisted: with ``class_names``, leave out objects of other classes (counted) instead of failing.
        tolerance: pixels a box may cross the image border before it is counted as clipped.

    Raises:
        DataError: one line naming the file and object for any bad input.
    """
    images = list_images(image_dir)
    sizes = _sizes(images)
    stems = _by_stem(images)
    objects: dict[str, list[_Object]] = {}
    owner: dict[str, Path] = {}
    result = Conversion(coco={})
    dropped_names: set[str] = set()
    label_root = Path(label_dir)
    for xml_file in _label_files(label_dir, ".xml"):
        root = _parse_xml(xml_file)
        rel = _voc_image(root, xml_file, label_root, images, stems, Path(image_dir))
        if rel in owner:
            raise DataError(f"{xml_file}: image '{rel}' is already labelled by {owner[rel]}.")
        owner[rel] = xml_file
        h, w = sizes[rel]
        declared = (_int_text(root, "size/width"), _int_text(root, "size/height"))
        if all(declared) and declared != (w, h):
            result.size_mismatch += 1
            result._note("size mismatch", f"{xml_file}: <size> {declared[0]}x{declared[1]}, image {w}x{h}")
        found: list[_Object] = []
        for number, obj in enumerate(root.findall("object"), start=1):
            where = f"{xml_file}: object {number}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DataError(f"{where}: <name> is missing or empty.")
            difficult = _difficult(obj, where)
            if difficult and drop_difficult:
                dropped_names.add(name)  # still a class: ids do not depend on --drop-difficult
                result.skipped["difficult"] = result.skipped.get("difficult", 0) + 1
                result._note("difficult", where)
                continue
            box = obj.find("bndbox")
            if box is None:
                raise DataError(f"{where} ({name}): <bndbox> is missing.")
            xmin, ymin, xmax, ymax = (
                _number((box.findtext(tag) or "").strip(), f"{where} ({name})", f"<{tag}>")
                for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            # 1-based inclusive indices -> continuous corners: pixel xmin..xmax covers [xmin - 1, xmax)
            found.append(_Object(name, xmin - 1, ymin - 1, xmax, ymax, where, {"difficult": int(difficult)}))
        objects[rel] = found
    return _assemble(
        "voc", images, sizes, objects, result, class_names, str.strip, skip_unlisted, tolerance, dropped_names
    )


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        raise DataError(f"{path}:{line}: not valid XML (column {column}).") from None


def _int_text(root: ET.Element, path: str) -> int:
    text = (root.findtext(path) or "").strip()
    try:
        return int(float(text))
    except ValueError:
        return 0


def _difficult(obj: ET.Element, where: str) -> bool:
    text = (obj.findtext("difficult") or "0").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise DataError(f"{where}: <difficult> must be 0 or 1, got {text!r}.")


def _voc_image(
    root: ET.Element,
    xml_file: Path,
    label_root: Path,
    images: dict[str, Path],
    stems: dict[str, list[str]],
    image_dir: Path,
) -> str:
    """The image an XML file labels: its ``<filename>``, else the XML's own name."""
    filename = (root.findtext("filename") or "").strip().replace("\\", "/")
    if filename in images:
        return filename
    own_stem = xml_file.relative_to(label_root).with_suffix("").as_posix()
    for stem in (filename.rsplit(".", 1)[0] if "." in filename else filename, own_stem):
        if len(stems.get(stem, [])) == 1:
            return stems[stem][0]
    named = f"<filename> '{filename}'" if filename else "no <filename>"
    raise DataError(f"{xml_file}: label file without an image ({named}; nothing matching in '{image_dir}').")


def kitti_to_coco(
    image_dir: str | Path,
    label_dir: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    skip_unlisted: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Conversion:
    """KITTI object label files -> COCO (see the module docstring for the conventions).

    Args:
        image_dir: folder of the images (e.g. KITTI's ``image_2``).
        label_dir: folder of ``<image stem>.txt`` files (e.g. ``label_2``).
        class_names: category names in id order, matched case-insensitively; None: the sorted names found,
            lower-cased.
        skip_unlisted: with ``class_names``, leave out objects of other types (counted) instead of failing.
        tolerance: pixels a box may cross the image border before it is counted as clipped.

    Raises:
        DataError: one line naming the file and line for any bad input.
    """
    images = list_images(image_dir)
    sizes = _sizes(images)
    stems = _by_stem(images)
    result = Conversion(coco={})
    objects: dict[str, list[_Object]] = {}
    label_root = Path(label_dir)
    for label in _label_files(label_dir, ".txt"):
        rel = _image_for(
            label.relative_to(label_root).with_suffix("").as_posix(), stems, label, Path(image_dir)
        )
        found: list[_Object] = []
        for number, line in _lines(label):
            where = f"{label}:{number}"
            parts = line.split()
            if len(parts) not in _KITTI_FIELDS:
                raise DataError(
                    f"{where}: expected 15 fields (type truncated occluded alpha x1 y1 x2 y2 h w l x y z "
                    f"rotation_y, optionally a 16th score), got {len(parts)}."
                )
            values = [_number(v, where, f"field {i}") for i, v in enumerate(parts[1:], start=2)]
            if parts[0].lower() == "dontcare":
                result.skipped["DontCare"] = result.skipped.get("DontCare", 0) + 1
                continue
            x1, y1, x2, y2 = values[3:7]
            found.append(_Object(parts[0], x1, y1, x2, y2, where))
        objects[rel] = found
    return _assemble(
        "kitti", images, sizes, objects, result, class_names, str.lower, skip_unlisted, tolerance
    )


def yolo_to_coco(
    image_dir: str | Path,
    label_dir: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Conversion:
    """YOLO label files -> COCO (see the module docstring for the conventions).

    Args:
        image_dir: folder of the images.
        label_dir: folder of ``<image stem>.txt`` files.
        class_names: names of YOLO classes 0, 1, ... (category ids 1, 2, ...); None: ``classes.txt`` in the
            label folder if there is one, else ``class_<k>``.
        tolerance: pixels a box may cross the image border before it is counted as clipped.

    Raises:
        DataError: one line naming the file and line for any bad input, e.g. a class index with no name.
    """
    images = list_images(image_dir)
    sizes = _sizes(images)
    stems = _by_stem(images)
    result = Conversion(coco={})
    objects: dict[str, list[_Object]] = {}
    label_root = Path(label_dir)
    labels = _label_files(label_dir, ".txt")
    classes_txt = label_root / "classes.txt"
    if classes_txt in labels and "classes" not in stems:  # LabelImg's class list, not a label file
        labels.remove(classes_txt)
        if class_names is None:
            class_names = read_class_names(classes_txt)
    for label in labels:
        rel = _image_for(
            label.relative_to(label_root).with_suffix("").as_posix(), stems, label, Path(image_dir)
        )
        h, w = sizes[rel]
        found: list[_Object] = []
        for number, line in _lines(label):
            where = f"{label}:{number}"
            parts = line.split()
            if len(parts) != 5:
                raise DataError(
                    f"{where}: expected 5 fields 'class cx cy w h', got {len(parts)} (segmentation polygons "
                    "are not supported)."
                )
            index = _number(parts[0], where, "class")
            if index < 0 or index != int(index):
                raise DataError(f"{where}: class must be an index 0, 1, ..., got {parts[0]!r}.")
            cx, cy, bw, bh = (_number(v, where, n) for v, n in zip(parts[1:], ("cx", "cy", "w", "h")))
            if bw < 0 or bh < 0:
                raise DataError(f"{where}: negative box width or height ({bw}, {bh}).")
            x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h
            found.append(_Object(int(index), x1, y1, x1 + bw * w, y1 + bh * h, where))
        objects[rel] = found
    return _assemble("yolo", images, sizes, objects, result, class_names, None, False, tolerance)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a label file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}).") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


# ----------------------------------------------------------------------------- assembly


def _assemble(
    fmt: str,
    images: dict[str, Path],
    sizes: dict[str, tuple[int, int]],
    objects: dict[str, list[_Object]],
    result: Conversion,
    class_names: Sequence[str] | None,
    key: Callable[[str], str] | None,
    skip_unlisted: bool,
    tolerance: float,
    also_named: set[str] | None = None,
) -> Conversion:
    """Category ids, clipping and counting shared by every format; fills ``result.coco``.

    ``key`` maps a class name to what is compared (None: YOLO indices, category id = index + 1);
    ``also_named`` are names of objects left out that still count as classes when none are given.
    """
    every = [obj for found in objects.values() for obj in found]
    if key is None:  # YOLO: indices
        top = max((int(o.label) for o in every), default=-1)
        names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(top + 1)]
        ids: dict[Any, int] = {k: k + 1 for k in range(len(names))}
    else:
        found = {key(str(o.label)) for o in every} | {key(n) for n in also_named or ()}
        names = list(class_names) if class_names is not None else sorted(found)
        ids = {}
        for i, name in enumerate(names, start=1):
            if key(name) in ids:
                raise DataError(f"Class '{name}' is listed twice (compared as '{key(name)}').")
            ids[key(name)] = i
    coco: dict[str, Any] = {
        "info": {"description": f"converted from {fmt.upper()} labels by ddetr"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(names, start=1)],
    }
    for image_id, (rel, _path) in enumerate(images.items(), start=1):
        h, w = sizes[rel]
        coco["images"].append({"id": image_id, "file_name": rel, "width": w, "height": h})
        if rel not in objects:
            result.images_without_labels += 1
            continue
        for obj in objects[rel]:
            label = obj.label if key is None else key(str(obj.label))
            if label not in ids:
                if skip_unlisted:
                    result.skipped["unlisted class"] = result.skipped.get("unlisted class", 0) + 1
                    result._note("unlisted class", f"{obj.where} ({obj.label})")
                    continue
                raise DataError(_unknown_class(obj, names, key is None))
            corners = _clip(obj, w, h, tolerance, result)
            if corners is None:
                continue
            x1, y1, x2, y2 = corners
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    **obj.extra,
                }
            )
    result.coco = coco
    return result


def _unknown_class(obj: _Object, names: list[str], index: bool) -> str:
    if index:
        return (
            f"{obj.where}: unknown class id {obj.label}: the class names list {len(names)} classes "
            f"(ids 0..{len(names) - 1}); give the names with --classes."
        )
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return (
        f"{obj.where}: unknown class '{obj.label}' (the class names are: {shown}); add it to the class names, "
        "or leave such objects out with --skip-unlisted."
    )


def _clip(
    obj: _Object, w: int, h: int, tolerance: float, result: Conversion
) -> tuple[float, float, float, float] | None:
    """Corners clipped to the ``w`` x ``h`` image; None (counted) for a zero-size box. Raises when inverted or outside."""
    if obj.x2 < obj.x1 or obj.y2 < obj.y1:
        raise DataError(
            f"{obj.where}: box corners are inverted (x1 {obj.x1:g} y1 {obj.y1:g} x2 {obj.x2:g} y2 {obj.y2:g})."
        )
    if obj.x2 == obj.x1 or obj.y2 == obj.y1:
        result.skipped["zero size"] = result.skipped.get("zero size", 0) + 1
        result._note("zero size", obj.where)
        return None
    corners, _ = clip_box([obj.x1, obj.y1, obj.x2 - obj.x1, obj.y2 - obj.y1], w, h)
    if corners is None:
        raise DataError(
            f"{obj.where}: box (x1 {obj.x1:g} y1 {obj.y1:g} x2 {obj.x2:g} y2 {obj.y2:g}) lies outside the "
            f"{w}x{h} image."
        )
    overshoot = max(-obj.x1, -obj.y1, obj.x2 - w, obj.y2 - h)
    if overshoot > tolerance:
        result.clipped += 1
        result._note("clipped", f"{obj.where} (by {overshoot:g} px)")
    return corners


def convert_labels(
    fmt: Format,
    image_dir: str | Path,
    label_dir: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    drop_difficult: bool = False,
    skip_unlisted: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Conversion:
    """Dispatch to :func:`voc_to_coco`, :func:`kitti_to_coco` or :func:`yolo_to_coco`.

    Options that do not apply to a format (``drop_difficult`` outside VOC, ``skip_unlisted`` for YOLO) are
    errors when set, so a user is never left thinking they took effect.
    """
    if fmt not in FORMATS:
        raise DataError(f"Unknown label format '{fmt}'; expected one of {', '.join(FORMATS)}.")
    if drop_difficult and fmt != "voc":
        raise DataError("--drop-difficult applies to VOC labels only.")
    if skip_unlisted and fmt == "yolo":
        raise DataError("--skip-unlisted applies to VOC and KITTI labels (YOLO classes are indices).")
    if skip_unlisted and class_names is None:
        raise DataError("--skip-unlisted needs the class names (--classes FILE).")
    if fmt == "voc":
        return voc_to_coco(
            image_dir, label_dir, class_names, drop_difficult=drop_difficult, skip_unlisted=skip_unlisted,
            tolerance=tolerance,
        )  # fmt: skip
    if fmt == "kitti":
        return kitti_to_coco(
            image_dir, label_dir, class_names, skip_unlisted=skip_unlisted, tolerance=tolerance
        )
    return yolo_to_coco(image_dir, label_dir, class_names, tolerance=tolerance)
