"""COCO detection dataset: parse, check, map ids, load images robustly.

``category_id`` is the logit index (docs/SPEC.md: ``num_classes`` = largest category id + 1, id 0 unused in
COCO-style files). Several sources concatenate; image ids are renumbered 1..N over all sources (the mapping
back to each source's own ids is kept) and :attr:`CocoDetection.coco_gt` is the merged ground truth, in the
new ids, that :class:`ddetr.eval.coco.CocoEvaluator` scores against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ddetr.data.annotations import (
    DECODE_ERRORS,
    bad_category_ids,
    check_field_types,
    clip_box,
    image_size,
    read_coco_json,
)
from ddetr.data.sources import resolve_file, resolve_image_dir
from ddetr.data.transforms import ToModelInput, to_bounding_boxes
from ddetr.errors import DataError
from ddetr.model.preprocess import load_image
from ddetr.spec.sections import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


def _check_category_ids(json_file: str, data: dict[str, Any], num_classes: int) -> None:
    ids = bad_category_ids(data, num_classes)
    if not ids:
        return
    if min(ids) < 0:
        raise DataError(f"Annotation file '{json_file}' has a negative category_id {min(ids)}.")
    if max(ids) >= num_classes:
        raise DataError(
            f"Annotation file '{json_file}' has category_id {max(ids)} but dataset.num_classes is "
            f"{num_classes}; set dataset.num_classes: {max(ids) + 1} (largest category id + 1)."
        )


def _image_size(rec: dict[str, Any], path: Path) -> tuple[int, int] | None:
    """(height, width) from the json, else from the file header; None if unreadable."""
    if rec.get("width") and rec.get("height"):
        return int(rec["height"]), int(rec["width"])
    return image_size(path)


class CocoDetection(Dataset):
    """COCO-format detection dataset over one or more (image_dir, json_file) sources.

    Args:
        sources: (image_dir, json_file) pairs; each may be local, an archive or a remote URL
            (see :mod:`ddetr.data.sources`). Sources concatenate in order.
        num_classes: ``dataset.num_classes`` (largest category id + 1).
        transforms: ``(PIL image, target) -> (Tensor[3, H, W], target)``, e.g. from
            :func:`ddetr.data.transforms.build_transforms`; None: no resize, ImageNet normalisation.
        train: training targets drop iscrowd boxes; validation targets keep them flagged in ``iscrowd``.
        cache_dir: cache root for archives and remote files.

    Raises:
        DataError: a file is missing or not COCO json, or a category id does not fit ``num_classes``.

    ``__getitem__`` returns ``(image, target)``: image Tensor[3, H, W] float normalised; target with
    ``boxes`` Tensor[N, 4] normalised (cx, cy, w, h) of the transformed image, ``labels`` long[N],
    ``image_id`` int (renumbered, = the id in :attr:`coco_gt`), ``orig_size`` long[2] (h, w),
    ``size`` long[2] (h, w), ``iscrowd`` long[N], ``area`` Tensor[N].
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, str]],
        num_classes: int,
        transforms: Any = None,
        *,
        train: bool,
        cache_dir: Path | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.transforms = transforms if transforms is not None else ToModelInput(IMAGENET_MEAN, IMAGENET_STD)
        self.train = train
        self.records: list[dict[str, Any]] = []
        self.id_map: list[dict[int, int]] = []  # per source: its own image id -> renumbered id
        self._origin: dict[int, tuple[int, int]] = {}  # renumbered id -> (source index, own id)
        names: dict[int, str] = {}
        gt_images: list[dict[str, Any]] = []
        gt_anns: list[dict[str, Any]] = []
        for index, (image_dir, json_file) in enumerate(sources):
            data = read_coco_json(str(json_file), resolve_file(str(json_file), cache_dir))
            check_field_types(str(json_file), data)
            _check_category_ids(str(json_file), data, self.num_classes)
            for cat in data["categories"]:
                cid, name = int(cat["id"]), str(cat.get("name", ""))
                if names.get(cid, name) != name:
                    logger.warning(
                        "Category %d is '%s' in %s but '%s' in an earlier source; keeping '%s'.",
                        cid, name, json_file, names[cid], names[cid],
                    )  # fmt: skip
                names.setdefault(cid, name)
            for ann in data["annotations"]:  # used but not declared: still evaluated, unnamed
                names.setdefault(int(ann["category_id"]), "")
            folder = resolve_image_dir(str(image_dir), cache_dir)
            self._add_source(index, str(json_file), folder, data, gt_images, gt_anns)
        self.class_names = [names.get(i, "") for i in range(self.num_classes)]
        self.coco_gt: dict[str, Any] = {
            "images": gt_images,
            "annotations": gt_anns,
            "categories": [{"id": i, "name": names[i] or str(i)} for i in sorted(names)],
        }

    def _add_source(
        self,
        index: int,
        json_file: str,
        folder: Path,
        data: dict[str, Any],
        gt_images: list[dict[str, Any]],
        gt_anns: list[dict[str, Any]],
    ) -> None:
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        id_map: dict[int, int] = {}
        missing: list[str] = []
        n_boxes = n_dropped = n_clipped = n_crowd = 0
        for rec in data["images"]:
            own_id = int(rec["id"])
            path = folder / str(rec["file_name"])
            size = _image_size(rec, path) if path.is_file() else None
            if size is None:
                missing.append(str(rec["file_name"]))
                continue
            h, w = size
            new_id = len(self.records) + 1
            id_map[own_id] = new_id
            self._origin[new_id] = (index, own_id)
            boxes, labels, crowd = [], [], []
            for ann in by_image.get(own_id, []):
                corners, clipped = clip_box(ann["bbox"], w, h)
                n_clipped += clipped
                if corners is None:
                    n_dropped += 1
                    continue
                x1, y1, x2, y2 = corners
                is_crowd = int(ann.get("iscrowd", 0) or 0)
                n_crowd += is_crowd
                n_boxes += 1
                boxes.append([x1, y1, x2, y2])
                labels.append(int(ann["category_id"]))
                crowd.append(is_crowd)
                gt_anns.append(
                    {
                        "id": len(gt_anns) + 1,
                        "image_id": new_id,
                        "category_id": int(ann["category_id"]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(ann["area"]) if ann.get("area") else (x2 - x1) * (y2 - y1),
                        "iscrowd": is_crowd,
                    }
                )
            gt_images.append({"id": new_id, "file_name": str(rec["file_name"]), "height": h, "width": w})
            self.records.append(
                {
                    "path": path,
                    "file_name": str(rec["file_name"]),
                    "image_id": new_id,
                    "orig_size": (h, w),
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor(labels, dtype=torch.long),
                    "iscrowd": torch.tensor(crowd, dtype=torch.long),
                }
            )
        self.id_map.append(id_map)
        if missing:
            listed = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
            logger.warning(
                "%d image(s) of %s are missing or unreadable in %s and were dropped: %s",
                len(missing), json_file, folder, listed,
            )  # fmt: skip
        logger.info(
            "%s: %d images, %d boxes (%d crowd); %d degenerate boxes dropped, %d clipped to the image, "
            "%d missing images dropped.",
            json_file, len(id_map), n_boxes, n_crowd, n_dropped, n_clipped, len(missing),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    def original_image_id(self, image_id: int) -> tuple[int, int]:
        """Renumbered image id -> (source index, the image id in that source's json)."""
        return self._origin[int(image_id)]

    def file_name(self, image_id: int) -> str:
        """Renumbered image id -> the image's ``file_name`` in its source's json."""
        return str(self.records[int(image_id) - 1]["file_name"])

    def __getitem__(self, idx: int) -> tuple[Tensor, dict[str, Any]]:
        for attempt in range(len(self.records)):
            rec = self.records[(idx + attempt) % len(self.records)]
            try:
                image = load_image(rec["path"])
            except DECODE_ERRORS as exc:
                logger.warning("Skipping unreadable image %s: %s", rec["path"], exc)
                continue
            return self._sample(rec, image)
        raise DataError("No image of the dataset can be decoded (every file is corrupt or unreadable).")

    def _sample(self, rec: dict[str, Any], image: Image.Image) -> tuple[Tensor, dict[str, Any]]:
        h, w = image.height, image.width
        boxes, labels, crowd = rec["boxes"], rec["labels"], rec["iscrowd"]
        if (h, w) != rec["orig_size"]:  # json width/height disagrees with the decoded file: rescale
            oh, ow = rec["orig_size"]
            boxes = boxes * torch.tensor([w / ow, h / oh, w / ow, h / oh])
        if self.train:
            keep = crowd == 0
            boxes, labels, crowd = boxes[keep], labels[keep], crowd[keep]
        target = {
            "boxes": to_bounding_boxes(boxes, h, w),
            "labels": labels.clone(),
            "iscrowd": crowd.clone(),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "image_id": rec["image_id"],
            "orig_size": torch.tensor(rec["orig_size"], dtype=torch.long),
        }
        img, target = self.transforms(image, target)
        target["size"] = torch.tensor(img.shape[-2:], dtype=torch.long)
        return img, target


def check_min_size(dataset: Any, batch_size: int, num_gpus: int = 1, num_nodes: int = 1) -> None:
    """Raise DataError when ``len(dataset) < batch_size * num_gpus * num_nodes`` (one full global batch).

    ``num_gpus`` is the number of training processes per node (``train.num_processes`` on the CPU).
    """
    need = int(batch_size) * int(num_gpus) * int(num_nodes)
    if len(dataset) < need:
        raise DataError(
            f"The dataset has {len(dataset)} images, fewer than dataset.batch_size * processes per node "
            f"(train.num_gpus, or train.num_processes on the CPU) * num_nodes = {batch_size} * {num_gpus} * "
            f"{num_nodes} = {need}; lower dataset.batch_size or add images."
        )
