"""LightningDataModule: COCO sources from the spec -> train/val loaders of padded batches."""

from __future__ import annotations

import logging
from collections.abc import Sized
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

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

    Every rank draws from one permutation of the training set per epoch (seeded by ``train.seed`` and the
    epoch, the same on every rank and at every world size) and takes every ``world_size``-th image of it from
    its rank on: a global batch of ``batch_size * world_size`` images is the same set of images as one
    process with that batch size would take. Each image is seen at most once per epoch; when the number of
    images is not a multiple of the world size, the last ``len % world_size`` images of that epoch's
    permutation are left out (drop_last of the sampler; other images each epoch). Validation is split the
    same way without shuffling, padded with repeats so that every rank runs the same number of batches (the
    repeats are removed before COCO evaluation and left out of ``val_loss``, see :func:`shard_real_count`).

    Args:
        spec: the validated experiment spec.
        world_size: processes in the job (processes per node * nodes), for the minimum dataset size check.
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
        nodes = max(1, int(spec.train.num_nodes))
        check_min_size(self.train_set, ds.batch_size, max(1, world_size // nodes), nodes)
        self.val_set = (
            CocoDetection(val_pairs, ds.num_classes, build_transforms(False, **kwargs), train=False)
            if val_pairs
            else None
        )
        self.world_size = world_size
        self._seed: int | None = None

    @property
    def class_names(self) -> list[str]:
        """Names indexed by category id, from the training annotations."""
        return list(self.train_set.class_names)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _shuffle_seed(self) -> int:
        # the permutation must be the same on every rank: an unseeded run takes rank 0's random draw
        if self._seed is None:
            seed = int(self.spec.train.seed)
            if seed < 0:
                seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
                if self.trainer is not None and self.trainer.world_size > 1:
                    seed = int(self.trainer.strategy.broadcast(seed, src=0))
            self._seed = seed
        return self._seed

    def _loader(self, dataset, sampler: Sampler) -> DataLoader:
        ds = self.spec.dataset
        workers = num_workers(ds.workers)
        return DataLoader(
            dataset,
            batch_size=ds.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=bool(ds.pin_memory) and _cuda(),
            collate_fn=collate_detection,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._ranks()
        sampler = train_sampler(len(self.train_set), rank, world, self._shuffle_seed())
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        rank, world = self._ranks()
        return self._loader(self.val_set, val_sampler(len(self.val_set), rank, world))


class _Indices(Sized):
    # DistributedSampler only needs len(dataset)
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def train_sampler(num_images: int, rank: int, world_size: int, seed: int) -> DistributedSampler:
    """The training sampler of one rank: the epoch's seeded permutation, every ``world_size``-th image.

    Lightning calls ``set_epoch`` before each epoch, so each epoch draws a new permutation (seed + epoch).
    """
    return DistributedSampler(
        _Indices(num_images),  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )


def val_sampler(num_images: int, rank: int, world_size: int) -> DistributedSampler:
    """The validation sampler of one rank: images ``rank, rank + world_size, ...`` in order, padded with
    repeats from the start so that every rank has ``ceil(num_images / world_size)`` images."""
    return DistributedSampler(
        _Indices(num_images),  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=False,
        drop_last=False,
    )


def shard_real_count(sampler: Any) -> int | None:
    """How many samples of a rank's shard are its own: a :class:`DistributedSampler` without ``drop_last`` pads
    the shards to equal length with repeats of the first images, and those are the last sample of a shard.

    Position ``p`` of rank ``r``'s shard is global position ``r + p * world_size`` of the padded list;
    positions from ``len(dataset)`` on are repeats.

    Args:
        sampler: a DataLoader's sampler.

    Returns:
        The number of leading samples that are not repeats, or None for any other sampler (no repeats).
    """
    if not isinstance(sampler, DistributedSampler):
        return None
    num_images = len(sampler.dataset)  # type: ignore[arg-type]
    own = len(range(sampler.rank, num_images, sampler.num_replicas))
    return min(int(sampler.num_samples), own)


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
    return torch.cuda.is_available()
