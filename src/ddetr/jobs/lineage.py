"""Choosing a parent job's artefact (``--select best|latest|epoch=N|step=N``) and checking it is unchanged."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ddetr.jobs.registry import Artefact, Job, JobError, Registry, file_sha256

logger = logging.getLogger(__name__)

__all__ = ["MODEL_KINDS", "candidates", "choose", "parse_select", "verify"]

MODEL_KINDS = ("checkpoint", "onnx", "quantized", "engine")
_SELECT = re.compile(r"^(best|latest|(epoch|step)=(\d+))$")


def parse_select(text: str) -> tuple[str, int | None]:
    """``best`` -> ``("best", None)``, ``epoch=9`` -> ``("epoch", 9)``.

    Raises:
        JobError: not one of ``best``, ``latest``, ``epoch=N``, ``step=N``.
    """
    value = (text or "best").strip().lower()
    match = _SELECT.fullmatch(value)
    if match is None:
        raise JobError(
            f"select: {text!r} is not one of best, latest, epoch=N, step=N (e.g. --select epoch=9)"
        )
    if match.group(2):
        return match.group(2), int(match.group(3))
    return value, None


def candidates(registry: Registry, job: Job) -> list[Artefact]:
    """The job's model artefacts; an AutoML job's are its trials' (its children's)."""
    found = [a for a in job.artefacts if a.kind in MODEL_KINDS]
    if job.action == "automl":
        for child in registry.children(job.id):
            found += [a for a in child.artefacts if a.kind in MODEL_KINDS]
    return found


def _order(item: Artefact) -> tuple[int, int]:
    return (item.step if item.step is not None else -1, item.epoch if item.epoch is not None else -1)


def choose(
    job: Job, found: list[Artefact], kinds: tuple[str, ...], select: str, wanted: str, suffix: str = ""
) -> Artefact:
    """The artefact of one of ``kinds`` that ``select`` names.

    Args:
        job: the parent job (for messages).
        found: its model artefacts (:func:`candidates`).
        kinds: artefact kinds the action takes, most wanted first.
        select: ``best``, ``latest``, ``epoch=N`` or ``step=N``.
        wanted: what the action needs, for messages (e.g. ``checkpoint``).
        suffix: only files with this suffix (e.g. ``.onnx``) are taken.

    Raises:
        JobError: no artefact of those kinds (naming what the job has), or none at that epoch/step.
    """
    how, number = parse_select(select)
    usable = []
    for kind in kinds:
        usable = [a for a in found if a.kind == kind and a.path.endswith(suffix)]
        if usable:
            break
    if not usable:
        has = sorted(
            {f"{a.kind} ({Path(a.path).suffix})" if a.kind == "quantized" else a.kind for a in found}
        )
        what = ", ".join(has) if has else "no model file"
        raise JobError(
            f"parent job {job.id} ({job.action}, {job.status}) has no {wanted} to use: it has {what}"
        )
    usable.sort(key=_order)
    if how in ("epoch", "step"):
        hits = [a for a in usable if getattr(a, how) == number]
        if not hits:
            have = sorted({getattr(a, how) for a in usable if getattr(a, how) is not None})
            raise JobError(
                f"parent job {job.id} has no {usable[0].kind} at {how} {number}; its {how}s: "
                f"{', '.join(map(str, have)) or 'none recorded'}"
            )
        return hits[-1]
    if how == "latest":
        return usable[-1]
    scored = [a for a in usable if isinstance(a.kpis.get("val_mAP"), (int, float))]
    if scored:
        return max(scored, key=lambda a: (a.kpis["val_mAP"], *_order(a)))
    if len(usable) > 1 or usable[-1].kind == "checkpoint":
        logger.warning(
            "parent job %s: no %s has a val_mAP (no validation ran); taking the last one, %s",
            job.id,
            usable[-1].kind,
            Path(usable[-1].path).name,
        )
    return usable[-1]


def verify(job: Job, item: Artefact) -> None:
    """Check the artefact is still there with the bytes recorded.

    Raises:
        JobError: the file is gone or its SHA-256 differs (one line naming the file).
    """
    path = Path(item.path)
    if not path.is_file():
        raise JobError(f"parent job {job.id}: {path} was deleted or moved since it was recorded")
    if item.sha256 and file_sha256(path) != item.sha256:
        raise JobError(
            f"parent job {job.id}: {path} has changed since it was recorded (sha256 mismatch); "
            "it is not the file the job produced"
        )
