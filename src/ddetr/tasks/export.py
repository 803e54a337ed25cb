"""``ddetr export``: a checkpoint to a self-describing ONNX file (and, optionally, DeepStream files)."""

from __future__ import annotations

import logging
from pathlib import Path

from ddetr.errors import CheckpointError
from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import ExportResult

logger = logging.getLogger(__name__)


def tensorrt_installed() -> bool:
    """True when the ``tensorrt`` Python package can be found (not imported: it needs CUDA to load)."""
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


@recorded("export")
def run(spec: Spec) -> ExportResult:
    """Export; writes the ONNX file (default ``<results_dir>/export/<checkpoint stem>.onnx``) and status.json.

    Returns:
        The ONNX file, its input size, whether it uses TensorRT's attention plugin, and the DeepStream files
        when ``export.serialize_nvdsinfer`` asked for them.

    Raises:
        SpecError / CheckpointError: one line, before any work.
    """
    from ddetr.deploy.nvdsinfer import write_nvdsinfer
    from ddetr.deploy.onnx_export import check_export_args, export_onnx
    from ddetr.runtime.devices import export_device
    from ddetr.spec.sections import is_set, require
    from ddetr.status import StatusLogger
    from ddetr.tasks.common import prepare_results_dir

    section = spec.export
    check_export_args(section.opset_version, section.batch_size, section.input_channel)
    checkpoint = Path(require(spec, "export.checkpoint"))
    if not checkpoint.is_file():
        raise CheckpointError(f"export.checkpoint: {checkpoint} does not exist (or is not a file).")
    if checkpoint.is_symlink():  # the latest link: the ONNX file is named after the checkpoint it points at
        checkpoint = checkpoint.resolve()
    out_dir = prepare_results_dir(spec, "export")
    # empty or TAO's ``???``: derived from the checkpoint's name in the results folder
    onnx_file = Path(section.onnx_file) if is_set(section.onnx_file) else out_dir / f"{checkpoint.stem}.onnx"
    status = StatusLogger(out_dir / "status.json")
    with status.action(f"Exporting {checkpoint} to {onnx_file}."):
        if not section.on_cpu and not tensorrt_installed():
            logger.warning(
                "export.on_cpu is false: the attention is exported as TensorRT's plugin node, which ONNX Runtime "
                "cannot run (TensorRT is not installed here). Set export.on_cpu=true for an ONNX Runtime model."
            )
        result = export_onnx(
            checkpoint,
            onnx_file,
            input_size=(section.input_width, section.input_height),
            batch_size=section.batch_size,
            opset_version=section.opset_version,
            on_cpu=section.on_cpu,
            verbose=section.verbose,
            encryption_key=spec.encryption_key,
            device=export_device(section.on_cpu, section.gpu_id),
        )
        card = result.card
        labels = config = None
        if section.serialize_nvdsinfer:
            if spec.encryption_key:
                logger.warning(
                    "export.serialize_nvdsinfer: %s is encrypted (encryption_key is set) and DeepStream needs an "
                    "unencrypted model; export again with encryption_key= (empty) for DeepStream.",
                    result.onnx_file,
                )
            labels, config = write_nvdsinfer(result.onnx_file, card, section.batch_size)
        status.write(status="SUCCESS", message=f"Exported {result.onnx_file}.")
        width, height = card.input_size or (0, 0)
        return ExportResult(
            onnx_file=Path(result.onnx_file),
            input_size=(int(width), int(height)),
            trt_plugin=card.trt_plugin,
            labels_file=Path(labels) if labels is not None else None,
            nvinfer_config=Path(config) if config is not None else None,
        )
