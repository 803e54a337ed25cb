"""pl.Trainer from the spec: devices, nodes, strategy, precision, callbacks, loggers."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from ddetr.engine.callbacks import (
    METRICS_NAME,
    DistributedSigterm,
    MetricsCallback,
    StatusCallback,
    TaoCheckpoint,
)
from ddetr.engine.checkpoint_io import EncryptedCheckpointIO
from ddetr.engine.samples import ValidationPictures

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, with the learning rate in scientific notation (2.0e-04, not 0.000)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if isinstance(items.get("lr"), float):
            items["lr"] = f"{items['lr']:.1e}"
        return items


class _DropTips(logging.Filter):
    # Lightning advertises cloud services in the log; that is noise in a training run
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


@dataclass(frozen=True)
class TorchFlags:
    """The process-wide torch settings a Trainer changes (``train.cudnn``): kept to be put back afterwards.

    Lightning's ``deterministic``/``benchmark`` set torch's deterministic-algorithms flag (and its warn-only
    mode), cuDNN's two flags and ``CUBLAS_WORKSPACE_CONFIG`` for the whole process, and never undo them.
    """

    deterministic_algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace: str | None

    @classmethod
    def capture(cls) -> TorchFlags:
        """The current settings."""
        return cls(
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    def restore(self) -> None:
        """Put these settings back."""
        torch.use_deterministic_algorithms(self.deterministic_algorithms, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


@dataclass(frozen=True)
class DevicePlan:
    """Where training runs: accelerator, device list, nodes, strategy, process-group back end and precision.

    ``strategy`` is ``"auto"`` for one process, else ``"ddp"`` or ``"fsdp"``; ``backend`` is the
    ``torch.distributed`` back end of a multi-process run (``gloo`` on CPUs, ``nccl`` on GPUs), else None.
    """

    accelerator: str
    devices: list[int] | int
    num_nodes: int
    strategy: str
    precision: str
    backend: str | None = None

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        per_node = len(self.devices) if isinstance(self.devices, list) else int(self.devices)
        return per_node * self.num_nodes

    @property
    def distributed(self) -> bool:
        """More than one process (on this node or across nodes)."""
        return self.world_size > 1


def plan_devices(train: Any, cuda_available: bool | None = None) -> DevicePlan:
    """Choose devices from ``train.num_gpus``/``gpu_ids``/``num_processes``/``num_nodes``/``precision``/
    ``distributed_strategy``.

    Without a GPU, ``train.num_processes`` processes per node train with DDP over ``gloo`` (one process by
    default); ``num_gpus`` > 1 is then ignored with a warning naming ``num_processes``. With GPUs,
    ``num_gpus`` processes per node (on ``gpu_ids`` when it lists enough ids) train over ``nccl``.

    Raises:
        SpecError: ``distributed_strategy: fsdp`` with more than one CPU process (FSDP needs GPUs here).
    """
    from ddetr.errors import SpecError

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    precision = PRECISIONS[train.precision]
    per_node = train.processes_per_node(cuda)
    distributed = per_node * train.num_nodes > 1
    strategy = train.distributed_strategy if distributed else "auto"
    if not cuda:
        if train.num_gpus > 1:
            logger.warning(
                "No GPU found: train.num_gpus=%d ignored; training on the CPU in %d process(es) per node "
                "(set train.num_processes for more).",
                train.num_gpus,
                per_node,
            )
        elif not distributed:
            logger.info("No GPU found: training on the CPU.")
        if precision == "16-mixed":
            logger.warning("train.precision=fp16 needs a GPU; using bf16 autocast on the CPU instead.")
            precision = "bf16-mixed"
        if strategy == "fsdp":
            raise SpecError(
                "train.distributed_strategy: fsdp needs GPUs (Lightning's FSDP strategy refuses CPU processes); "
                "use train.distributed_strategy=ddp with train.num_processes on the CPU"
            )
        return DevicePlan(
            "cpu", per_node, train.num_nodes, strategy, precision, "gloo" if distributed else None
        )
    if train.num_processes > 1:
        logger.warning(
            "train.num_processes=%d ignored: a GPU is present, train.num_gpus=%d decides the processes per node.",
            train.num_processes,
            train.num_gpus,
        )
    ids = list(train.gpu_ids)[: train.num_gpus] if train.gpu_ids else list(range(train.num_gpus))
    if len(ids) < train.num_gpus:
        ids = list(range(train.num_gpus))
    return DevicePlan("gpu", ids, train.num_nodes, strategy, precision, "nccl" if distributed else None)


def build_strategy(plan: DevicePlan) -> Any:
    """Lightning's strategy for the plan: ``"auto"`` for one process, else a DDP or FSDP strategy on the
    plan's back end (Lightning's launcher starts the local processes and its cluster environments read
    torchrun's, SLURM's or ``MASTER_ADDR``/``NODE_RANK`` variables)."""
    if not plan.distributed or plan.strategy == "auto":
        return "auto"
    if plan.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        # "full": rank 0 writes one consolidated file, an ordinary ddetr checkpoint (not a sharded folder)
        return FSDPStrategy(process_group_backend=plan.backend, state_dict_type="full")
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend=plan.backend)


def build_trainer(
    spec: Any, train_dir: Path, status: Any, plan: DevicePlan, *, steps_per_epoch: int
) -> pl.Trainer:
    """A Trainer writing checkpoints and TensorBoard logs under ``train_dir`` and progress to ``status``.

    Checkpoints are encrypted with ``spec.encryption_key`` when it is set (:class:`EncryptedCheckpointIO`).
    Each validation also sends sample pictures and PR curves to TensorBoard (:mod:`ddetr.engine.samples`);
    with ``wandb.enable`` (and not a dry run) W&B gets the same (:mod:`ddetr.engine.wandb_run`).

    Raises:
        UnavailableError: ``wandb.enable`` is true and the wandb package is missing.
    """
    train = spec.train
    if logging.getLogger().handlers:
        # our entry point set up logging: Lightning's own handlers would print each message a second time
        # (the top package 'lightning' adds one whether or not the root logger has handlers)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_log = logging.getLogger(name)
            for handler in list(lightning_log.handlers):
                lightning_log.removeHandler(handler)
            lightning_log.propagate = True
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropTips())
    callbacks: list[pl.Callback] = [
        TaoCheckpoint(train_dir, train.checkpoint_interval, train.checkpoint_interval_unit),
        StatusCallback(status),
    ]
    if not train.is_dry_run:
        callbacks.append(MetricsCallback(train_dir / METRICS_NAME))
    callbacks.append(ProgressBar(leave=True))
    callbacks.append(ValidationPictures(score_threshold=spec.inference.conf_threshold))
    loggers: list[Any] = [TensorBoardLogger(str(train_dir), name="tensorboard", version="")]
    if spec.wandb.enable and not train.is_dry_run:
        from ddetr.engine.wandb_run import WandbRun, build_wandb_logger

        wandb_logger = build_wandb_logger(spec, train_dir)
        loggers.append(wandb_logger)
        callbacks.append(WandbRun(wandb_logger, train_dir))
    callbacks.append(DistributedSigterm())  # last: a step's own checkpoint is saved before a stop
    if train.is_dry_run:
        limit = {"limit_train_batches": 1, "limit_val_batches": 1, "max_epochs": 1}
    else:
        limit = {"max_epochs": train.num_epochs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer = pl.Trainer(
            accelerator=plan.accelerator,
            devices=plan.devices,
            num_nodes=plan.num_nodes,
            strategy=build_strategy(plan),
            use_distributed_sampler=False,  # DetectionDataModule shards by rank itself (same order at any size)
            precision=plan.precision,
            default_root_dir=str(train_dir),
            logger=loggers,
            callbacks=callbacks,
            plugins=[EncryptedCheckpointIO(getattr(spec, "encryption_key", "") or None)],
            gradient_clip_val=train.clip_grad_norm if train.clip_grad_norm > 0 else None,
            gradient_clip_algorithm="norm",
            check_val_every_n_epoch=train.validation_interval,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, steps_per_epoch)),
            # train.cudnn: deterministic cuDNN and PyTorch algorithms ("warn": an op without a deterministic
            # version, such as grid_sample's CUDA backward, warns instead of stopping the run), cuDNN autotuner
            deterministic="warn" if train.cudnn.deterministic else False,
            benchmark=train.cudnn.benchmark,
            enable_model_summary=False,
            **limit,
        )
    return trainer
