"""Helpers every action shares: its results folder, the resolved spec, its status.json."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ddetr.artefacts.card import card_for_spec
from ddetr.errors import SpecError
from ddetr.model.predict import Predictor
from ddetr.spec.load import dump_spec, merge_model_from_checkpoint
from ddetr.spec.sections import Spec, is_set
from ddetr.status import StatusLogger
from ddetr.tasks.folders import action_dir
from ddetr.tasks.lock import is_secondary_rank, lock_results_dir

logger = logging.getLogger(__name__)

SHARED_ACTIONS = ("automl",)  # folders that several processes use together (AutoML workers joining a search)

__all__ = ["action_dir", "model_path", "open_predictor", "prepare_results_dir", "status_logger"]


def prepare_results_dir(spec: Spec, action: str) -> Path:
    """Create the action's results folder, check it is writable, lock it and write ``experiment.yaml``.

    The lock (:func:`ddetr.tasks.lock.lock_results_dir`) is held until the process exits: a second run on
    the same folder fails at once naming this one's pid and host. ``automl`` is not locked: several
    workers join one search in one folder by design.

    Args:
        spec: The validated spec.
        action: The action name (``train``, ``evaluate``, ...).

    Returns:
        The action's folder, ``<results_dir>/<action>/`` (or ``<action>.results_dir`` when set).

    Raises:
        SpecError: results_dir is empty/``???``, the folder cannot be created or written, or another run
            holds it.
    """
    folder = action_dir(spec, action)
    field = (
        f"{action}.results_dir"
        if is_set(getattr(getattr(spec, action, None), "results_dir", ""))
        else "results_dir"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SpecError(
            f"{field}: cannot write to {str(folder)!r} ({reason}); choose a writable folder, e.g. {field}=./results"
        ) from None
    if action not in SHARED_ACTIONS:
        lock_results_dir(folder, action, field)  # before anything is written: a second run changes nothing
    if is_secondary_rank():
        return folder  # a multi-process run: the first process writes the run's files
    # the record of the run leaves the encryption key out (it would sit in plain text beside encrypted files)
    recorded = spec.model_copy(update={"encryption_key": ""}) if spec.encryption_key else spec
    dump_spec(recorded, folder / "experiment.yaml")
    from ddetr.tasks.jobrecord import started

    started(spec, action, folder)  # the job registry's record of this run, and <folder>/job.json
    logger.debug(f"{action}: results in {folder}")
    return folder


def status_logger(folder: str | Path) -> StatusLogger:
    """The action's ``status.json`` writer, in the folder :func:`prepare_results_dir` returned."""
    return StatusLogger(Path(folder) / "status.json")


def model_path(spec: Spec, action: str) -> str:
    """``checkpoint`` or ``trt_engine`` of the evaluate/inference section, whichever is given.

    Raises:
        SpecError: neither is given (empty or ``???``).
    """
    section = getattr(spec, action)
    for name in ("checkpoint", "trt_engine"):
        value = getattr(section, name, "") or ""
        if is_set(value):
            return value
    raise SpecError(
        f"{action}.checkpoint: required, not given. Set {action}.checkpoint=PATH (or {action}.trt_engine)."
    )


def open_predictor(spec: Spec, action: str) -> Predictor:
    """The predictor of the action's model file, with the card it runs with.

    The artefact's card decides the architecture, the preprocessing and ``num_select``; fields the spec sets
    to other values win, each named in one warning line (:func:`ddetr.artefacts.card.card_for_spec`). A
    checkpoint's architecture always wins, with one warning line naming each field where the spec's model
    section differs. It runs on the first of the section's ``gpu_ids`` when CUDA exists and ``num_gpus`` >= 1
    (:func:`ddetr.runtime.devices.run_device`), else on the CPU.

    Raises:
        SpecError: no model file given, or the first of ``gpu_ids`` is not a GPU of this machine. CheckpointError / UnavailableError: the file cannot be run here.
    """
    from ddetr.runtime import load_predictor
    from ddetr.runtime.allocator import keep_freed_memory
    from ddetr.runtime.devices import run_device

    keep_freed_memory()  # each batch reuses the pages the last one freed (runtime/allocator.py)
    section = getattr(spec, action)
    device = run_device(section.num_gpus, section.gpu_ids, field=f"{action}.gpu_ids")
    predictor = load_predictor(model_path(spec, action), device=device, encryption_key=spec.encryption_key)
    if predictor.backend == "pytorch":
        merge_model_from_checkpoint(spec.model, predictor.card.model.model_dump())  # warns on differences
    predictor.card = card_for_spec(predictor.card, spec, action)
    return predictor
