"""Where an action's files are: its results folder and the checkpoints a training left in it.

The modules that write a run (:mod:`ddetr.tasks.train`, :mod:`ddetr.tasks.common`) and those that read one
afterwards (the job record, the report) share these, so none of them imports another task.
"""

from __future__ import annotations

import re
from pathlib import Path

from ddetr.errors import SpecError
from ddetr.spec.sections import Spec, is_set
from ddetr.tasks.results import CheckpointRecord

__all__ = ["action_dir", "best_checkpoint", "checkpoint_records"]

_CHECKPOINT_NAME = re.compile(r"model_epoch_(\d+)_step_(\d+)\.pth")


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


def checkpoint_records(train_dir: Path) -> tuple[CheckpointRecord, ...]:
    """Every ``model_epoch_<EEE>_step_<SSSSS>.pth`` in ``train_dir``, in step order, with its KPIs.

    The KPIs are those of the validation that ran at the checkpoint's step, as status.json recorded it
    (``None`` when no validation ran at that step, e.g. a checkpoint saved on SIGTERM mid-epoch).
    """
    from ddetr.status import read_status

    kpis: dict[int, dict[str, float]] = {}
    for event in read_status(train_dir / "status.json"):
        kpi = event.get("kpi")
        if isinstance(kpi, dict) and "step" in event and any(k.startswith("val_") for k in kpi):
            kpis[int(event["step"])] = kpi
    records = []
    for path in train_dir.glob("model_epoch_*_step_*.pth"):
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match is None or path.is_symlink():
            continue
        epoch, step = int(match.group(1)), int(match.group(2))
        kpi = kpis.get(step, {})

        def number(name: str, kpi: dict[str, float] = kpi) -> float | None:
            value = kpi.get(name)
            return float(value) if isinstance(value, (int, float)) else None

        records.append(
            CheckpointRecord(
                path.resolve(), epoch, step, number("val_mAP"), number("val_mAP50"), number("val_loss")
            )
        )
    return tuple(sorted(records, key=lambda r: (r.step, r.epoch)))


def best_checkpoint(records: tuple[CheckpointRecord, ...]) -> CheckpointRecord | None:
    """The record with the highest ``val_mAP`` (the later one on a tie); ``None`` when none has a mAP."""
    scored = [r for r in records if r.val_mAP is not None]
    return max(scored, key=lambda r: (r.val_mAP, r.step)) if scored else None
