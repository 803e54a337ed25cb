"""What every task returns: one small frozen dataclass per action.

The CLI and the Python API (:mod:`ddetr.api`) import these types from here. Each has ``summary()``: the
scalar facts of the run (paths as text), which the CLI prints in its one ``<action> finished: k=v, ...`` line.
Paths are :class:`~pathlib.Path`; a metric that was not measured is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AutomlResult",
    "CheckpointRecord",
    "ConvertResult",
    "DatasetResult",
    "DefaultSpecsResult",
    "EvaluateResult",
    "ExportResult",
    "GenTrtEngineResult",
    "ImportWeightsResult",
    "InferenceResult",
    "QuantizeResult",
    "ReportResult",
    "SkillResult",
    "Summary",
    "TrainResult",
]

Summary = dict[str, str | int | float]


def _scalars(items: dict[str, Any]) -> Summary:
    """``items`` without ``None`` values, paths as text."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in items.items() if v is not None}


@dataclass(frozen=True)
class CheckpointRecord:
    """One training checkpoint and the validation KPIs of its weights, where a validation ran at its step.

    Attributes:
        path: the ``model_epoch_<EEE>_step_<SSSSS>.pth`` file.
        epoch: the epoch in its name (0-based, TAO's convention).
        step: the optimizer step in its name.
        val_mAP: COCO mAP@[.5:.95] on the validation set at that step (``None``: no validation then).
        val_mAP50: COCO mAP@.5 at that step.
        val_loss: the weighted validation loss at that step.
    """

    path: Path
    epoch: int
    step: int
    val_mAP: float | None = None
    val_mAP50: float | None = None
    val_loss: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """``train``: the checkpoints in the train folder with their KPIs, the best and the latest.

    Attributes:
        train_dir: ``<results_dir>/train`` (``train.results_dir`` when set): checkpoints, status.json, logs.
        checkpoints: every ``model_epoch_*_step_*.pth`` there (earlier runs that this one resumed included),
            in step order; empty after a dry run.
        latest: the file ``dd_model_latest.pth`` points at (``None`` after a dry run).
        best: the checkpoint with the highest ``val_mAP`` (``None`` when no checkpoint has one).
        epochs: epochs trained in total (the resumed ones included).
        steps: optimizer steps in total.
        train_loss: the mean training loss of the last epoch (NaN if unknown).
        val_metrics: the last validation's ``val_mAP``, ``val_mAP50``, ``val_loss`` (those measured).
        seconds: wall time of this run's fit.
        report: the run's ``report.html`` (``None`` after a dry run or when it could not be written).
    """

    train_dir: Path
    checkpoints: tuple[CheckpointRecord, ...]
    latest: Path | None
    best: CheckpointRecord | None
    epochs: int
    steps: int
    train_loss: float
    val_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    report: Path | None = None

    def summary(self) -> Summary:
        """epochs, steps, train_loss, the last validation KPIs, time and the latest checkpoint."""
        return _scalars(
            {
                "epochs": self.epochs,
                "steps": self.steps,
                "train_loss": self.train_loss,
                **self.val_metrics,
                "time": f"{self.seconds:.0f} s",
                "checkpoint": self.latest,
            }
        )


@dataclass(frozen=True)
class EvaluateResult:
    """``evaluate``: COCO metrics of one model on ``dataset.test_data_sources``.

    Attributes:
        model: the checkpoint, ONNX file or engine evaluated.
        backend: the runtime that ran it (``pytorch``, ``onnxruntime``, ``tensorrt``).
        images: images evaluated.
        test_mAP: COCO mAP@[.5:.95].
        test_mAP50: COCO mAP@.5.
        stats: the 12 COCOeval numbers by name.
        per_class_AP: AP@[.5:.95] per class name (NaN for a class without ground truth).
        metrics_json: the ``metrics.json`` written.
        detections_json: the COCO-results ``detections.json`` written.
        report: the run's ``report.html`` (``None`` when it could not be written).
    """

    model: Path
    backend: str
    images: int
    test_mAP: float
    test_mAP50: float
    stats: dict[str, float]
    per_class_AP: dict[str, float]
    metrics_json: Path
    detections_json: Path
    report: Path | None = None

    def summary(self) -> Summary:
        """model, backend, images, test_mAP, test_mAP50 and the metrics file."""
        return _scalars(
            {
                "model": self.model,
                "backend": self.backend,
                "images": self.images,
                "test_mAP": self.test_mAP,
                "test_mAP50": self.test_mAP50,
                "metrics_json": self.metrics_json,
            }
        )


@dataclass(frozen=True)
class InferenceResult:
    """``inference``: how many images and detections, and where the outputs are.

    Attributes:
        images: images found.
        detections: detections kept (score >= ``inference.conf_threshold``, named classes).
        images_annotated: the folder of annotated pictures.
        labels: the folder of KITTI label files.
        detections_json: the COCO-results ``detections.json``.
    """

    images: int
    detections: int
    images_annotated: Path
    labels: Path
    detections_json: Path

    def summary(self) -> Summary:
        """Every field."""
        return _scalars(
            {
                "images": self.images,
                "detections": self.detections,
                "images_annotated": self.images_annotated,
                "labels": self.labels,
                "detections_json": self.detections_json,
            }
        )


@dataclass(frozen=True)
class ExportResult:
    """``export``: the ONNX file and, with ``export.serialize_nvdsinfer``, the DeepStream files.

    Attributes:
        onnx_file: the ONNX model written.
        input_size: its fixed input ``(width, height)`` in pixels.
        trt_plugin: True when the attention is TensorRT's plugin node (ONNX Runtime cannot run it).
        labels_file: DeepStream ``labels.txt`` (``None`` unless asked for).
        nvinfer_config: DeepStream nvinfer config (``None`` unless asked for).
    """

    onnx_file: Path
    input_size: tuple[int, int]
    trt_plugin: bool
    labels_file: Path | None = None
    nvinfer_config: Path | None = None

    def summary(self) -> Summary:
        """The files written and whether the plugin node is used."""
        return _scalars(
            {
                "onnx_file": self.onnx_file,
                "labels_file": self.labels_file,
                "nvinfer_config": self.nvinfer_config,
                "trt_plugin": self.trt_plugin,
            }
        )


@dataclass(frozen=True)
class QuantizeResult:
    """``quantize``: the quantized model and its report (the fields of ``quantize_report.json``).

    Attributes:
        backend: ``torchao``, ``onnxruntime``, ``modelopt.pytorch`` or ``modelopt.onnx``.
        mode: the quantization mode (e.g. ``weight_only_ptq``, ``static_ptq``).
        device: where it ran (``cpu``).
        float_model: the model quantized.
        quantized_model: the model written.
        report_json: ``quantize_report.json``.
        weights_bytes_before: bytes of the float model's weights (a checkpoint's optimizer state left out).
        weights_bytes_after: bytes of the quantized model's weights.
        file_bytes_before: size of the float model file.
        file_bytes_after: size of the quantized model file.
        size_ratio: ``weights_bytes_after / weights_bytes_before``.
        quantization: the back end's own facts (calibration images, layers kept in float, ...).
        mAP_before: COCO mAP of the float model (``None`` without test or validation data).
        mAP_after: COCO mAP of the quantized model.
        mAP50_before: COCO mAP@.5 of the float model.
        mAP50_after: COCO mAP@.5 of the quantized model.
        eval_images: images the mAPs were measured on (``None`` without data).
    """

    backend: str
    mode: str
    device: str
    float_model: Path
    quantized_model: Path
    report_json: Path
    weights_bytes_before: int
    weights_bytes_after: int
    file_bytes_before: int
    file_bytes_after: int
    size_ratio: float
    quantization: dict[str, Any] = field(default_factory=dict)
    mAP_before: float | None = None
    mAP_after: float | None = None
    mAP50_before: float | None = None
    mAP50_after: float | None = None
    eval_images: int | None = None

    def summary(self) -> Summary:
        """backend, mode, device, both models, the size ratio, the mAPs and the report."""
        return _scalars(
            {
                "backend": self.backend,
                "mode": self.mode,
                "device": self.device,
                "float_model": self.float_model,
                "quantized_model": self.quantized_model,
                "size_ratio": self.size_ratio,
                "mAP_before": self.mAP_before,
                "mAP_after": self.mAP_after,
                "eval_images": self.eval_images,
                "report": self.report_json,
            }
        )


@dataclass(frozen=True)
class GenTrtEngineResult:
    """``gen_trt_engine``: the TensorRT engine written.

    Attributes:
        trt_engine: the engine file (its ``.json`` sidecar beside it).
        data_type: ``FP32``, ``FP16`` or ``INT8``.
    """

    trt_engine: Path
    data_type: str

    def summary(self) -> Summary:
        """Every field."""
        return _scalars({"trt_engine": self.trt_engine, "data_type": self.data_type})


@dataclass(frozen=True)
class DatasetResult:
    """``dataset`` (the data check): the report, the plot and the counts over all splits.

    Attributes:
        report: ``dataset_report.json``.
        plot: ``dataset_report.png``.
        images: images over all splits.
        boxes: boxes over all splits.
        errors: problems that make the data unusable (a result is only returned when there are none).
        warnings: problems worth a look.
    """

    report: Path
    plot: Path
    images: int
    boxes: int
    errors: int
    warnings: int

    def summary(self) -> Summary:
        """Every field."""
        return _scalars(
            {
                "report": self.report,
                "plot": self.plot,
                "images": self.images,
                "boxes": self.boxes,
                "errors": self.errors,
                "warnings": self.warnings,
            }
        )


@dataclass(frozen=True)
class AutomlResult:
    """``automl`` (or ``train`` with ``automl_policy=on``): the search's trial counts and best trial.

    Attributes:
        trials: trials asked for (``automl.max_recommendations``).
        complete: trials that finished.
        pruned: trials stopped early by the algorithm.
        failed: trials that failed.
        leaderboard: ``leaderboard.csv``.
        metric: the metric searched on (``automl.metric``).
        best_trial: number of the best trial (``None`` when no trial completed).
        best_value: its metric.
        best_checkpoint: its checkpoint.
        best_spec: ``best_spec.yaml``, the spec that reproduces it.
        report: the search's ``report.html`` (``None`` when it could not be written).
    """

    trials: int
    complete: int
    pruned: int
    failed: int
    leaderboard: Path
    metric: str
    best_trial: int | None = None
    best_value: float | None = None
    best_checkpoint: Path | None = None
    best_spec: Path | None = None
    report: Path | None = None

    def summary(self) -> Summary:
        """The counts, then ``best_trial``, ``best_<metric>``, ``best_checkpoint``, ``best_spec`` when known."""
        return _scalars(
            {
                "trials": self.trials,
                "complete": self.complete,
                "pruned": self.pruned,
                "fail": self.failed,
                "leaderboard": self.leaderboard,
                "best_trial": self.best_trial,
                f"best_{self.metric}": self.best_value,
                "best_checkpoint": self.best_checkpoint,
                "best_spec": self.best_spec,
            }
        )


@dataclass(frozen=True)
class DefaultSpecsResult:
    """``default_specs``: the spec templates written.

    Attributes:
        specs: ``<results_dir>/<action>.yaml`` for every action, in action order.
    """

    specs: tuple[Path, ...]

    def summary(self) -> Summary:
        """How many templates and their folder."""
        return _scalars({"specs": len(self.specs), "folder": self.specs[0].parent if self.specs else None})


@dataclass(frozen=True)
class ReportResult:
    """What ``ddetr report`` wrote.

    Attributes:
        reports: the ``report.html`` files, one per run folder found (train, evaluate, automl).
    """

    reports: tuple[Path, ...]

    def summary(self) -> Summary:
        """The reports written."""
        return {"reports": ", ".join(str(p) for p in self.reports)}


@dataclass(frozen=True)
class SkillResult:
    """``skill``: the agent skill bundle written.

    Attributes:
        folder: ``results_dir``, which holds ``SKILL.md``, ``schemas/`` and ``references/``.
        files: every file written, in bundle order.
    """

    folder: Path
    files: tuple[Path, ...]

    def summary(self) -> Summary:
        """How many files and their folder."""
        return _scalars({"files": len(self.files), "folder": self.folder})


@dataclass(frozen=True)
class ConvertResult:
    """``convert``: a folder of VOC / KITTI / YOLO labels turned into one COCO json.

    Attributes:
        format: ``voc``, ``kitti`` or ``yolo``.
        output: the COCO json written.
        images: images in it.
        images_without_labels: images without a label file (kept without boxes).
        boxes: boxes in it.
        boxes_per_class: boxes per class name, in category id order (ids 1..N).
        num_classes: the ``dataset.num_classes`` a spec needs (N + 1).
        clipped: boxes clipped to their image by more than the tolerance.
        size_mismatch: VOC files whose ``<size>`` differs from the image.
        skipped: objects left out, per reason.
        examples: a few places per kind of note (``clipped``, ``size mismatch``, ...).
        classmap: a file usable as ``dataset.infer_data_sources.classmap`` (``None`` when there is none).
    """

    format: str
    output: Path
    images: int
    images_without_labels: int
    boxes: int
    boxes_per_class: dict[str, int]
    num_classes: int
    clipped: int = 0
    size_mismatch: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    classmap: Path | None = None

    def summary(self) -> Summary:
        """The counts, the output and the classmap."""
        return _scalars(
            {
                "format": self.format,
                "output": self.output,
                "images": self.images,
                "boxes": self.boxes,
                "num_classes": self.num_classes,
                "clipped": self.clipped,
                "classmap": self.classmap,
            }
        )

    def lines(self) -> list[str]:
        """What ``ddetr convert`` prints: counts, boxes per class, notes and the spec values to set."""
        per_class = self.boxes_per_class
        width = max((len(n) for n in per_class), default=5)
        lines = [
            f"{self.format.upper()} -> {self.output}: {self.images} images "
            f"({self.images_without_labels} without a label file, kept without boxes), {self.boxes} boxes",
            *(
                f"  {i:>3}  {name:<{width}}  {count}"
                for i, (name, count) in enumerate(per_class.items(), start=1)
            ),
        ]
        notes = [f"{count} {reason}" for reason, count in self.skipped.items()]
        if notes:
            lines.append("left out: " + ", ".join(notes))
        if self.clipped:
            example = self.examples.get("clipped", [""])[0]
            lines.append(f"clipped to the image: {self.clipped} boxes (e.g. {example})")
        if self.size_mismatch:
            example = self.examples.get("size mismatch", [""])[0]
            lines.append(
                f"<size> differs from the image in {self.size_mismatch} files, image size used (e.g. {example})"
            )
        lines.append(
            f"spec: dataset.num_classes: {self.num_classes}   ({len(per_class)} classes, id 0 unused)"
        )
        if self.classmap:
            lines.append(f"spec: dataset.infer_data_sources.classmap: {self.classmap}")
        else:
            lines.append(
                "classmap for inference (one name per line; --classmap FILE writes it): "
                + ", ".join(per_class)
            )
        return lines


@dataclass(frozen=True)
class ImportWeightsResult:
    """``import_weights``: a published checkpoint converted into a self-describing ddetr checkpoint.

    Attributes:
        source: ``original`` (the SenseTime release) or ``hf`` (a Hugging Face folder).
        input: the file or folder read.
        output: the ``.pth`` written.
        tensors: tensors in its state dict.
        parameters: distinct parameters (aliased tensors counted once).
        architecture: the architecture in a few words (backbone, levels, variant, queries, layers, width).
        num_classes: classes of its classification head (background slot included).
    """

    source: str
    input: Path
    output: Path
    tensors: int
    parameters: int
    architecture: str
    num_classes: int

    def summary(self) -> Summary:
        """Every field."""
        return _scalars(
            {
                "source": self.source,
                "input": self.input,
                "output": self.output,
                "tensors": self.tensors,
                "parameters": self.parameters,
                "num_classes": self.num_classes,
            }
        )

    def describe(self) -> str:
        """One line: ``OUTPUT: N tensors, xM parameters, <architecture>, C classes (from SOURCE 'INPUT')``."""
        return (
            f"{self.output}: {self.tensors} tensors, {self.parameters / 1e6:.1f}M parameters, "
            f"{self.architecture}, {self.num_classes} classes (from {self.source} '{self.input}')"
        )
