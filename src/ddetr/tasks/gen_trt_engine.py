"""``ddetr gen_trt_engine``: an exported ONNX file to a TensorRT engine (needs TensorRT and an NVIDIA GPU)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ddetr.errors import CheckpointError
from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import GenTrtEngineResult

if TYPE_CHECKING:
    from ddetr.artefacts.card import ModelCard
    from ddetr.deploy.tensorrt import TrtBuildSettings

logger = logging.getLogger(__name__)


def plan(spec: Spec) -> tuple[TrtBuildSettings, ModelCard]:
    """Check the section and the ONNX file and derive the builder settings (no TensorRT needed).

    Returns:
        ``(TrtBuildSettings, the ONNX file's model card)``.

    Raises:
        SpecError / CheckpointError / DataError: one line, before any work.
    """
    from ddetr.artefacts.onnx_file import read_card
    from ddetr.deploy.tensorrt import build_settings, calibration_stream
    from ddetr.spec.sections import MISSING, is_set, require
    from ddetr.tasks.common import action_dir

    section = spec.gen_trt_engine
    onnx_file = Path(require(spec, "gen_trt_engine.onnx_file"))
    if not onnx_file.is_file():
        raise CheckpointError(f"gen_trt_engine.onnx_file: {onnx_file} does not exist (or is not a file).")
    card = read_card(onnx_file, spec.encryption_key)
    if card.quantization and section.tensorrt.data_type != "INT8":
        logger.warning("%s is QDQ-quantized: TensorRT builds it as INT8 whatever data_type says.", onnx_file)
    # empty or TAO's ???: named after the ONNX file, in the results folder (the cache only when ???)
    engine = section.trt_engine if is_set(section.trt_engine) else ""
    engine_file = Path(engine) if engine else action_dir(spec, "gen_trt_engine") / f"{onnx_file.stem}.engine"
    cal = section.tensorrt.calibration
    if cal.cal_cache_file.strip() == MISSING:
        cache = str(action_dir(spec, "gen_trt_engine") / f"{onnx_file.stem}.cal")
        tensorrt = section.tensorrt.model_copy(
            update={"calibration": cal.model_copy(update={"cal_cache_file": cache})}
        )
        section = section.model_copy(update={"tensorrt": tensorrt})
    settings = build_settings(section, str(onnx_file), str(engine_file), card)
    if settings.calibration is not None and settings.calibration.image_dirs:
        cache = settings.calibration.cache_file
        if not (cache and Path(cache).is_file()):
            calibration_stream(settings, card)  # counts the images now: too few is an error before the build
    return settings, card


@recorded("gen_trt_engine")
def run(spec: Spec) -> GenTrtEngineResult:
    """Build the engine; writes it, its ``.json`` sidecar and status.json under ``<results_dir>/gen_trt_engine``.

    The engine is built on ``gen_trt_engine.gpu_id`` (:func:`ddetr.runtime.devices.trt_build_gpu`).

    Raises:
        SpecError / CheckpointError / DataError: one line, before any work (``gpu_id`` not a GPU of this
            machine is a SpecError before the build).
        UnavailableError: TensorRT or a GPU is missing.
    """
    from ddetr.deploy.tensorrt import build_engine
    from ddetr.runtime.devices import trt_build_gpu
    from ddetr.runtime.trt import require_tensorrt
    from ddetr.status import StatusLogger
    from ddetr.tasks.common import prepare_results_dir

    settings, card = plan(spec)
    out_dir = prepare_results_dir(spec, "gen_trt_engine")
    status = StatusLogger(out_dir / "status.json")
    with status.action(f"Building a {settings.data_type} engine from {settings.onnx_file}."):
        require_tensorrt()
        gpu = trt_build_gpu(spec.gen_trt_engine.gpu_id)
        engine = build_engine(settings, card, encryption_key=spec.encryption_key, gpu=gpu)
        status.write(status="SUCCESS", message=f"Engine written: {engine}.")
        return GenTrtEngineResult(trt_engine=Path(engine), data_type=settings.data_type)
