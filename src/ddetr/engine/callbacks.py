"""Training callbacks: TAO-named checkpoints with an atomic latest link, status.json progress, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ddetr.errors import DdetrError
from ddetr.fileio import atomic_symlink, remove_stale_temps

logger = logging.getLogger(__name__)

LATEST_NAME = "dd_model_latest"
CHECKPOINT_FILENAME = "model_epoch_{epoch:03d}_step_{step:05d}"


class TaoCheckpoint(ModelCheckpoint):
    """Saves ``model_epoch_<EEE>_step_<SSSSS>.pth`` every interval and points ``dd_model_latest.pth`` at the newest.

    Args:
        dirpath: ``<results_dir>/train``.
        interval: how many epochs or optimizer steps between checkpoints (>= 1).
        unit: ``"epoch"`` or ``"step"``.
    """

    CHECKPOINT_NAME_LAST = LATEST_NAME
    FILE_EXTENSION = ".pth"

    def __init__(self, dirpath: str | Path, interval: int = 1, unit: str = "epoch") -> None:
        every = {"every_n_epochs": interval} if unit == "epoch" else {"every_n_train_steps": interval}
        super().__init__(
            dirpath=str(dirpath),
            filename=CHECKPOINT_FILENAME,
            auto_insert_metric_name=False,
            save_top_k=-1,
            save_last="link",
            enable_version_counter=False,
            save_on_train_epoch_end=True,
            **every,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Lightning's setup, then remove temporary files a killed earlier run left in the checkpoint folder."""
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            for path in remove_stale_temps(self.dirpath):
                logger.info("Removed %s, left by a run killed while saving.", path.name)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On SIGTERM (preemption) or Ctrl-C, save the current state under its TAO name and link it as latest.

        Other exceptions save nothing: a crash (a NaN loss, bad data) must not become the checkpoint that the
        next run resumes from. Lightning raises SIGTERM between optimizer steps, so the saved state is whole.
        """
        if not is_interrupt(exception) or trainer.sanity_checking:
            return
        if self._last_global_step_saved == trainer.global_step:
            return  # the newest checkpoint already holds this step
        candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(candidates)
        self._save_checkpoint(trainer, filepath)
        self._save_last_checkpoint(trainer, candidates)
        logger.info("Interrupted: saved %s; run the same command again to resume.", filepath)

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        # replace the link atomically: a reader never sees a missing or dangling latest link
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            atomic_symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
        trainer.strategy.barrier()


class DistributedSigterm(Callback):
    """SIGTERM to any rank of a multi-process run stops every rank at the same optimizer step.

    Lightning's own SIGTERM handler only acts on rank 0's signal (and runs a collective inside the handler).
    Under DDP this callback replaces it for the fit: the handler only notes the signal, and after each
    training batch the ranks agree with one ``all_reduce(MAX)``; when any rank was signalled, every rank
    marks the trainer as having received SIGTERM, so Lightning stops all of them after that step, the
    interrupt checkpoint is saved once (by rank 0) and every process exits. One process: Lightning's handler
    stays.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers (Trainer._run), before the first batch
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        import torch
        import torch.distributed as dist

        if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        flag = torch.tensor([1 if self.requested else 0], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            self.requested = True
            if trainer.is_global_zero:
                logger.info(
                    "SIGTERM received by a rank: every rank stops after step %d.", trainer.global_step
                )
            connector = getattr(trainer, "_signal_connector", None)
            if connector is not None and hasattr(connector, "received_sigterm"):
                connector.received_sigterm = True  # Lightning raises SIGTERMException after this step
            else:  # pragma: no cover - a Lightning without the connector
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                raise SIGTERMException()


def is_interrupt(exception: BaseException) -> bool:
    """True for the ways a run is stopped from outside: SIGTERM (Lightning's SIGTERMException) or Ctrl-C."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exception, (SIGTERMException, KeyboardInterrupt))


def latest_checkpoint(train_dir: str | Path) -> Path | None:
    """``<train_dir>/dd_model_latest.pth`` if it exists and resolves to a file, else None."""
    link = Path(train_dir) / f"{LATEST_NAME}{TaoCheckpoint.FILE_EXTENSION}"
    return link if link.exists() else None


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StatusCallback(Callback):
    """Writes training progress to ``status.json`` (JSON Lines; format in docs/SPEC.md) on rank 0."""

    def __init__(self, status: Any) -> None:
        self.status = status
        self._epoch_start = time.monotonic()
        self._epoch_times: list[float] = []

    def _scalar(self, trainer: pl.Trainer, name: str) -> float | None:
        value = trainer.callback_metrics.get(name)
        return None if value is None else float(value)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.status.write(
                status="STARTED",
                message="Starting training.",
                epoch=trainer.current_epoch,
                max_epoch=trainer.max_epochs,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._epoch_start
        self._epoch_times.append(elapsed)
        remaining = max(0, (trainer.max_epochs or 0) - trainer.current_epoch - 1)
        kpi = {}
        loss = self._scalar(trainer, "train_loss")
        if loss is not None:
            kpi["train_loss"] = loss
        self.status.write(
            status="RUNNING",
            message=f"Train epoch {trainer.current_epoch} finished.",
            epoch=trainer.current_epoch,
            max_epoch=trainer.max_epochs,
            step=trainer.global_step,
            max_step=trainer.estimated_stepping_batches,
            time_per_epoch=_fmt_seconds(elapsed),
            eta=_fmt_seconds(remaining * sum(self._epoch_times) / len(self._epoch_times)),
            kpi=kpi,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = getattr(pl_module, "last_val_metrics", {})
        if not metrics:
            return
        self.status.write(
            status="RUNNING",
            message=f"Validation after epoch {trainer.current_epoch}.",
            epoch=trainer.current_epoch,
            max_epoch=trainer.max_epochs,
            step=trainer.global_step,
            kpi=dict(metrics),
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not trainer.is_global_zero:
            return
        if isinstance(
            exception, DdetrError
        ):  # the message says what to change; resuming as is would not help
            message = f"Training stopped: {exception}"
        elif is_interrupt(exception):
            how = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            detail = f"interrupted by {how} at epoch {trainer.current_epoch}, step {trainer.global_step}"
            message = f"Training stopped ({detail}); run the same command again to resume from the latest checkpoint."
        else:
            detail = (
                f"{type(exception).__name__}: {exception}" if str(exception) else type(exception).__name__
            )
            message = f"Training stopped ({detail}); run the same command again to resume from the latest checkpoint."
        self.status.write(
            status="FAILURE",
            message=message,
            epoch=trainer.current_epoch,
            step=trainer.global_step,
        )


METRICS_NAME = "metrics.jsonl"


def _plain(value: Any) -> float | None:
    """A float from a tensor or number; None when it is not finite (JSON has no NaN)."""
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None


class MetricsCallback(Callback):
    """Appends the training curves to ``<train_dir>/metrics.jsonl`` (rank 0; one JSON object a line, flushed).

    Three kinds of line, told apart by their keys (the run report draws them; docs/report.md):

    - every optimizer step: ``step``, ``epoch``, ``loss`` (weighted total), ``loss_ce``, ``loss_bbox``,
      ``loss_giou`` (last decoder layer, unweighted) and ``lr`` of each parameter group (``lr``,
      ``lr_backbone``, ``lr_linear_proj``);
    - every training epoch: ``epoch``, ``step``, ``epoch_seconds``, ``train_loss``;
    - every validation: ``epoch``, ``step`` and the validation KPIs (``val_mAP``, ``val_mAP50``, ``val_loss``).

    A resumed run appends to the file; a reader keeps the last line of a step.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._epoch_start = time.monotonic()
        self._lrs: dict[str, float] = {}

    def _write(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, dict) or "loss" not in outputs:
            return
        record: dict[str, Any] = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        record.update({k: _plain(v) for k, v in outputs.items()})
        record.update(self._lrs)
        self._write(trainer, record)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the rates this step uses: by the batch's end Lightning may have stepped an epoch scheduler already
        self._lrs = {}
        for optimizer in trainer.optimizers[:1]:
            for group in optimizer.param_groups:
                name = group.get("name", "main")
                self._lrs["lr" if name == "main" else f"lr_{name}"] = float(group["lr"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train_loss")
        self._write(
            trainer,
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "epoch_seconds": round(time.monotonic() - self._epoch_start, 3),
                "train_loss": None if loss is None else _plain(loss),
            },
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = getattr(pl_module, "last_val_metrics", {})
        if trainer.sanity_checking or not metrics:
            return
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._write(trainer, record)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (a missing file or a torn last line gives what could be read)."""
    records: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records
