"""Weights & Biases logging for training: the spec's ``wandb`` section through Lightning's ``WandbLogger``.

With ``wandb.enable: true`` a training run logs to W&B what it logs to TensorBoard (losses, lr, val mAP), the
spec as the run's config (``encryption_key`` blanked), the validation sample pictures
(:mod:`ddetr.engine.samples`) and, at the end, the latest checkpoint as a ``model`` artefact.

Online or offline: ``WANDB_MODE`` decides when it is set; otherwise the run is online when W&B has an API key
(``WANDB_API_KEY`` or ``wandb login``) and offline when it has none. An offline run (or an online one whose
start fails, e.g. without network) is written under ``<results_dir>/train/wandb/offline-run-*`` and one log
line says where, to upload later with ``wandb sync``. ``wandb`` is an optional extra: ``pip install
'ddetr[wandb]'``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from ddetr.errors import UnavailableError

logger = logging.getLogger(__name__)

MISSING_PACKAGE = (
    "wandb.enable=true needs the wandb package, which is not installed: pip install 'ddetr[wandb]' "
    "(or set wandb.enable=false)"
)


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise UnavailableError(MISSING_PACKAGE) from None
    return wandb


def choose_mode(wandb: Any) -> tuple[str, str]:
    """(mode, why): ``WANDB_MODE`` when set, else ``online`` with an API key and ``offline`` without one."""
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        return ("offline" if env == "dryrun" else env), f"WANDB_MODE={env}"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "WANDB_API_KEY is set"
    try:
        has_key = bool(wandb.api.api_key)  # a stored `wandb login`
    except Exception:
        has_key = False
    return ("online", "W&B login found") if has_key else ("offline", "no W&B API key")


def spec_config(spec: Any) -> dict[str, Any]:
    """The spec as a plain dict for the run's config, with ``encryption_key`` blanked."""
    config = spec.model_dump(mode="json")
    if config.get("encryption_key"):
        config["encryption_key"] = ""
    return config


def run_folder(run: Any) -> Path:
    """The run's own folder (``.../wandb/offline-run-<time>-<id>``): the parent of its ``files`` folder."""
    return Path(run.dir).parent


def build_wandb_logger(spec: Any, train_dir: Path) -> WandbLogger:
    """A started ``WandbLogger`` for ``spec.wandb`` writing under ``train_dir/wandb``.

    Raises:
        UnavailableError: the wandb package is not installed (one line naming the ``[wandb]`` extra).
    """
    wandb = _import_wandb()
    section = spec.wandb
    mode, why = choose_mode(wandb)
    init: dict[str, Any] = {
        "project": section.project or None,
        "entity": section.entity or None,
        "name": section.name or None,
        "tags": list(section.tags) or None,
        "group": section.group or None,
        "save_code": section.save_code,
        "sync_tensorboard": section.sync_tensorboard,
        "config": spec_config(spec),
        "job_type": "train",
    }
    if section.reinit:
        init["reinit"] = "finish_previous"
    train_dir.mkdir(parents=True, exist_ok=True)

    def start(run_mode: str) -> WandbLogger:
        wandb_logger = WandbLogger(
            save_dir=str(train_dir), id=section.run_id or None, log_model=False, mode=run_mode, **init
        )
        _ = wandb_logger.experiment  # start now: a failure shows here, before training
        return wandb_logger

    try:
        wandb_logger = start(mode)
    except Exception as exc:
        if mode != "online":
            raise
        logger.warning(
            "W&B could not start online (%s: %s); logging offline instead.", type(exc).__name__, exc
        )
        mode, why = "offline", "the online start failed"
        wandb_logger = start(mode)
    run = wandb_logger.experiment
    if not isinstance(getattr(run, "dir", None), str):
        return wandb_logger  # a process other than rank 0: Lightning's stand-in run, nothing to say
    if mode == "offline":
        folder = run_folder(run)
        logger.info(
            "W&B is offline (%s): the run is saved in %s; upload it with `wandb sync %s`.",
            why,
            folder,
            folder,
        )
    elif mode != "disabled":
        logger.info("W&B run %s: %s", run.id, getattr(run, "url", "") or "")
    return wandb_logger


class WandbRun(Callback):
    """Logs the latest checkpoint as a ``model`` artefact when training ends, then closes the run.

    Args:
        wandb_logger: the run's logger (from :func:`build_wandb_logger`).
        train_dir: the folder holding ``dd_model_latest.pth``.
    """

    def __init__(self, wandb_logger: WandbLogger, train_dir: Path) -> None:
        self.wandb_logger = wandb_logger
        self.train_dir = Path(train_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from ddetr.engine.callbacks import latest_checkpoint

        latest = latest_checkpoint(self.train_dir)
        if latest is None:
            return
        wandb = _import_wandb()
        run = self.wandb_logger.experiment
        metadata = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        metadata.update({k: float(v) for k, v in getattr(pl_module, "last_val_metrics", {}).items()})
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
        artifact.add_file(str(latest.resolve()), name=latest.resolve().name)
        run.log_artifact(artifact, aliases=["latest"])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.wandb_logger.experiment.finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.is_global_zero:
            self.wandb_logger.experiment.finish(exit_code=1)
