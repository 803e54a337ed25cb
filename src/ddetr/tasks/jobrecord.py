"""Every action run recorded in the job registry (:mod:`ddetr.jobs`), and ``parent_job_id`` resolved.

Each task's ``run`` is wrapped by :func:`recorded`. Before the task runs, the spec's ``parent_job_id`` (the
CLI's ``--parent``) fills the action's model-path field with the parent's artefact that ``parent_select``
(``--select``) names, unless the spec gives a path itself. When the task makes its results folder
(:func:`ddetr.tasks.common.prepare_results_dir`) the job is recorded as running, with a heartbeat, and
``<folder>/job.json`` names it; when the task returns or fails the job is closed with the artefacts and KPIs
of its typed result. Only the first process of a multi-process run records. A registry that cannot be
written (read-only, locked, corrupt) costs one warning: the action still runs, unrecorded.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ddetr.errors import Interrupted
from ddetr.fileio import atomic_write_text
from ddetr.jobs import registry as reg
from ddetr.jobs.lineage import candidates, choose, verify
from ddetr.jobs.registry import Artefact, JobError, Registry, epoch_step_of
from ddetr.spec.sections import Spec, is_set
from ddetr.tasks.lock import is_secondary_rank

logger = logging.getLogger(__name__)

__all__ = [
    "JOB_FILE",
    "PARENT_ENV",
    "JobError",
    "current_job_id",
    "outputs",
    "recorded",
    "resolve_parent",
    "started",
]

JOB_FILE = "job.json"
PARENT_ENV = "DDETR_JOBS_PARENT"  # set by a running AutoML job: its trials record it as their parent

F = TypeVar("F", bound=Callable[..., Any])

# the model-path fields each action fills from a parent, and the artefact kinds it takes, most wanted first
_TAKES: dict[str, tuple[str, ...]] = {
    "train": ("checkpoint",),
    "automl": ("checkpoint",),
    "export": ("checkpoint",),
    "evaluate": ("engine", "quantized", "onnx", "checkpoint"),
    "inference": ("engine", "quantized", "onnx", "checkpoint"),
    "quantize": ("onnx", "checkpoint"),
    "gen_trt_engine": ("quantized", "onnx"),
}
_WANTED = {
    "train": "checkpoint",
    "automl": "checkpoint",
    "export": "checkpoint",
    "evaluate": "checkpoint, ONNX file or engine",
    "inference": "checkpoint, ONNX file or engine",
    "quantize": "checkpoint or ONNX file",
    "gen_trt_engine": "ONNX file",
}


@dataclass
class _Frame:
    action: str
    parent_id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    registry: Registry | None = None
    job_id: str | None = None
    folder: Path | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    env_before: str | None = None


_frames: list[_Frame] = []


def current_job_id() -> str | None:
    """The id of the job this process is recording now (``None`` outside one, or when unrecorded)."""
    return _frames[-1].job_id if _frames else None


def _model_fields(spec: Spec, action: str) -> list[str]:
    return {
        "train": ["train.pretrained_model_path", "train.resume_training_checkpoint_path"],
        "automl": ["train.pretrained_model_path"],
        "export": ["export.checkpoint"],
        "evaluate": ["evaluate.checkpoint", "evaluate.trt_engine"],
        "inference": ["inference.checkpoint", "inference.trt_engine"],
        "quantize": ["quantize.model_path"],
        "gen_trt_engine": ["gen_trt_engine.onnx_file"],
    }.get(action, [])


def _explicit(spec: Spec, action: str) -> str:
    for name in _model_fields(spec, action):
        if is_set(spec.get(name)):
            return name
    return ""


def _with(spec: Spec, dotted: str, value: str) -> Spec:
    section_name, name = dotted.split(".", 1)
    section = getattr(spec, section_name).model_copy(update={name: value})
    return spec.model_copy(update={section_name: section})


def _open(spec: Spec) -> Registry:
    return Registry(spec.jobs_db if is_set(spec.jobs_db) else None)


def resolve_parent(spec: Spec, action: str) -> Spec:
    """The spec with the action's model path taken from ``parent_job_id``'s artefacts (see module doc).

    The returned spec's ``parent_job_id`` is the parent's full id. Without a parent the spec is returned as it
    is; with an explicit model path that path wins (one info line).

    Raises:
        JobError: unknown parent id (with the closest ids), no artefact of the kind the action takes (naming
            what the parent has), none at the selected epoch/step, a file deleted or changed since recorded
            (checksum mismatch), or a registry that cannot be read.
    """
    explicit = _explicit(spec, action)
    if explicit:
        value = Path(str(spec.get(explicit)))
        if value.is_symlink() and value.name.startswith("dd_model_latest"):
            logger.info(
                "%s: %s is the latest link; it points at %s now (give a parent job or an epoch checkpoint to "
                "pin one)",
                explicit,
                value,
                value.resolve().name,
            )
    if not is_set(spec.parent_job_id):
        if spec.parent_select.strip().lower() != "best":
            raise JobError(
                f"parent_select={spec.parent_select} chooses among a parent job's files, and no parent is given; "
                "add --parent JOB (parent_job_id=JOB)"
            )
        return spec
    registry = _open(spec)
    job = registry.get(spec.parent_job_id)
    spec = spec.model_copy(update={"parent_job_id": job.id})
    if action not in _TAKES:
        return spec  # the parent is only recorded (lineage)
    if explicit:
        logger.info("%s is given in the spec: it wins over parent job %s's artefacts", explicit, job.id)
        return spec
    found = candidates(registry, job)
    suffix = ".onnx" if action == "gen_trt_engine" else ""
    chosen = choose(job, found, _TAKES[action], spec.parent_select, _WANTED[action], suffix)
    verify(job, chosen)
    target = _model_fields(spec, action)[0]
    if action in ("evaluate", "inference") and not chosen.path.endswith(".pth"):
        target = f"{action}.trt_engine"
    if action == "train" and job.action == "train":
        from ddetr.tasks.folders import action_dir

        same = Path(job.results_dir).resolve() == action_dir(spec, "train").resolve()
        if same:  # the same training folder: continue it rather than start again from its weights
            target = "train.resume_training_checkpoint_path"
    logger.info(
        "parent job %s (%s): %s=%s (select %s)", job.id, job.action, target, chosen.path, spec.parent_select
    )
    return _with(spec, target, chosen.path)


def _warn(frame: _Frame, what: str, exc: BaseException) -> None:
    text = " ".join(str(exc).split())[:300]
    logger.warning(
        "%s: job registry not written (%s: %s); the run goes on unrecorded", frame.action, what, text
    )


def _write_job_file(frame: _Frame, status: str) -> None:
    if frame.folder is None:
        return
    data = {
        "job_id": frame.job_id,
        "parent_job_id": frame.parent_id or None,
        "action": frame.action,
        "status": status,
        "registry": frame.registry.shown if frame.registry is not None else None,
    }
    try:
        atomic_write_text(frame.folder / JOB_FILE, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        logger.debug("cannot write %s: %s", frame.folder / JOB_FILE, exc)


def _beat(registry: Registry, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(reg.HEARTBEAT_INTERVAL):
        try:
            registry.beat(job_id)
        except Exception:  # a busy or vanished registry: the next beat tries again
            pass


def started(spec: Spec, action: str, folder: Path) -> None:
    """Record the running job of the action whose results folder was just made (called by prepare_results_dir).

    Does nothing outside :func:`recorded` (or for another action than the one being recorded).
    """
    if not _frames or _frames[-1].action != action or _frames[-1].folder is not None:
        return
    frame = _frames[-1]
    frame.folder = folder
    try:
        frame.registry = _open(spec)
        experiment = folder / "experiment.yaml"
        text = experiment.read_text(encoding="utf-8") if experiment.is_file() else ""
        frame.job_id = frame.registry.start(
            action,
            results_dir=str(folder.resolve()),
            parent_id=frame.parent_id,
            spec=text,
            inputs=frame.inputs,
        )
    except Exception as exc:  # JobError, SQLAlchemyError, OSError: never stop the action for the record
        _warn(frame, "cannot record the job", exc)
        frame.registry = None
        frame.job_id = None
    _write_job_file(frame, "running")
    if frame.registry is None or frame.job_id is None:
        return
    logger.info(
        "%s: job %s%s", action, frame.job_id, f" (parent {frame.parent_id})" if frame.parent_id else ""
    )
    threading.Thread(
        target=_beat, args=(frame.registry, frame.job_id, frame.stop), name="ddetr-job-heartbeat", daemon=True
    ).start()
    if action == "automl":  # trials (subprocesses) record this job as their parent
        frame.env_before = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = frame.job_id


def _art(path: Any, kind: str, **extra: Any) -> list[Artefact]:
    return [Artefact(path=str(path), kind=kind, **extra)] if path else []


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def outputs(result: Any, inputs: dict[str, Any]) -> tuple[list[Artefact], dict[str, Any]]:
    """The artefacts and KPIs of a task's typed result (:mod:`ddetr.tasks.results`)."""
    from ddetr.tasks import results as r

    epoch, step = epoch_step_of(str(inputs.get("model", "")))
    lineage = {"epoch": epoch, "step": step}
    arts: list[Artefact] = []
    kpis: dict[str, Any] = {}
    if isinstance(result, r.TrainResult):
        for c in result.checkpoints:
            own = {
                k: v
                for k in ("val_mAP", "val_mAP50", "val_loss")
                if (v := _number(getattr(c, k))) is not None
            }
            arts.append(Artefact(path=str(c.path), kind="checkpoint", epoch=c.epoch, step=c.step, kpis=own))
        kpis = {k: v for k, v in result.val_metrics.items() if _number(v) is not None}
        kpis.update(epochs=result.epochs, steps=result.steps)
        if result.best is not None:
            kpis.update(best_val_mAP=result.best.val_mAP, best_checkpoint=Path(result.best.path).name)
    elif isinstance(result, r.EvaluateResult):
        arts = _art(result.metrics_json, "metrics") + _art(result.detections_json, "detections")
        kpis = {"test_mAP": result.test_mAP, "test_mAP50": result.test_mAP50, "images": result.images}
        kpis["backend"] = result.backend
    elif isinstance(result, r.InferenceResult):
        arts = _art(result.detections_json, "detections")
        kpis = {"images": result.images, "detections": result.detections}
    elif isinstance(result, r.ExportResult):
        arts = _art(result.onnx_file, "onnx", **lineage) + _art(result.labels_file, "labels")
        arts += _art(result.nvinfer_config, "config")
    elif isinstance(result, r.QuantizeResult):
        arts = _art(result.quantized_model, "quantized", **lineage) + _art(result.report_json, "report")
        kpis = {
            "quantized_mAP": result.mAP_after,
            "quantized_mAP50": result.mAP50_after,
            "float_mAP": result.mAP_before,
            "size_ratio": result.size_ratio,
        }
    elif isinstance(result, r.GenTrtEngineResult):
        arts = _art(result.trt_engine, "engine", **lineage)
        kpis = {"data_type": result.data_type}
    elif isinstance(result, r.AutomlResult):
        arts = _art(result.leaderboard, "report") + _art(result.best_spec, "spec")
        kpis = {"trials": result.trials, "complete": result.complete, "best_trial": result.best_trial}
        kpis[f"best_{result.metric}"] = result.best_value
    elif isinstance(result, r.DatasetResult):
        arts = _art(result.report, "report") + _art(result.plot, "plot")
        kpis = {"images": result.images, "boxes": result.boxes, "errors": result.errors}
    elif isinstance(result, r.DefaultSpecsResult):
        arts = [a for s in result.specs for a in _art(s, "spec")]
    return arts, {k: v for k, v in kpis.items() if v is not None}


def _partial_train(folder: Path, records: Any) -> Any:
    from ddetr.tasks.results import TrainResult

    return TrainResult(folder, tuple(records), None, None, 0, 0, float("nan"))


def _close(frame: _Frame, status: str, reason: str = "", result: Any = None) -> None:
    frame.stop.set()
    if frame.env_before is not None or (frame.action == "automl" and frame.job_id):
        if frame.env_before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = frame.env_before
    if frame.registry is None or frame.job_id is None:
        return
    try:
        kpis: dict[str, Any] = {}
        if result is None and frame.action == "train" and frame.folder is not None:
            # a stopped training's checkpoints (the one saved on SIGTERM included) can still be parents
            from ddetr.tasks.folders import checkpoint_records

            records = checkpoint_records(frame.folder)
            arts, _ = outputs(_partial_train(frame.folder, records), frame.inputs)
            frame.registry.add_artefacts(frame.job_id, arts)
        if result is not None:
            arts, kpis = outputs(result, frame.inputs)
            frame.registry.add_artefacts(frame.job_id, arts)
        frame.registry.finish(frame.job_id, status, reason, kpis)
    except Exception as exc:
        _warn(frame, "cannot close the job", exc)
    _write_job_file(frame, status)


def _inputs(spec: Spec, action: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name in _model_fields(spec, action):
        value = spec.get(name)
        if is_set(value):
            inputs["model"] = str(Path(str(value)).resolve())
            inputs["field"] = name
            break
    if is_set(spec.parent_job_id):
        inputs["select"] = spec.parent_select
    return inputs


def recorded(action: str) -> Callable[[F], F]:
    """Decorator of a task's ``run(spec)``: resolve the parent, record the job, close it with the result."""

    def wrap(run: F) -> F:
        @functools.wraps(run)
        def inner(spec: Spec, *args: Any, **kwargs: Any) -> Any:
            if is_secondary_rank():
                return run(spec, *args, **kwargs)
            spec = resolve_parent(spec, action)
            # an AutoML trial's parent is its search; the search itself resolved the spec's parent
            parent = os.environ.get(PARENT_ENV, "") or (
                spec.parent_job_id if is_set(spec.parent_job_id) else ""
            )
            frame = _Frame(action=action, parent_id=parent, inputs=_inputs(spec, action))
            _frames.append(frame)
            try:
                result = run(spec, *args, **kwargs)
            except (Interrupted, KeyboardInterrupt) as exc:
                _close(frame, "interrupted", str(exc) or type(exc).__name__)
                raise
            except BaseException as exc:
                _close(frame, "failure", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000])
                raise
            else:
                _close(frame, "success", result=result)
            finally:
                _frames.remove(frame)
            return result

        return inner  # type: ignore[return-value]

    return wrap
