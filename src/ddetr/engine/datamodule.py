"""LightningDataModule: COCO sources from the spec -> train/val loaders of padded batches."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from ddetr.data.check import Split, check_splits, cross_split_problems, enforce
from ddetr.data.coco import CocoDetection, check_min_size
from ddetr.data.collate import collate_detection, num_workers
from ddetr.data.sources import resolve_sources
from ddetr.data.transforms import build_transforms

logger = logging.getLogger(__name__)


def transform_kwargs(spec: Any) -> dict[str, Any]:
    """The augmentation section as keyword arguments of :func:`ddetr.data.transforms.build_transforms`."""
    aug = spec.dataset.augmentation
    return {
        "scales": list(aug.scales),
        "train_random_resize": list(aug.train_random_resize),
        "train_random_crop_min": aug.train_random_crop_min,
        "train_random_crop_max": aug.train_random_crop_max,
        "random_resize_max_size": aug.random_resize_max_size,
        "horizontal_flip_prob": aug.horizontal_flip_prob,
        "test_random_resize": aug.test_random_resize,
        "input_mean": list(aug.input_mean),
        "input_std": list(aug.input_std),
        "fixed_random_crop": aug.fixed_random_crop,
    }


class DetectionDataModule(pl.LightningDataModule):
    """Builds the datasets once (checks run before any training) and serves padded batches.

    Args:
        spec: the validated experiment spec.
        world_size: devices * nodes, for the minimum dataset size check.
    """

    def __init__(self, spec: Any, world_size: int = 1) -> None:
        super().__init__()
        self.spec = spec
        ds = spec.dataset
        kwargs = transform_kwargs(spec)
        train_pairs = resolve_sources(ds.train_data_sources, ds.archive_limits)
        val_pairs = resolve_sources(ds.val_data_sources, ds.archive_limits)
        validate(train_pairs, val_pairs, ds.num_classes)
        self.train_set = CocoDetection(
            train_pairs, ds.num_classes, build_transforms(True, **kwargs), train=True
        )
        check_min_size(self.train_set, ds.batch_size, spec.train.num_gpus, spec.train.num_nodes)
        self.val_set = (
            CocoDetection(val_pairs, ds.num_classes, build_transforms(False, **kwargs), train=False)
            if val_pairs
            else None
        )
        self.world_size = world_size

    @property
    def class_names(self) -> list[str]:
        """Names indexed by category id, from the training annotations."""
        return list(self.train_set.class_names)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        ds = self.spec.dataset
        workers = num_workers(ds.workers)
        return DataLoader(
            dataset,
            batch_size=ds.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=bool(ds.pin_memory) and _cuda(),
            collate_fn=collate_detection,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


def validate(train_pairs: list[tuple[str, str]], val_pairs: list[tuple[str, str]], num_classes: int) -> None:
    """The rules of ``ddetr dataset`` (:mod:`ddetr.data.check`) on the training and validation data.

    Image sizes come from the file headers (no decoding). Errors stop training before its first step;
    each kind of warning is logged once with its count.

    Raises:
        DataError: any error, in one line with the count and examples.
    """
    splits = [Split("train", "dataset.train_data_sources", train_pairs)]
    if val_pairs:
        splits.append(Split("val", "dataset.val_data_sources", val_pairs))
    reports = check_splits(splits, num_classes, decode=False)
    enforce(reports, cross_split_problems(reports, num_classes))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
