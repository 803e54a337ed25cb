"""Helpers every action shares: its results folder, the resolved spec, its status.json."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ddetr.errors import SpecError
from ddetr.spec.load import dump_spec
from ddetr.spec.sections import Spec, is_set
from ddetr.status import StatusLogger

logger = logging.getLogger(__name__)

__all__ = ["action_dir", "prepare_results_dir", "status_logger"]


def action_dir(spec: Spec, action: str) -> Path:
    """``<action>.results_dir`` when set, else ``<results_dir>/<action>``.

    Raises:
        SpecError: neither is set (empty or ``???``).
    """
    section = getattr(spec, action, None)
    own = getattr(section, "results_dir", "") if section is not None else ""
    if is_set(own):
        return Path(own).expanduser()
    if not is_set(spec.results_dir):
        raise SpecError(
            f"results_dir is not set (got {spec.results_dir!r}); every action needs it: set results_dir "
            f"in the spec or pass results_dir=/path/to/results"
        )
    return Path(spec.results_dir).expanduser() / action


def prepare_results_dir(spec: Spec, action: str) -> Path:
    """Create the action's results folder, check it is writable and write ``experiment.yaml`` into it.

    Args:
        spec: The validated spec.
        action: The action name (``train``, ``evaluate``, ...).

    Returns:
        The action's folder, ``<results_dir>/<action>/`` (or ``<action>.results_dir`` when set).

    Raises:
        SpecError: results_dir is empty/``???``, or the folder cannot be created or written.
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
    # the record of the run leaves the encryption key out (it would sit in plain text beside encrypted files)
    recorded = spec.model_copy(update={"encryption_key": ""}) if spec.encryption_key else spec
    dump_spec(recorded, folder / "experiment.yaml")
    logger.debug(f"{action}: results in {folder}")
    return folder


def status_logger(folder: str | Path) -> StatusLogger:
    """The action's ``status.json`` writer, in the folder :func:`prepare_results_dir` returned."""
    return StatusLogger(Path(folder) / "status.json")
