"""The Python API: one function per action, as ``ddetr <action>`` runs it, returning a typed result.

``spec`` is a YAML spec file, a :class:`~ddetr.spec.sections.Spec` or ``None`` (the defaults). Keyword
overrides name dotted fields with ``__`` for the dots and take Python values (numbers, lists, dicts; paths
are turned into text)::

    import ddetr

    result = ddetr.train("spec.yaml", train__num_epochs=20, dataset__batch_size=2)
    metrics = ddetr.evaluate("spec.yaml", evaluate__checkpoint=result.best.path)

They go through the same override mechanism as the command line's ``key=value`` arguments, so a bad value
raises the same one-line :class:`~ddetr.errors.SpecError`. When the spec has no ``encryption_key``,
``DDETR_ENCRYPTION_KEY`` from the environment is used, as on the command line. Errors are our error types
(:mod:`ddetr.errors`), never ``SystemExit``; progress goes to :mod:`logging`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddetr.errors import DdetrError, SpecError

if TYPE_CHECKING:
    from ddetr.spec.sections import Spec
    from ddetr.tasks.results import (
        AutomlResult,
        ConvertResult,
        DatasetResult,
        DefaultSpecsResult,
        EvaluateResult,
        ExportResult,
        GenTrtEngineResult,
        ImportWeightsResult,
        InferenceResult,
        QuantizeResult,
        ReportResult,
        SkillResult,
        TrainResult,
    )

__all__ = [
    "SPEC_ACTIONS",
    "automl_search",
    "check_dataset",
    "convert",
    "default_specs",
    "evaluate",
    "export",
    "gen_trt_engine",
    "import_weights",
    "inference",
    "load_spec",
    "quantize",
    "report",
    "run_action",
    "skill",
    "train",
]

# the actions that take a spec, by their command-line name (``dataset`` is check_dataset here)
SPEC_ACTIONS: tuple[str, ...] = (
    "train",
    "evaluate",
    "inference",
    "export",
    "quantize",
    "gen_trt_engine",
    "default_specs",
    "automl",
    "dataset",
    "report",
    "skill",
)


def _plain(value: Any) -> Any:
    """``value`` with paths turned into text (spec fields hold paths as strings), in lists and dicts too."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _keyword_overrides(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``train__num_epochs=20`` -> ``("train.num_epochs", 20)``."""
    return [(key.replace("__", "."), _plain(value)) for key, value in values.items()]


def load_spec(
    spec: str | os.PathLike[str] | Spec | None = None,
    /,
    *,
    action: str | None = None,
    overrides: Sequence[str] = (),
    **values: Any,
) -> Spec:
    """The validated spec: ``spec`` with the overrides applied and the encryption key from the environment.

    Args:
        spec: a YAML spec file, a :class:`Spec` or ``None`` (the defaults).
        action: the action the spec is for (training-only warnings are logged for ``train``/``automl``/None).
        overrides: command-line style ``key=value`` strings (values parsed as YAML), applied first.
        **values: dotted fields with ``__`` for the dots and Python values, e.g. ``train__num_epochs=20``.

    Returns:
        The spec; ``encryption_key`` is ``DDETR_ENCRYPTION_KEY`` when the spec and overrides leave it empty.
        A :class:`Spec` without overrides is returned as it is once its cross-field rules pass (its warnings
        are not logged again).

    Raises:
        SpecError: one line naming the file, key or field, the value and what is allowed (an unknown key names
            the closest valid one).

    Example:
        >>> import ddetr
        >>> ddetr.load_spec(None, train__num_epochs=3, dataset__num_classes=5).train.num_epochs
        3
    """
    from ddetr.crypto import KEY_ENV
    from ddetr.spec.load import load_spec as _load

    if spec is not None and not isinstance(spec, (str, os.PathLike)) and not _is_spec(spec):
        raise SpecError(f"spec must be a YAML file path, a ddetr Spec or None, got {type(spec).__name__}")
    if _is_spec(spec) and not overrides and not values:
        from ddetr.spec.load import check_rules

        check_rules(spec, action)  # the rules of this action raise; the warnings were logged when it loaded
        loaded = spec
    else:
        path = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
        loaded = _load(path, [*overrides, *_keyword_overrides(values)], action=action)
    if not loaded.encryption_key and os.environ.get(KEY_ENV):
        loaded = loaded.model_copy(update={"encryption_key": os.environ[KEY_ENV]})  # keeps it out of argv
    return loaded


def _is_spec(value: Any) -> bool:
    from ddetr.spec.sections import Spec

    return isinstance(value, Spec)


def _task(action: str) -> Any:
    """The task module ``ddetr.tasks.<action>``, or a one-line error when it is not there."""
    name = f"ddetr.tasks.{action}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise DdetrError(f"action {action} is not available yet") from None
        raise
    if not callable(getattr(module, "run", None)):
        raise DdetrError(f"action {action} is not available yet")
    return module


def run_action(
    action: str,
    spec: str | os.PathLike[str] | Spec | None = None,
    /,
    *,
    overrides: Sequence[str] = (),
    **values: Any,
) -> Any:
    """Run a spec action by its command-line name (``train``, ..., ``dataset``); what ``ddetr <action>`` calls.

    Args:
        action: one of :data:`SPEC_ACTIONS`.
        spec: a YAML spec file, a :class:`Spec` or ``None``.
        overrides: command-line ``key=value`` strings (values parsed as YAML), applied before ``values``.
        **values: dotted fields with ``__`` for the dots and Python values.

    Returns:
        The task's result dataclass (:mod:`ddetr.tasks.results`).

    Raises:
        SpecError: an unknown action or a bad spec; the task's own errors (:mod:`ddetr.errors`).
    """
    if action not in SPEC_ACTIONS:
        raise SpecError(f"unknown action {action!r}; the actions are {', '.join(SPEC_ACTIONS)}")
    from ddetr.spec.rules import check_required

    loaded = load_spec(spec, action=action, overrides=overrides, **values)
    check_required(loaded, action)  # TAO's ??? left in a field the action needs: one line naming it
    return _task(action).run(loaded)


def train(
    spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any
) -> TrainResult | AutomlResult:
    """Train (``ddetr train``); resumes from ``<results_dir>/train/dd_model_latest.pth`` when it exists.

    Returns:
        The checkpoints with their validation KPIs (``checkpoints``, ``best``, ``latest``) and the final
        metrics; an :class:`AutomlResult` when the spec routes training to the search (``automl_policy=on``).

    Raises:
        SpecError / DataError / CheckpointError: one line. Interrupted: SIGTERM or Ctrl-C (after saving).
    """
    return run_action("train", spec, **overrides)


def evaluate(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> EvaluateResult:
    """COCO mAP of ``evaluate.checkpoint`` (or ``evaluate.trt_engine``) on ``dataset.test_data_sources``.

    Returns:
        mAP, mAP50, the 12 COCO numbers, per-class AP and the files written (``metrics.json``,
        ``detections.json``).
    """
    return run_action("evaluate", spec, **overrides)


def inference(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> InferenceResult:
    """Detections on ``dataset.infer_data_sources``: annotated images, KITTI labels and ``detections.json``."""
    return run_action("inference", spec, **overrides)


def export(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> ExportResult:
    """``export.checkpoint`` to a self-describing ONNX file (and DeepStream files when asked for)."""
    return run_action("export", spec, **overrides)


def quantize(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> QuantizeResult:
    """Post-training quantization of ``quantize.model_path``, with a before/after report (size, mAP)."""
    return run_action("quantize", spec, **overrides)


def gen_trt_engine(
    spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any
) -> GenTrtEngineResult:
    """A TensorRT engine from ``gen_trt_engine.onnx_file`` (needs TensorRT and an NVIDIA GPU)."""
    return run_action("gen_trt_engine", spec, **overrides)


def automl_search(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> AutomlResult:
    """Run, resume or join the hyperparameter search in ``<results_dir>/automl`` (``ddetr automl``).

    Named ``automl_search`` because ``ddetr.automl`` is the package that implements it.
    """
    return run_action("automl", spec, **overrides)


def check_dataset(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> DatasetResult:
    """Check every data source of the spec (``ddetr dataset``): report, plot and counts.

    Raises:
        DataError: the data has errors (one line: how many, of which kinds, where the report is).
    """
    return run_action("dataset", spec, **overrides)


def report(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> ReportResult:
    """Rewrite ``report.html`` in each train, evaluate and AutoML folder of ``results_dir`` (``ddetr report``).

    Every such run writes its report when it ends; this rebuilds them, e.g. after an interrupted run or with a
    newer ddetr. Only ``results_dir`` (and the actions' own ``results_dir``) of the spec are read: each report
    uses the spec its run recorded (``experiment.yaml``).

    Raises:
        SpecError: results_dir unset, or no run in it.
    """
    return run_action("report", spec, **overrides)


def default_specs(
    spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any
) -> DefaultSpecsResult:
    """Write a commented spec template for every action into ``results_dir``."""
    return run_action("default_specs", spec, **overrides)


def skill(spec: str | os.PathLike[str] | Spec | None = None, /, **overrides: Any) -> SkillResult:
    """Write the agent skill bundle (SKILL.md, schemas/, references/; TAO skill-bank layout) into ``results_dir``."""
    return run_action("skill", spec, **overrides)


def import_weights(
    source: str, input: str | os.PathLike[str], output: str | os.PathLike[str]
) -> ImportWeightsResult:
    """Convert original-release (``source="original"``) or Hugging Face (``"hf"``) weights to a checkpoint.

    Raises:
        CheckpointError: unreadable input or weights that do not fit the architecture (nothing written).
        SpecError: unknown ``source``.
    """
    return _task("import_weights").run(source, input, output)


def convert(
    format: str,
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    classes: str | os.PathLike[str] | None = None,
    classmap: str | os.PathLike[str] | None = None,
    drop_difficult: bool = False,
    skip_unlisted: bool = False,
    tolerance: float = 1.0,
) -> ConvertResult:
    """VOC / KITTI / YOLO labels to one COCO json (``ddetr convert``; the formats: ``ddetr convert --help``).

    Raises:
        DataError: bad input (one line naming the file and line) or an output that cannot be written.
    """
    return _task("convert").run(
        format,
        Path(images),
        Path(labels),
        Path(output),
        classes=classes,
        classmap=classmap,
        drop_difficult=drop_difficult,
        skip_unlisted=skip_unlisted,
        tolerance=tolerance,
    )
