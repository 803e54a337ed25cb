"""NVIDIA ModelOpt back ends of ``quantize``: ``modelopt.pytorch`` and ``modelopt.onnx``, calibrated on
``quantize.device`` (the CPU without a GPU).

``modelopt.pytorch`` (``static_ptq`` or ``weight_only_ptq``): ModelOpt's fake quantization of the PyTorch model
(``modelopt.torch.quantization``): int8 per-output-channel symmetric weights and, in ``static_ptq``, int8
per-tensor inputs calibrated on real images, on every ``nn.Conv2d`` and ``nn.Linear`` that the rules select.
The backbone's frozen batch norms are first baked into their convolutions (:func:`bake_batch_norms`) so that
the quantized weight is the one a deployment runs. The artefact is a ddetr checkpoint with three additions:
the ``quantization`` note, ``modelopt_state`` (ModelOpt's record of the inserted quantizers, restored by
:func:`ddetr.model.quantized.restore_quantized_model` when the checkpoint is loaded) and the quantized weights stored as int8
(``<layer>.weight`` int8 + ``<layer>.weight_quantizer._amax``; int8 * amax / 127 is exactly the fake-quantized
weight), so the file is about 4x smaller where layers are quantized. ``export`` turns it into an ONNX file with
QuantizeLinear/DequantizeLinear nodes (TensorRT explicit quantization; ONNX Runtime runs it too). In
``static_ptq`` the weights of layers with quantized inputs use 7 of their 8 bits (codes in [-64, 64], as
``reduce_range`` in :mod:`ddetr.deploy.quantize_onnx`, which says why): ONNX Runtime turns the int8 inputs into
uint8 on x86, and on a CPU without VNNI its kernels then overflow int16 with full-range weights (the exported
boxes moved by 0.054 from the PyTorch model's on such a CPU in the tests; 0.0000 unfused).

``modelopt.onnx`` (``static_ptq``): ModelOpt's ONNX INT8 quantization, which places Q/DQ nodes following
TensorRT's rules (also on residual additions and pooling), with ONNX Runtime's CPU execution provider for
calibration (CUDA's on a GPU, TensorRT's too with ``quantize.device=trt``, when the installed ONNX Runtime has them),
int8 weights stored with a DequantizeLinear only and float32 for everything kept float. It runs in a child
process: ModelOpt patches ONNX Runtime's calibration classes for good when it quantizes, which would break the
``onnxruntime`` back end in the same process afterwards.

Which layers: ``quantize.layers`` (TAO's layout, :func:`ddetr.deploy.quantize_layers.parse_layers`), then ``quantize.skip_names`` and
``backend_kwargs.keep_float`` (default :data:`ddetr.deploy.quantize_onnx.DEFAULT_KEEP_FLOAT`) keep layers float.

Only ``nvidia-modelopt`` and the ONNX tools its ONNX path imports are needed (:data:`ddetr.model.quantized.REQUIRED`); its
``[onnx]`` extra is not: on Linux it pins ``onnxruntime-gpu`` (which overwrites the ``onnxruntime`` package's
files), ``onnx~=1.21`` and ``cupy-cuda12x``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddetr.artefacts.card import ModelCard
from ddetr.deploy.quantize_layers import LayerRule, onnx_nodes_to_exclude, select_layers
from ddetr.errors import CheckpointError, SpecError
from ddetr.model.quantized import (
    INT8_MAX,
    bake_batch_norms,
    modelopt_torch,
    quiet,
    require_modelopt,
)

logger = logging.getLogger(__name__)

# quantize.algorithm -> ModelOpt's name, per back end
TORCH_ALGORITHMS = {"minmax": "max", "max": "max", "mse": "mse"}
ONNX_ALGORITHMS = {"minmax": "max", "max": "max", "entropy": "entropy"}
# largest weight code of a layer with int8 inputs (reduced range: no int16 overflow in ONNX Runtime's x86 kernels)
REDUCED_WEIGHT_MAX = 64.0


# ---------------------------------------------------------------------------------------- modelopt.pytorch


def quant_config(chosen: Mapping[str, tuple[bool, bool]], algorithm: str) -> dict[str, Any]:
    """ModelOpt's quantize config for exactly the ``chosen`` layers (every other quantizer disabled)."""
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for name, (weights, activations) in chosen.items():
        if weights:
            entries.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}})
        if activations:
            entries.append(
                {"quantizer_name": f"{name}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}}
            )
    return {"quant_cfg": entries, "algorithm": algorithm}


def reduce_weight_range(model: nn.Module) -> int:
    """Widen the calibrated weight ``amax`` of every layer whose inputs are quantized too, in place.

    ``amax * 127 / 64``: the weight codes (``round(w * 127 / amax)``) then lie in [-64, 64], so that ONNX
    Runtime's u8 x s8 kernels on x86 CPUs without VNNI add pairs of products without int16 overflow
    (255 * 64 * 2 < 32767). Weight-only layers keep the full range: they run as float products.

    Returns:
        The number of weight quantizers changed.
    """
    count = 0
    for module in model.modules():
        weights, inputs = getattr(module, "weight_quantizer", None), getattr(module, "input_quantizer", None)
        if weights is None or inputs is None or not (weights.is_enabled and inputs.is_enabled):
            continue
        if weights.amax is None:
            continue
        with torch.no_grad():
            weights.amax = weights.amax * (INT8_MAX / REDUCED_WEIGHT_MAX)
        count += 1
    return count


def _int8_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> int:
    """Replace each fake-quantized weight in ``state_dict`` by its int8 codes (in place); returns how many layers.

    ``code = round(fq(w) * 127 / amax)``: ``code * amax / 127`` gives back the fake-quantized weight, which the
    restored model's quantizer maps onto itself, so outputs do not change.
    """
    done: dict[int, torch.Tensor] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        quantizer = getattr(module, "weight_quantizer", None)
        key = f"{name}.weight" if name else "weight"
        if quantizer is None or not quantizer.is_enabled or key not in state_dict:
            continue
        amax = state_dict.get(f"{key}_quantizer._amax")
        if amax is None or getattr(quantizer, "num_bits", None) != 8:
            continue
        if id(module) not in done:  # a shared head is one module under several names: one int8 copy
            with torch.no_grad():
                fake = quantizer(module.weight.detach())
                step = amax.float() / INT8_MAX
                codes = torch.where(step > 0, fake / step.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
                done[id(module)] = codes.round().clamp(-128, 127).to(torch.int8)
        state_dict[key] = done[id(module)]
    return len(done)


def quantize_checkpoint_modelopt(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str,
    rules: Sequence[LayerRule],
    keep_float: Sequence[str],
    algorithm: str = "minmax",
    calibration: Callable[[Sequence[float], Sequence[float]], Iterable[np.ndarray]] | None = None,
    encryption_key: str | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantize a ddetr checkpoint with ModelOpt (fake quantization) and write the quantized checkpoint.

    Args:
        checkpoint: the float ``.pth``.
        out: the quantized checkpoint, written atomically.
        mode: ``static_ptq`` (int8 weights and inputs; ``calibration`` required) or ``weight_only_ptq``.
        rules: from :func:`ddetr.deploy.quantize_layers.parse_layers`.
        keep_float: name patterns left float (``keep_float`` + ``skip_names``).
        algorithm: ``quantize.algorithm``: ``minmax``/``max`` (ModelOpt ``max``) or ``mse``.
        calibration: ``calibration(mean, std)`` -> float32 batches (B, 3, H, W) normalised with the checkpoint's
            mean and std, resized as evaluation resizes (static_ptq; unused in weight_only_ptq).
        encryption_key: reads an encrypted checkpoint; when non-empty ``out`` is written encrypted.
        device: where the calibration batches run (``"cpu"`` or ``"cuda:<N>"``); the checkpoint is written
            from the CPU.

    Returns:
        The quantized model (eval mode, fake-quant, on the CPU) and the ``quantization`` note written into the checkpoint.

    Raises:
        UnavailableError: ModelOpt missing. CheckpointError: already quantized. SpecError: unknown algorithm, or
            the rules leave no layer to quantize.
    """
    from ddetr.artefacts.checkpoint import save_checkpoint
    from ddetr.model.detector import build_model_from_checkpoint

    if algorithm not in TORCH_ALGORITHMS:
        raise SpecError(
            f"quantize.algorithm: {algorithm!r} is not available with modelopt.pytorch; use one of "
            f"{', '.join(TORCH_ALGORITHMS)} (entropy: quantize.backend=modelopt.onnx)."
        )
    mtq, mto = modelopt_torch("quantize.backend=modelopt.pytorch")
    model, loaded = build_model_from_checkpoint(checkpoint, encryption_key=encryption_key)
    if loaded.card.quantization:
        raise CheckpointError(f"quantize.model_path: {checkpoint} is already quantized.")
    baked = bake_batch_norms(model)
    chosen = select_layers(model, rules, keep_float)
    if not chosen:
        raise SpecError(
            "quantize.layers / skip_names: no Conv2d or Linear layer is left to quantize; check the patterns."
        )
    static = mode == "static_ptq"
    if static and calibration is None:
        raise SpecError(
            "quantize.mode=static_ptq: calibration images are needed (quant_calibration_data_sources)."
        )
    images = 0

    def forward_loop(module: nn.Module) -> None:
        nonlocal images
        for batch in calibration(loaded.card.mean, loaded.card.std) if calibration else ():
            module(torch.from_numpy(batch).to(device))
            images += batch.shape[0]

    with torch.no_grad(), quiet():
        config = quant_config(chosen, TORCH_ALGORITHMS[algorithm])
        model = mtq.quantize(model.to(device), config, forward_loop=forward_loop if static else None)
        model = model.to("cpu")  # the file holds CPU tensors, whatever device calibrated
        reduced = reduce_weight_range(model) if static else 0
    model.eval()
    state_dict = dict(model.state_dict())
    stored = _int8_weights(model, state_dict)
    note = {
        "backend": "modelopt.pytorch",
        "mode": mode,
        "format": "fake-quant",
        "algorithm": TORCH_ALGORITHMS[algorithm],
        "weights": "int8 per-channel symmetric" + (" (7-bit range with int8 inputs)" if reduced else ""),
        "activations": "int8 per-tensor" if static else "float",
        "layers": len(chosen),
        "weight_only_layers": sum(1 for w, a in chosen.values() if w and not a),
        "int8_weights_stored": stored,
        "baked_batch_norms": baked,
        "keep_float": list(keep_float),
        "calibration_images": images,
        "modelopt_version": _modelopt_version(),
    }
    save_checkpoint(
        out,
        card=loaded.card.evolve(quantization=note),
        state_dict=state_dict,
        spec=loaded.spec,
        extra={"modelopt_state": mto.modelopt_state(model)},
        encryption_key=encryption_key,
    )
    logger.info(
        "ModelOpt %s: %d layers quantized (%d int8 weights stored), %d calibration images -> %s",
        mode,
        len(chosen),
        stored,
        images,
        out,
    )
    return model, note


def _modelopt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------ modelopt.onnx


def quantize_onnx_modelopt(
    float_onnx: str | os.PathLike[str],
    output: str | os.PathLike[str],
    calibration: Iterable[np.ndarray],
    card: ModelCard,
    *,
    rules: Sequence[LayerRule],
    keep_float: Sequence[str],
    algorithm: str = "minmax",
    encryption_key: str | None = None,
    providers: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """ModelOpt INT8 PTQ of a ddetr ONNX export (QDQ following TensorRT's rules).

    Args:
        float_onnx: a plain (not encrypted) standard-op ddetr export.
        output: the quantized file, written atomically with ``card`` plus the ``quantization`` note.
        calibration: float32 batches (B, 3, H, W) at the file's input size, preprocessed as inference does.
        card: the float file's model card.
        rules, keep_float: which Conv/MatMul/Gemm nodes are quantized (:func:`onnx_nodes_to_exclude`).
        algorithm: ``minmax``/``max`` (ModelOpt ``max``) or ``entropy``.
        encryption_key: when non-empty, ``output`` is written encrypted (never plain under its final name).
        providers: ONNX Runtime providers to calibrate with (:func:`ddetr.runtime.devices.calibration_providers`);
            None: the CPU.

    Returns:
        The ``quantization`` note.

    Raises:
        UnavailableError: ModelOpt (or an ONNX tool it imports) missing. SpecError: unknown algorithm.
        RuntimeError: ModelOpt failed (its last error line is in the message, the rest in the log).
    """
    import onnx

    from ddetr.artefacts.onnx_file import INPUT_NAME, set_card
    from ddetr.crypto import write_bytes_atomic

    if algorithm not in ONNX_ALGORITHMS:
        raise SpecError(
            f"quantize.algorithm: {algorithm!r} is not available with modelopt.onnx; use one of "
            f"{', '.join(ONNX_ALGORITHMS)}."
        )
    require_modelopt("modelopt.onnx")
    out = Path(output)
    proto = onnx.load(str(float_onnx), load_external_data=False)
    excluded = onnx_nodes_to_exclude(proto, rules, keep_float)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".modelopt.") as tmp:
        work = Path(tmp)
        data = np.ascontiguousarray(np.concatenate(list(calibration)), dtype=np.float32)
        np.save(work / "calibration.npy", data)
        args = {
            "onnx_path": str(float_onnx),
            "output_path": str(work / "quantized.onnx"),
            "calibration_data": str(work / "calibration.npy"),
            "input_name": INPUT_NAME,
            "calibration_method": ONNX_ALGORITHMS[algorithm],
            # ModelOpt reads these as regular expressions matched at the start of node names
            "nodes_to_exclude": [re.escape(name) + "$" for name in excluded],
            "calibration_eps": calibration_eps(providers),
        }
        (work / "args.json").write_text(json.dumps(args))
        _run_onnx_worker(work / "args.json")
        quantized = onnx.load(str(work / "quantized.onnx"))
        note = {
            "backend": "modelopt.onnx",
            "mode": "static_ptq",
            "format": "QDQ",
            "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor",
            "calibrate_method": ONNX_ALGORITHMS[algorithm],
            "calibration_images": int(data.shape[0]),
            "keep_float": list(keep_float),
            "excluded_nodes": len(excluded),
            "modelopt_version": _modelopt_version(),
        }
        set_card(quantized, card.evolve(quantization=note))
        write_bytes_atomic(out, quantized.SerializeToString(), encryption_key)
    logger.info("ModelOpt ONNX INT8: %s -> %s (%d nodes kept float).", float_onnx, out, len(excluded))
    return note


def calibration_eps(providers: Sequence[Any] | None) -> list[str]:
    """ModelOpt's names (``trt``, ``cuda:N``, ``cpu``) of ONNX Runtime execution providers, in order.

    Args:
        providers: names or ``(name, {"device_id": N})`` pairs (:func:`ddetr.runtime.devices.calibration_providers`).
    """
    names = {
        "TensorrtExecutionProvider": "trt",
        "CUDAExecutionProvider": "cuda",
        "CPUExecutionProvider": "cpu",
    }
    eps: list[str] = []
    for provider in providers or ():
        name, options = provider if isinstance(provider, tuple) else (provider, {})
        short = names.get(name)
        if short == "cuda":
            short = f"cuda:{int(options.get('device_id', 0))}"
        if short and short not in eps:
            eps.append(short)
    if "cpu" not in eps:
        eps.append("cpu")
    return eps


def _run_onnx_worker(args_file: Path) -> None:
    """Run :func:`_onnx_worker` in a child Python (ModelOpt's ONNX Runtime patches stay there)."""
    env = dict(os.environ)
    source = str(Path(__file__).resolve().parents[2])  # the folder that holds the ddetr package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "ddetr.deploy.quantize_modelopt", str(args_file)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    log = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        logger.error("ModelOpt ONNX quantization output:\n%s", log)
        last = next((line for line in reversed(log.splitlines()) if line.strip()), "no output")
        raise RuntimeError(f"ModelOpt ONNX quantization failed (exit {result.returncode}): {last.strip()}")
    logger.debug("ModelOpt ONNX quantization output:\n%s", log)


def _onnx_worker(args_file: str) -> None:
    """Child process: ``modelopt.onnx.quantization.quantize`` with the arguments in ``args_file`` (JSON)."""
    args = json.loads(Path(args_file).read_text())
    data = np.load(args.pop("calibration_data"))
    input_name = args.pop("input_name")
    with quiet():
        from modelopt.onnx.quantization import quantize

    quantize(
        quantize_mode="int8",
        calibration_data={input_name: data},
        # keep what is not quantized in float32 (the default fp16 is slower and less exact on the CPU), and
        # store the int8 weights with a DequantizeLinear only (4x smaller than float weights + Q/DQ)
        high_precision_dtype="fp32",
        dq_only=True,
        log_level="WARNING",
        **args,
    )


if __name__ == "__main__":
    _onnx_worker(sys.argv[1])
