"""``ddetr train``: fit a Deformable DETR from the spec, with TAO's checkpoint and status conventions."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ddetr.errors import CheckpointError, Interrupted, SpecError
from ddetr.tasks.folders import best_checkpoint, checkpoint_records
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import AutomlResult, TrainResult

if TYPE_CHECKING:
    from ddetr.spec.sections import Spec

logger = logging.getLogger(__name__)


def apply_freeze(model: torch.nn.Module, names: list[str]) -> int:
    """Freeze every parameter under the given module names (``backbone``, ``transformer.encoder``, ...).

    Returns:
        The number of frozen parameter tensors.

    Raises:
        SpecError: a name that matches no module.
    """
    modules = dict(model.named_modules())
    frozen = 0
    for name in names:
        if name not in modules:
            top = sorted({n.split(".")[0] for n in modules if n})
            raise SpecError(
                f"train.freeze: no module named {name!r} in the model; top-level modules are {top}."
            )
        for param in modules[name].parameters():
            param.requires_grad_(False)
            frozen += 1
    return frozen


def load_pretrained(model: torch.nn.Module, path: str, encryption_key: str | None = None) -> None:
    """Initialise from a full-model checkpoint, keeping tensors whose name and shape match; one report line.

    ``path`` is a ddetr checkpoint, a Hugging Face model folder or a Hub id ``hf:<org>/<name>`` (converted as
    ``ddetr import_weights --source hf`` does). ``encryption_key`` reads an encrypted checkpoint (plain ones
    ignore it).
    """
    from ddetr.artefacts.checkpoint import load_checkpoint
    from ddetr.model.weights import import_hf, is_hf_hub_id

    if is_hf_hub_id(path) or Path(path).is_dir():
        state_dict, section, _, _ = import_hf(path)
        backbone = section.backbone
    else:
        info = load_checkpoint(path, encryption_key=encryption_key)
        state_dict, backbone = info.state_dict, info.card.model.backbone
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(
            f"train.pretrained_model_path: no tensor of {path} fits this model "
            f"(checkpoint backbone {backbone}, spec backbone {model.model_config.backbone})."
        )
    model.load_state_dict(matched, strict=False)
    skipped = len(state_dict) - len(matched)
    missing = len(own) - len(matched)
    logger.info(
        "Pretrained weights %s: %d tensors loaded, %d skipped (name or shape differs), %d left at initialisation.",
        path,
        len(matched),
        skipped,
        missing,
    )


def _summary(result: TrainResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Training summary", show_header=False)
    for key, value in result.summary().items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


def _interrupted(exc: SystemExit, train_dir: Path, step: int) -> Interrupted:
    """The error for a fit stopped by SIGTERM (exit 143) or Ctrl-C (exit 130), naming what to resume from."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ddetr.engine.callbacks import latest_checkpoint

    sigterm = isinstance(exc, SIGTERMException)
    latest = latest_checkpoint(train_dir)
    where = f"; latest checkpoint {latest.resolve()}" if latest is not None else "; no checkpoint was saved"
    return Interrupted(
        f"training interrupted by {'SIGTERM' if sigterm else 'Ctrl-C'} at step {step}{where}; "
        "run the same command again to resume",
        143 if sigterm else 130,
    )


@recorded("train")
def run(spec: Spec) -> TrainResult | AutomlResult:
    """Train as the spec says (or run the hyperparameter search when ``automl_policy=on``).

    Returns:
        The checkpoints in the train folder with their validation KPIs, the best and the latest one, and the
        final metrics; the search's result when the request was routed to AutoML.

    Raises:
        SpecError / DataError / CheckpointError: one line, before or during the fit.
        Interrupted: SIGTERM or Ctrl-C stopped the fit (after saving the step reached).
    """
    import lightning.pytorch as pl

    from ddetr.engine.callbacks import latest_checkpoint
    from ddetr.engine.datamodule import DetectionDataModule
    from ddetr.engine.module import DetectionModule, estimated_steps
    from ddetr.engine.trainer import TorchFlags, build_trainer, plan_devices
    from ddetr.model.detector import DeformableDETR
    from ddetr.runtime.allocator import keep_freed_memory
    from ddetr.runtime.devices import explain_oom
    from ddetr.status import StatusLogger
    from ddetr.tasks.automl import maybe_route
    from ddetr.tasks.common import prepare_results_dir
    from ddetr.tasks.lock import is_secondary_rank

    routed = maybe_route(spec)  # automl_policy=on (or automl.enabled=true): hyperparameter search instead
    if routed is not None:
        return routed
    train_dir = prepare_results_dir(spec, "train")
    status = StatusLogger(train_dir / "status.json")
    primary = not is_secondary_rank()  # under DDP only the first process writes status.json
    torch_flags = TorchFlags.capture()  # train.cudnn changes them process-wide: put back when training ends
    keep_freed_memory()  # each step reuses the pages the last one freed (runtime/allocator.py)
    try:
        if spec.train.seed >= 0:
            pl.seed_everything(spec.train.seed, workers=True, verbose=False)
        plan = plan_devices(spec.train)
        data = DetectionDataModule(spec, world_size=plan.world_size)
        model = DeformableDETR.from_config(spec.model, spec.dataset.num_classes)
        if spec.train.pretrained_model_path:
            load_pretrained(model, spec.train.pretrained_model_path, spec.encryption_key)
        if spec.train.freeze:
            apply_freeze(model, list(spec.train.freeze))
        module = DetectionModule(
            model,
            spec,
            class_names=data.class_names,
            coco_gt=data.val_set.coco_gt if data.val_set is not None else None,
            eval_class_ids=spec.dataset.eval_class_ids,
        )
        ckpt_dir = Path(tempfile.mkdtemp(prefix="ddetr_dry_run_")) if spec.train.is_dry_run else train_dir
        resume = spec.train.resume_training_checkpoint_path or None
        if resume is None and not spec.train.is_dry_run:
            latest = latest_checkpoint(train_dir)
            resume = str(latest) if latest else None
        if resume:
            if not Path(resume).is_file():
                raise CheckpointError(f"train.resume_training_checkpoint_path: {resume} is not a file.")
            logger.info("Resuming from %s", resume)
        steps = estimated_steps(len(data.train_set), spec.dataset.batch_size, plan.world_size)
        trainer = build_trainer(spec, ckpt_dir, status, plan, steps_per_epoch=steps)
        start = time.monotonic()
        with warnings.catch_warnings():
            # experiment.yaml and status.json live beside the checkpoints by design
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
            # resuming an interrupt checkpoint: the rest of that epoch draws a fresh shuffle, which is fine
            warnings.filterwarnings(
                "ignore", message=".*resuming from a checkpoint that ended before the epoch.*"
            )
            try:
                with explain_oom("dataset.batch_size", spec.dataset.batch_size):
                    trainer.fit(module, datamodule=data, ckpt_path=resume)
            except SystemExit as exc:  # Lightning ends SIGTERM and Ctrl-C with SystemExit, after on_exception
                raise _interrupted(exc, train_dir, trainer.global_step) from None
        if spec.train.is_dry_run:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        latest = None if spec.train.is_dry_run else latest_checkpoint(train_dir)
        records = () if spec.train.is_dry_run else checkpoint_records(train_dir)
        result = TrainResult(
            train_dir=train_dir.resolve(),
            checkpoints=records,
            latest=latest.resolve() if latest is not None else None,
            best=best_checkpoint(records),
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            train_loss=float(trainer.callback_metrics.get("train_loss", float("nan"))),
            val_metrics={k: float(v) for k, v in module.last_val_metrics.items()},
            seconds=time.monotonic() - start,
        )
        if trainer.is_global_zero:
            _summary(result)
            status.write(status="SUCCESS", message="Training finished.", kpi=dict(module.last_val_metrics))
            if not spec.train.is_dry_run:
                from ddetr.tasks.report import write_report_quietly

                result = dataclasses.replace(result, report=write_report_quietly(train_dir, "train"))
        return result
    except Interrupted:
        raise  # status.json already has the FAILURE line (StatusCallback.on_exception)
    except Exception as exc:
        if primary:
            status.write(status="FAILURE", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        torch_flags.restore()
