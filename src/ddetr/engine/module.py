"""LightningModule around :class:`ddetr.DeformableDETR`: training/validation steps, optimizers, mAP.

The nn.Module stays pure PyTorch; this class only adds steps, logging and optimizers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import (
    LIGHTNING_KEY,
    LIGHTNING_MODEL_PREFIX,
    describe_mismatch,
    lightning_entry,
    state_dict_mismatch,
)
from ddetr.engine.datamodule import shard_real_count
from ddetr.errors import CheckpointError, TrainingError
from ddetr.model.criterion import LOSS_NAMES, build_criterion, global_num_boxes
from ddetr.model.detector import DeformableDETR
from ddetr.model.outputs import DetectionOutput
from ddetr.model.predict import decode
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

#: Metric names shared by the logger, checkpoint monitor, status.json and the AutoML objective.
VAL_MAP = "val_mAP"
VAL_MAP50 = "val_mAP50"
VAL_LOSS = "val_loss"
TRAIN_LOSS = "train_loss"

# Parameters whose learning rate is lr * lr_linear_proj_mult (the original recipe).
LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")


def parameter_groups(
    model: torch.nn.Module, *, lr: float, lr_backbone: float, lr_linear_proj_mult: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into backbone / linear-projection / rest groups with their learning rates."""
    backbone, linear_proj, rest = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            backbone.append(param)
        elif any(key in name for key in LINEAR_PROJ_NAMES):
            linear_proj.append(param)
        else:
            rest.append(param)
    groups = [
        {"params": rest, "lr": lr, "name": "main"},
        {"params": backbone, "lr": lr_backbone, "name": "backbone"},
        {"params": linear_proj, "lr": lr * lr_linear_proj_mult, "name": "linear_proj"},
    ]
    return [g for g in groups if g["params"]]


class DetectionModule(pl.LightningModule):
    """Trains and validates a Deformable DETR.

    Args:
        model: the detector.
        spec: the validated experiment spec (``ddetr.spec.sections.Spec``); train.optim and model sections are read.
        class_names: names indexed by category id ('' for unused ids), stored in checkpoints.
        coco_gt: COCO ground truth dict of the validation set (for mAP), or None to skip mAP.
        eval_class_ids: category ids COCOeval scores (None = all).
    """

    def __init__(
        self,
        model: DeformableDETR,
        spec: Any,
        class_names: list[str] | None = None,
        coco_gt: dict | None = None,
        eval_class_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        # train.activation_checkpoint: recompute transformer layers in the backward pass (less memory)
        model.transformer.set_activation_checkpoint(spec.train.activation_checkpoint)
        self.class_names = list(class_names or [])
        self.criterion = build_criterion(model.model_config, model.num_classes)
        self.coco_gt = coco_gt
        self.eval_class_ids = eval_class_ids
        self._evaluator = None
        # per validation batch: this rank's loss and how many of its images are not padding repeats
        self._val_losses: list[tuple[float, int]] = []
        self._val_seen = 0
        self._train_losses: list[float] = []
        self.last_val_metrics: dict[str, Any] = {}
        #: the last validation's evaluator (its detections and COCOeval), for sample pictures and PR curves
        self.last_val_evaluator: Any = None

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor, mask: Tensor | None = None):
        return self.model(images, mask)

    def _losses(self, batch) -> tuple[Tensor, dict[str, Tensor], Any]:
        images, mask, targets = batch
        outputs = self.model(images, mask)
        losses = self.criterion(outputs, targets)
        total = self.criterion.weighted_total(losses)
        return total, losses, outputs

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        total, losses, _ = self._losses(batch)
        if not torch.isfinite(total):
            raise TrainingError(self._divergence_message(total, losses))
        batch_size = batch[0].shape[0]
        # under DDP each rank's loss is normalised by the mean number of boxes per rank: the mean over ranks
        # is the loss of the whole global batch (what one process with that batch size reports)
        self.log("loss", total, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log(TRAIN_LOSS, total, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else 0.0
        self.log("lr", lr, prog_bar=True, batch_size=batch_size)
        # the last layer's components travel to the callbacks (metrics.jsonl) with the loss Lightning steps on
        return {"loss": total, **{k: losses[k].detach() for k in LOSS_NAMES if k in losses}}

    def _divergence_message(self, total: Tensor, losses: dict[str, Tensor]) -> str:
        """What a non-finite loss means and which spec fields to lower (resuming would diverge again)."""
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        optim, train = self.spec.train.optim, self.spec.train
        lower = (
            f"lower train.optim.lr (now {optim.lr:g}) and train.optim.lr_backbone (now {optim.lr_backbone:g})"
        )
        if train.clip_grad_norm <= 0:
            lower += ", set train.clip_grad_norm > 0 (now 0: no clipping)"
        else:
            lower += f", lower train.clip_grad_norm (now {train.clip_grad_norm:g})"
        if train.precision == "fp16":
            lower += ", use train.precision=bf16 or fp32 (now fp16)"
        return (
            f"training diverged: the loss is {total.item()} at epoch {self.current_epoch}, step {self.global_step} "
            f"(non-finite: {', '.join(bad) or 'the weighted total'}); {lower}, then train again from the start "
            "(or from a checkpoint saved before the divergence); also check the training boxes with `ddetr dataset`"
        )

    def on_validation_epoch_start(self) -> None:
        self._val_losses = []
        self._val_seen = 0
        self._evaluator = None
        if self.coco_gt is not None:
            from ddetr.eval.coco import CocoEvaluator

            self._evaluator = CocoEvaluator(self.coco_gt, eval_class_ids=self.eval_class_ids)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, mask, targets = batch
        outputs = self.model(images, mask)
        # under DDP the last sample of a shard can be a repeat that pads the shards to one length: it is left
        # out of the loss (the criterion still runs on every rank: its box count is a collective)
        own = len(targets)
        real = self._val_real_count()
        if real is not None:
            own = max(0, min(own, real - self._val_seen))
        self._val_seen += len(targets)
        if own == len(targets):
            total = self.criterion.weighted_total(self.criterion(outputs, targets))
        elif own > 0:
            kept = first_images(outputs, own)
            total = self.criterion.weighted_total(self.criterion(kept, targets[:own]))
        else:  # only repeats: take part in the box count's all-reduce, add nothing
            global_num_boxes([], outputs.pred_logits.device)
            total = torch.zeros(())
        self._val_losses.append((float(total), own))
        if self._evaluator is None:
            return
        sizes = torch.stack([t["orig_size"] for t in targets]).to(outputs.pred_boxes.device)
        found = decode(
            outputs.pred_logits, outputs.pred_boxes, sizes, num_select=self.model.model_config.num_select
        )
        for target, det in zip(targets, found):
            self._evaluator.add(int(target["image_id"]), det.boxes, det.scores, det.labels)

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, float] = {}
        if self._evaluator is not None:
            metrics = self._distributed_map()
            self.log(VAL_MAP, metrics[VAL_MAP], prog_bar=True, sync_dist=True)  # equal on every rank
            self.log(VAL_MAP50, metrics[VAL_MAP50], prog_bar=True, sync_dist=True)
            self.last_val_evaluator = self._evaluator
        val_loss = self._val_loss()
        if val_loss is not None:
            metrics[VAL_LOSS] = val_loss
            self.log(VAL_LOSS, val_loss, sync_dist=True)  # equal on every rank
        self.last_val_metrics = metrics

    def _val_real_count(self) -> int | None:
        """Samples of this rank's validation shard that are not padding repeats (None: all of them)."""
        if self._trainer is None:
            return None
        loaders = self.trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if len(loaders) == 1 else None
        return shard_real_count(getattr(loaders, "sampler", None))

    def _val_loss(self) -> float | None:
        """The validation loss of every image once: the image-weighted mean of the global batches' losses.

        Every rank runs the same number of batches; batch k's loss over all ranks is the mean of the ranks'
        losses (each normalised by the mean box count per rank, as in training) and its weight the number of
        images that are not repeats. One process: Lightning's batch-size-weighted mean of the batch losses.
        """
        if not self._val_losses:
            return None
        values = torch.tensor(self._val_losses, dtype=torch.float64)  # (K, 2): loss, own images
        if self._distributed():
            values = values.to(self.device)
            torch.distributed.all_reduce(values)
            values = values.cpu()
            values[:, 0] /= self.trainer.world_size
        return combine_batch_losses(values[:, 0].tolist(), values[:, 1].tolist())

    def _distributed(self) -> bool:
        return (
            self._trainer is not None
            and self.trainer.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        )

    def _distributed_map(self) -> dict[str, float]:
        """COCO mAP of the whole validation set: under DDP the ranks' detections are gathered, the repeats
        that padded the shards removed, rank 0 scores them and every rank receives the same numbers."""
        assert self._evaluator is not None
        if self._distributed():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self._evaluator.detections)
            self._evaluator.detections = merge_rank_detections(gathered)
        numbers: list[Any] = [None]
        if not self._distributed() or self.trainer.is_global_zero:
            summary = self._evaluator.summarize()
            numbers = [{VAL_MAP: float(summary["mAP"]), VAL_MAP50: float(summary["mAP50"])}]
        if self._distributed():
            torch.distributed.broadcast_object_list(numbers, src=0)
        return dict(numbers[0])

    # ------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        optim = self.spec.train.optim
        groups = parameter_groups(
            self.model,
            lr=optim.lr,
            lr_backbone=optim.lr_backbone,
            lr_linear_proj_mult=optim.lr_linear_proj_mult,
        )
        if optim.optimizer == "SGD":
            optimizer = torch.optim.SGD(
                groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
        # TAO passes train.optim.monitor_name as the scheduler's monitor; only ReduceLROnPlateau reads it
        monitor = optim.monitor_name
        schedule: dict[str, Any] = {"interval": "epoch", "monitor": monitor}
        if optim.lr_scheduler == "StepLR":
            scheduler: Any = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=optim.lr_step_size, gamma=optim.lr_decay
            )
        elif optim.lr_scheduler == "ReduceLROnPlateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if monitor in (VAL_MAP, VAL_MAP50) else "min",
                factor=optim.lr_decay,
                patience=optim.lr_step_size,
            )
            if monitor != TRAIN_LOSS:  # validation metrics exist every validation_interval epochs
                schedule["frequency"] = self.spec.train.validation_interval
            schedule["strict"] = False  # a run without validation data: warn and keep the lr
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=list(optim.lr_steps), gamma=optim.lr_decay
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **schedule}}

    # ----------------------------------------------------------------------------------- checkpoints
    def model_card(self) -> ModelCard:
        """The card of the model being trained: the spec's architecture, preprocessing and the class names."""
        return ModelCard.from_spec(self.spec, self.class_names)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what makes the checkpoint self-describing: the card and the spec (without its key)
        spec = self.spec.model_dump(mode="json")
        if spec.get("encryption_key"):
            spec["encryption_key"] = ""  # the key never travels inside a file
        checkpoint[LIGHTNING_KEY] = lightning_entry(self.model_card(), spec)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before Lightning loads a resume checkpoint's weights: refuse another architecture in one line.

        The checkpoint's model card is compared with the spec's architecture fields and classes; a
        checkpoint without a card is compared by weight names and shapes.

        Raises:
            CheckpointError: the fields (or weights) that differ, with both values.
        """
        where = f"resume checkpoint {getattr(self.trainer, 'ckpt_path', None) or ''}".rstrip()
        entry = checkpoint.get(LIGHTNING_KEY)
        card = entry.get("card") if isinstance(entry, Mapping) else None
        if isinstance(card, Mapping) and isinstance(card.get("model"), Mapping):
            ours = self.model.model_config
            theirs = card["model"]
            differing = []
            for name in ModelSection.ARCHITECTURE_FIELDS:
                if ours is None or name not in theirs:
                    continue
                mine, other = getattr(ours, name), theirs[name]
                if (list(mine) if isinstance(mine, (list, tuple)) else mine) != (
                    list(other) if isinstance(other, (list, tuple)) else other
                ):
                    differing.append(f"model.{name} {other!r} vs {mine!r}")
            if card.get("num_classes") not in (None, self.model.num_classes):
                differing.append(f"dataset.num_classes {card['num_classes']!r} vs {self.model.num_classes!r}")
            if differing:
                raise CheckpointError(
                    f"{where} is another architecture than the spec (checkpoint vs spec): "
                    + ", ".join(differing)
                    + "; set the spec's values to the checkpoint's, or train into another results_dir"
                )
        weights = checkpoint.get("state_dict")
        if isinstance(weights, Mapping):
            ours = {LIGHTNING_MODEL_PREFIX + k: v for k, v in self.model.state_dict().items()}
            given = {k: v for k, v in weights.items() if k.startswith(LIGHTNING_MODEL_PREFIX)}
            problems = describe_mismatch(*state_dict_mismatch(ours, given))
            if problems:
                raise CheckpointError(f"{where}: weights do not fit the spec's model: {problems}")


def first_images(outputs: DetectionOutput, count: int) -> DetectionOutput:
    """The predictions of the first ``count`` images of a batch (every layer: last, auxiliary, encoder)."""

    def cut(layer: Any) -> Any:
        return replace(layer, pred_logits=layer.pred_logits[:count], pred_boxes=layer.pred_boxes[:count])

    return replace(
        cut(outputs),
        aux_outputs=[cut(layer) for layer in outputs.aux_outputs],
        enc_outputs=None if outputs.enc_outputs is None else cut(outputs.enc_outputs),
    )


def combine_batch_losses(losses: list[float], images: list[int | float]) -> float | None:
    """The image-weighted mean of per-batch losses (what Lightning's epoch mean with ``batch_size`` gives).

    Args:
        losses: each validation batch's loss.
        images: each batch's number of images counted (repeats excluded); 0 leaves the batch out.

    Returns:
        The mean, or None when no image was counted.
    """
    total = sum(images)
    if not total:
        return None
    return float(sum(loss * n for loss, n in zip(losses, images)) / total)


def merge_rank_detections(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The detections of every rank as one list, each image's detections once.

    The validation sampler pads the ranks' shards with repeats of the first images; a repeated image's
    detections come from the rank that saw it first (rank order), so each image is scored once.

    Args:
        parts: per rank, its COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``).
    """
    owner: dict[int, int] = {}
    for rank, part in enumerate(parts):
        for det in part:
            owner.setdefault(int(det["image_id"]), rank)
    return [det for rank, part in enumerate(parts) for det in part if owner[int(det["image_id"])] == rank]


def estimated_steps(num_samples: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: each rank takes ``num_samples // world_size`` images (the sampler leaves
    out the remainder of a division by the world size) in batches of ``batch_size``, the last one partial."""
    per_rank = num_samples // max(1, world_size) if world_size > 1 else num_samples
    return max(1, math.ceil(per_rank / max(1, batch_size)))
