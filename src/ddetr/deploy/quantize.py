"""``quantize`` back ends behind one function: checks, the quantized artefact, and its before/after report.

Back ends (``quantize.backend``); ``quantize.device`` decides where calibration runs (the task's device plan,
:func:`ddetr.runtime.devices.quantize_device`):

- ``onnxruntime`` (+), ``static_ptq``: QDQ INT8 of the ONNX export (:mod:`ddetr.deploy.quantize_onnx`);
  a ``.pth`` model_path is exported first (standard ops, fixed ``export.input_width/height``).
- ``torchao``, ``weight_only_ptq``: int8 weights of every linear (:mod:`ddetr.deploy.quantize_torchao`),
  rounded on the CPU on any device (no forward pass: a GPU would not change the weights).
- ``modelopt.pytorch``, ``static_ptq`` or ``weight_only_ptq``: NVIDIA ModelOpt's fake quantization of the
  checkpoint; the artefact is a ddetr checkpoint that records ModelOpt's state, so ``evaluate``,
  ``inference`` and ``export`` (ONNX with Q/DQ nodes) load it (ModelOpt needed there too).
- ``modelopt.onnx``, ``static_ptq``: NVIDIA ModelOpt's ONNX INT8 (Q/DQ placed for TensorRT) of the ONNX
  export, calibrated with ONNX Runtime's CPU provider; the artefact is an ONNX file with ddetr's metadata.

Both ModelOpt back ends live in :mod:`ddetr.deploy.quantize_modelopt` and need ``nvidia-modelopt`` (plus, for
``modelopt.onnx``, the ONNX tools it imports); without them the plan fails before any work with a one-line
UnavailableError naming the missing packages. ``quantize.layers`` (TAO's per-layer dtypes) applies to both.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddetr.errors import CheckpointError, SpecError

logger = logging.getLogger(__name__)

KNOWN_BACKEND_KWARGS = {"num_calibration_images", "calibration_batch_size", "activation_type", "keep_float"}


@dataclass
class QuantizePlan:
    """What a quantize run will do, decided (and checked) before any work.

    Attributes:
        backend, mode: from the spec.
        model_path: the input checkpoint or ONNX file.
        output: the quantized artefact's path.
        needs_calibration: static quantization (calibration images required).
        options: backend options (``quantize.backend_kwargs`` with defaults filled in).
        rules: the ModelOpt back ends' per-layer rules (``quantize.layers``, checked).
    """

    backend: str
    mode: str
    model_path: Path
    output: Path
    needs_calibration: bool
    options: dict[str, Any] = field(default_factory=dict)
    rules: list[Any] = field(default_factory=list)


def plan_quantization(section: Any, calibration_source: Any, out_dir: Path) -> QuantizePlan:
    """Check the quantize section and decide the output; every problem is a one-line error.

    Args:
        section: the spec's ``quantize`` section.
        calibration_source: ``dataset.quant_calibration_data_sources``.
        out_dir: the action's results folder.

    Raises:
        SpecError: missing model_path, backend/mode mismatch, no calibration data for static mode,
            unknown backend_kwargs. CheckpointError: model_path missing or of the wrong kind.
        UnavailableError: the backend's package is not installed.
    """
    from ddetr.spec.sections import is_set

    if not is_set(section.model_path):
        raise SpecError(
            "quantize.model_path: required, not given; set it to a .pth checkpoint or an .onnx export."
        )
    model_path = Path(section.model_path)
    if not model_path.is_file():
        raise CheckpointError(f"quantize.model_path: {model_path} does not exist (or is not a file).")
    if model_path.is_symlink():  # the latest link: outputs are named after the file it points at
        model_path = model_path.resolve()
    unknown = sorted(set(section.backend_kwargs) - KNOWN_BACKEND_KWARGS)
    if unknown:
        raise SpecError(
            f"quantize.backend_kwargs: unknown keys {unknown}; known: {sorted(KNOWN_BACKEND_KWARGS)}."
        )
    backend, mode = section.backend, section.mode
    is_onnx = model_path.suffix.lower() == ".onnx"
    options = dict(section.backend_kwargs)
    if backend == "torchao":
        if mode != "weight_only_ptq":
            raise SpecError(
                "quantize.mode: torchao does weight_only_ptq here; for static INT8 set quantize.backend=onnxruntime."
            )
        if is_onnx:
            raise CheckpointError(
                f"quantize.model_path: torchao quantizes a .pth checkpoint, got {model_path}."
            )
        from ddetr.model.quantized import require_torchao

        require_torchao()
        return QuantizePlan(
            backend, mode, model_path, out_dir / f"{model_path.stem}_int8_wo.pth", False, options
        )
    if backend == "onnxruntime":
        if mode != "static_ptq":
            raise SpecError(
                "quantize.mode: the onnxruntime backend does static INT8 (static_ptq); set quantize.mode=static_ptq "
                "(or quantize.backend=torchao for weight_only_ptq)."
            )
        _require_calibration(calibration_source)
        options.setdefault("num_calibration_images", 32)
        options.setdefault("calibration_batch_size", 1)
        options.setdefault("activation_type", "uint8")
        return QuantizePlan(
            backend, mode, model_path, out_dir / f"{model_path.stem}_int8.onnx", True, options
        )
    return _plan_modelopt(section, calibration_source, out_dir, model_path, options)


def _plan_modelopt(
    section: Any, calibration_source: Any, out_dir: Path, model_path: Path, options: dict[str, Any]
) -> QuantizePlan:
    """The ModelOpt back ends' checks: installed packages, mode, algorithm, layers, calibration data."""
    from ddetr.deploy import quantize_modelopt as mo
    from ddetr.deploy.quantize_layers import onnx_rules_check, parse_layers

    backend, mode = section.backend, section.mode
    mo.require_modelopt(backend)
    if "activation_type" in options:
        raise SpecError(
            f"quantize.backend_kwargs.activation_type: applies to quantize.backend=onnxruntime, not {backend}."
        )
    options.setdefault("num_calibration_images", 32)
    options.setdefault("calibration_batch_size", 1)
    is_onnx = model_path.suffix.lower() == ".onnx"
    if backend == "modelopt.pytorch":
        if is_onnx:
            raise CheckpointError(
                f"quantize.model_path: modelopt.pytorch quantizes a .pth checkpoint, got {model_path}; use "
                "quantize.backend=modelopt.onnx for an ONNX file."
            )
        if section.algorithm not in mo.TORCH_ALGORITHMS:
            raise SpecError(
                f"quantize.algorithm: {section.algorithm!r} is not available with modelopt.pytorch; use one of "
                f"{', '.join(mo.TORCH_ALGORITHMS)} (entropy: quantize.backend=modelopt.onnx)."
            )
        rules = parse_layers(section.layers, mode)
        static = mode == "static_ptq"
        if static:
            _require_calibration(calibration_source)
        suffix = "_modelopt_int8.pth" if static else "_modelopt_int8_wo.pth"
        return QuantizePlan(
            backend, mode, model_path, out_dir / f"{model_path.stem}{suffix}", static, options, rules
        )
    if mode != "static_ptq":
        raise SpecError(
            "quantize.mode: modelopt.onnx does static INT8 (static_ptq); set quantize.mode=static_ptq (or "
            "quantize.backend=modelopt.pytorch for weight_only_ptq)."
        )
    if section.algorithm not in mo.ONNX_ALGORITHMS:
        raise SpecError(
            f"quantize.algorithm: {section.algorithm!r} is not available with modelopt.onnx; use one of "
            f"{', '.join(mo.ONNX_ALGORITHMS)}."
        )
    rules = parse_layers(section.layers, mode)
    onnx_rules_check(rules)
    _require_calibration(calibration_source)
    return QuantizePlan(
        backend, mode, model_path, out_dir / f"{model_path.stem}_modelopt_int8.onnx", True, options, rules
    )


def _require_calibration(source: Any) -> None:
    if not source.image_dir:
        raise SpecError(
            "dataset.quant_calibration_data_sources.image_dir: static quantization needs calibration images; "
            "set it (and optionally json_file) to a folder of representative images."
        )


def onnx_input(
    plan: QuantizePlan, export_section: Any, work: Path, encryption_key: str | None = None
) -> Path:
    """The float ONNX file to quantize: model_path itself, or a standard-op export of the checkpoint.

    With ``encryption_key`` the export is written encrypted (it is kept beside the quantized file).
    """
    from ddetr.artefacts.onnx_file import read_card
    from ddetr.deploy.onnx_export import export_onnx

    if plan.model_path.suffix.lower() == ".onnx":
        card = read_card(plan.model_path, encryption_key)
        if card.trt_plugin:
            raise CheckpointError(
                f"quantize.model_path: {plan.model_path} holds the TensorRT attention plugin; re-export with "
                "export.on_cpu=true to quantize it."
            )
        if card.quantization:
            raise CheckpointError(f"quantize.model_path: {plan.model_path} is already quantized.")
        return plan.model_path
    size = (export_section.input_width, export_section.input_height)
    result = export_onnx(
        plan.model_path, work / "float.onnx", input_size=size, batch_size=-1, encryption_key=encryption_key
    )
    if result.card.quantization:  # a modelopt.pytorch checkpoint exports with its Q/DQ nodes
        raise CheckpointError(f"quantize.model_path: {plan.model_path} is already quantized.")
    return result.onnx_file


def quantize(plan: QuantizePlan, spec: Any, device: str = "cpu") -> dict[str, Any]:
    """Run the plan; returns ``{"output", "float_model", "quantization"}`` (paths as str).

    Args:
        plan: from :func:`plan_quantization`.
        spec: the experiment spec.
        device: ``"cpu"`` or ``"cuda:<N>"`` (:func:`ddetr.runtime.devices.quantize_device`): where the
            calibration images run (``modelopt.pytorch``'s forward passes, ONNX Runtime's or ModelOpt's
            calibration sessions); the artefact is written with CPU tensors either way.
    """
    from ddetr.crypto import plain_copy
    from ddetr.data.calibration import calibration_batches, list_calibration_images

    key = spec.encryption_key or None
    if plan.backend == "torchao":
        from ddetr.deploy.quantize_torchao import quantize_checkpoint_torchao

        _, note = quantize_checkpoint_torchao(plan.model_path, plan.output, spec.quantize.skip_names, key)
        return {"output": str(plan.output), "float_model": str(plan.model_path), "quantization": note}
    keep_float = list(plan.options.get("keep_float", _default_keep_float())) + list(spec.quantize.skip_names)
    if plan.backend == "modelopt.pytorch":
        from ddetr.deploy.quantize_modelopt import quantize_checkpoint_modelopt

        _, note = quantize_checkpoint_modelopt(
            plan.model_path,
            plan.output,
            mode=plan.mode,
            rules=plan.rules,
            keep_float=keep_float,
            algorithm=spec.quantize.algorithm,
            calibration=_torch_calibration(plan, spec) if plan.needs_calibration else None,
            encryption_key=key,
            device=device,
        )
        return {"output": str(plan.output), "float_model": str(plan.model_path), "quantization": note}

    from ddetr.artefacts.onnx_file import read_card
    from ddetr.runtime.devices import calibration_providers

    providers = calibration_providers(device, tensorrt=spec.quantize.device == "trt")
    with tempfile.TemporaryDirectory(dir=plan.output.parent, prefix=".quantize.") as tmp:
        float_onnx = onnx_input(plan, spec.export, Path(tmp), key)
        # the quantizers read paths: an encrypted input is decrypted into this temporary folder
        plain_onnx = plain_copy(float_onnx, key, Path(tmp) / "plain")
        card = read_card(plain_onnx)
        source = spec.dataset.quant_calibration_data_sources
        paths = list_calibration_images(source.image_dir, source.json_file, spec.dataset.archive_limits)
        batch = int(plan.options["calibration_batch_size"])
        if card.batch_size:
            batch = card.batch_size
        count = min(int(plan.options["num_calibration_images"]), len(paths))
        batches = calibration_batches(
            paths,
            batch_size=batch,
            num_batches=max(count // batch, 1),
            mean=card.mean,
            std=card.std,
            input_size=card.input_size,
        )
        if plan.backend == "onnxruntime":
            from ddetr.deploy.quantize_onnx import quantize_onnx_static

            note = quantize_onnx_static(
                plain_onnx,
                plan.output,
                batches,
                keep_float=keep_float,
                calibrate_method=spec.quantize.algorithm,
                activation_type=plan.options["activation_type"],
                encryption_key=key,
                providers=providers,
            )
        else:
            from ddetr.deploy.quantize_modelopt import quantize_onnx_modelopt

            note = quantize_onnx_modelopt(
                plain_onnx,
                plan.output,
                batches,
                card,
                rules=plan.rules,
                keep_float=keep_float,
                algorithm=spec.quantize.algorithm,
                encryption_key=key,
                providers=providers,
            )
        float_model = plan.model_path
        if float_onnx != plan.model_path:  # keep the float export beside the quantized file, for the report
            float_model = plan.output.with_name(f"{plan.model_path.stem}_fp32.onnx")
            float_onnx.replace(float_model)
    return {"output": str(plan.output), "float_model": str(float_model), "quantization": note}


def _default_keep_float() -> tuple[str, ...]:
    from ddetr.deploy.quantize_onnx import DEFAULT_KEEP_FLOAT

    return DEFAULT_KEEP_FLOAT


def _torch_calibration(plan: QuantizePlan, spec: Any) -> Any:
    """``make(mean, std)`` -> calibration batches resized as ``evaluate`` resizes (shortest side, max size)."""
    from ddetr.data.calibration import calibration_batches, list_calibration_images

    source = spec.dataset.quant_calibration_data_sources
    paths = list_calibration_images(source.image_dir, source.json_file)
    batch = int(plan.options["calibration_batch_size"])
    count = min(int(plan.options["num_calibration_images"]), len(paths))
    aug = spec.dataset.augmentation

    def make(mean: Any, std: Any) -> Any:
        return calibration_batches(
            paths,
            batch_size=batch,
            num_batches=max(count // batch, 1),
            mean=mean,
            std=std,
            input_size=None,
            shortest_side=aug.test_random_resize,
            max_size=aug.random_resize_max_size,
        )

    return make
