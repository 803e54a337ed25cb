"""TensorRT engines: spec -> builder settings (pure Python, checked up front), INT8 calibration, the build.

Everything that needs TensorRT or a GPU imports it inside the function that needs it, through
:func:`require_tensorrt`, which raises a one-line :class:`UnavailableError` when either is missing. The engine
is written with a JSON sidecar (``<engine>.json``: the ONNX file's model card plus the build settings,
:mod:`ddetr.artefacts.engine_file`) so that :class:`ddetr.runtime.tensorrt_backend.TensorRTPredictor` needs no
spec. Importing TensorRT and its plugins: :mod:`ddetr.runtime.trt`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.engine_file import write_sidecar
from ddetr.crypto import read_bytes, write_bytes_atomic
from ddetr.errors import CheckpointError, DataError, SpecError, UnavailableError
from ddetr.fileio import atomic_write_bytes
from ddetr.runtime.trt import load_plugin_libraries, require_tensorrt
from ddetr.spec.sections import is_set

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class CalibrationSettings:
    """INT8 calibration: ``batch_size`` x ``batches`` images from ``image_dirs``; cache at ``cache_file``."""

    image_dirs: list[str]
    cache_file: str
    batch_size: int
    batches: int


@dataclass
class TrtBuildSettings:
    """Everything the TensorRT builder is told, derived from the spec and the ONNX file.

    Attributes:
        onnx_file, engine_file: input and output paths.
        data_type: ``FP32`` | ``FP16`` | ``INT8``.
        workspace_bytes: builder workspace memory pool limit.
        input_shape: (C, H, W) of ``inputs``.
        min_batch, opt_batch, max_batch: the optimisation profile's batch sizes.
        layers_precision: (layer name, precision) pairs pinned by the user.
        timing_cache: path of the timing cache (read when present, written after the build), or "".
        calibration: INT8 calibration settings (None unless INT8).
        verbose: TensorRT's verbose log.
    """

    onnx_file: str
    engine_file: str
    data_type: str
    workspace_bytes: int
    input_shape: tuple[int, int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    layers_precision: list[tuple[str, str]] = field(default_factory=list)
    timing_cache: str = ""
    calibration: CalibrationSettings | None = None
    verbose: bool = False

    def profile(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of ``inputs`` for the optimisation profile."""
        return tuple((b, *self.input_shape) for b in (self.min_batch, self.opt_batch, self.max_batch))  # type: ignore[return-value]


def parse_layers_precision(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``["layer_name:fp32", ...]`` -> ``[("layer_name", "fp32"), ...]``.

    Raises:
        SpecError: an entry without ``:`` or with a precision outside fp32/fp16/int8.
    """
    pairs = []
    for entry in entries:
        name, sep, precision = str(entry).rpartition(":")
        precision = precision.strip().lower()
        if not sep or not name.strip() or precision not in PRECISIONS:
            raise SpecError(
                f"gen_trt_engine.tensorrt.layers_precision: {entry!r} must be 'layer_name:precision' with precision "
                f"one of {', '.join(PRECISIONS)}."
            )
        pairs.append((name.strip(), precision))
    return pairs


def build_settings(section: Any, onnx_file: str, engine_file: str, card: ModelCard) -> TrtBuildSettings:
    """Check the ``gen_trt_engine`` section against the ONNX file's metadata and derive the builder settings.

    Args:
        section: the spec's ``gen_trt_engine`` section.
        onnx_file, engine_file: paths.
        card: the ONNX file's model card (:func:`ddetr.artefacts.onnx_file.read_card`).

    Raises:
        SpecError: inconsistent batch sizes, bad layers_precision, INT8 without calibration images or cache.
    """
    trt_section = section.tensorrt
    file_batch = card.batch_size or -1
    if section.batch_size > 0:
        sizes = (section.batch_size,) * 3
    else:
        sizes = (trt_section.min_batch_size, trt_section.opt_batch_size, trt_section.max_batch_size)
    if not sizes[0] <= sizes[1] <= sizes[2]:
        raise SpecError(
            "gen_trt_engine.tensorrt: need min_batch_size <= opt_batch_size <= max_batch_size, got "
            f"{sizes[0]}, {sizes[1]}, {sizes[2]}."
        )
    if file_batch > 0 and set(sizes) != {file_batch}:
        raise SpecError(
            f"gen_trt_engine: {onnx_file} has a fixed batch size {file_batch}, but the profile asks for "
            f"{sizes[0]}/{sizes[1]}/{sizes[2]}; set gen_trt_engine.batch_size={file_batch} or export with "
            "export.batch_size=-1."
        )
    calibration = None
    if trt_section.data_type == "INT8":
        cal = trt_section.calibration
        cache_ready = bool(cal.cal_cache_file) and Path(cal.cal_cache_file).is_file()
        dirs = [d for d in cal.cal_image_dir if is_set(d)]  # TAO's ??? is not a folder
        if not dirs and not cache_ready:
            raise SpecError(
                "gen_trt_engine.tensorrt.calibration.cal_image_dir: INT8 needs calibration images (or an existing "
                "cal_cache_file); set cal_image_dir to a folder of representative images."
            )
        calibration = CalibrationSettings(dirs, cal.cal_cache_file, cal.cal_batch_size, cal.cal_batches)
    if card.input_size is None:
        raise CheckpointError(f"gen_trt_engine.onnx_file: {onnx_file} has no fixed input size; re-export it.")
    width, height = card.input_size
    return TrtBuildSettings(
        onnx_file=str(onnx_file),
        engine_file=str(engine_file),
        data_type=trt_section.data_type,
        workspace_bytes=int(trt_section.workspace_size) << 20,
        input_shape=(3, int(height), int(width)),
        min_batch=sizes[0],
        opt_batch=sizes[1],
        max_batch=sizes[2],
        layers_precision=parse_layers_precision(trt_section.layers_precision),
        timing_cache=section.timing_cache,
        calibration=calibration,
        verbose=section.verbose,
    )


def calibration_stream(settings: TrtBuildSettings, card: ModelCard) -> Iterator[np.ndarray]:
    """The INT8 calibration batches: (cal_batch_size, 3, H, W) float32, preprocessed as inference does.

    Raises:
        DataError: fewer than cal_batch_size x cal_batches images in cal_image_dir.
    """
    from ddetr.data.calibration import calibration_batches, list_calibration_images

    cal = settings.calibration
    if cal is None:
        raise SpecError("calibration_stream: only INT8 builds calibrate.")
    paths = [p for d in cal.image_dirs for p in list_calibration_images(d)]
    if len(paths) < cal.batch_size * cal.batches:
        raise DataError(
            f"gen_trt_engine.tensorrt.calibration: cal_batch_size x cal_batches = {cal.batch_size} x {cal.batches} = "
            f"{cal.batch_size * cal.batches} images needed, {len(paths)} found in {cal.image_dirs}."
        )
    _, height, width = settings.input_shape
    return calibration_batches(
        paths,
        batch_size=cal.batch_size,
        num_batches=cal.batches,
        mean=card.mean,
        std=card.std,
        input_size=(width, height),
    )


def make_calibrator(
    trt: Any, batches: Iterator[np.ndarray], batch_size: int, cache_file: str, gpu: int = 0
) -> Any:
    """A TensorRT entropy calibrator (v2) feeding ``batches`` through a buffer on CUDA device ``gpu``; cache at
    ``cache_file``."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.batches = batches
            self.buffer: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.buffer = torch.from_numpy(batch).to(f"cuda:{gpu}").contiguous()
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache_file and Path(cache_file).is_file():
                logger.info("Using the INT8 calibration cache %s.", cache_file)
                return Path(cache_file).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_file:
                atomic_write_bytes(cache_file, bytes(cache))

    return _Calibrator()


def build_engine(
    settings: TrtBuildSettings, card: ModelCard, encryption_key: str | None = None, gpu: int = 0
) -> Path:
    """Parse the ONNX file and build a serialized engine (TensorRT 10 API), written atomically with its sidecar.

    With ``encryption_key`` an encrypted ONNX file is decrypted in memory and the engine is written encrypted
    (the sidecar stays plain JSON: class names, sizes, build settings). TensorRT builds (and calibrates) on
    the current CUDA device, which is ``gpu`` during the build (``gen_trt_engine.gpu_id``, checked by
    :func:`ddetr.runtime.devices.trt_build_gpu`).

    Raises:
        UnavailableError: no TensorRT or no GPU. DataError: too few calibration images.
        SpecError: a layers_precision name that is not in the network. RuntimeError-free: parser and build
        failures become a one-line UnavailableError/SpecError naming TensorRT's first error.
    """
    import torch

    trt = require_tensorrt()
    with torch.cuda.device(gpu):
        return _build(trt, settings, card, encryption_key, gpu)


def _build(
    trt: Any, settings: TrtBuildSettings, card: ModelCard, encryption_key: str | None, gpu: int
) -> Path:
    trt_logger = trt.Logger(trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING)
    load_plugin_libraries(trt, trt_logger)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(read_bytes(settings.onnx_file, encryption_key), settings.onnx_file):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SpecError(f"gen_trt_engine.onnx_file: TensorRT cannot parse {settings.onnx_file}: {errors[:1]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape("inputs", *settings.profile())
    config.add_optimization_profile(profile)
    if settings.data_type in ("FP16", "INT8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines keep the unquantizable layers in fp16
    if settings.data_type == "INT8":
        config.set_flag(trt.BuilderFlag.INT8)
        cal = settings.calibration
        have_cache = cal is not None and cal.cache_file and Path(cal.cache_file).is_file()
        batches = iter(()) if have_cache else calibration_stream(settings, card)
        config.int8_calibrator = make_calibrator(
            trt, batches, cal.batch_size if cal else 1, cal.cache_file if cal else "", gpu
        )
        config.set_calibration_profile(profile)
    _pin_layer_precisions(trt, network, config, settings.layers_precision)
    cache_bytes = b""
    if settings.timing_cache and Path(settings.timing_cache).is_file():
        cache_bytes = Path(settings.timing_cache).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnavailableError(
            f"TensorRT could not build an engine from {settings.onnx_file}; see the log above."
        )
    engine = Path(settings.engine_file)
    engine.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(engine, bytes(serialized), encryption_key)
    if settings.timing_cache:
        atomic_write_bytes(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    write_sidecar(engine, card, asdict(settings))
    return engine


def _pin_layer_precisions(trt: Any, network: Any, config: Any, pairs: list[tuple[str, str]]) -> None:
    if not pairs:
        return
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    for name, precision in pairs:
        matched = [layer for layer_name, layer in layers.items() if layer_name == name or name in layer_name]
        if not matched:
            raise SpecError(
                f"gen_trt_engine.tensorrt.layers_precision: no layer named {name!r} in the network."
            )
        for layer in matched:
            layer.precision = types[precision]
            for index in range(layer.num_outputs):
                layer.set_output_type(index, types[precision])
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
