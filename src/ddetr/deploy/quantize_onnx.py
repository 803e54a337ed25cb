"""Static INT8 post-training quantization of a ddetr ONNX file with ONNX Runtime (QDQ, per-channel weights).

Only the convolutions and the matrix products are quantized (``QUANTIZED_OP_TYPES``); everything else
stays float: GridSample (the deformable sampling), Softmax, LayerNormalization / GroupNorm, Sigmoid and the
element-wise arithmetic. Some products are kept float too (``DEFAULT_KEEP_FLOAT``): the linears that produce
the sampling offsets and attention weights (an int8 error there moves every sampling point) and the class
and box heads (their outputs are the model's outputs). These choices were measured: see docs/deploy.md.

Weights use 7 of their 8 bits (``reduce_range``, codes in [-64, 64]) so that the file computes the same on every
x86 CPU: without VNNI (AVX2 only, e.g. AMD Zen 3) ONNX Runtime's u8 x s8 kernels add adjacent products in
int16 with saturation (``vpmaddubsw``), and 255 * 127 * 2 overflows it; 255 * 64 * 2 does not. Measured on the
tests' model: full-range weights moved the boxes by 0.13 on such a CPU (0.005 with the same file unfused).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddetr.errors import SpecError
from ddetr.fileio import atomic_path

logger = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
DEFAULT_KEEP_FLOAT = ("sampling_offsets", "attention_weights", "class_embed", "bbox_embed")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")


class _Reader:
    """ONNX Runtime ``CalibrationDataReader``: ``{"inputs": batch}`` dicts from an iterator of arrays."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str) -> None:
        self._batches = batches
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch}


def nodes_to_exclude(model: Any, patterns: Sequence[str]) -> list[str]:
    """Quantizable nodes kept float: names containing any of ``patterns``, and activation x activation products.

    The products of two activations (attention scores ``Q K^T`` and ``softmax(.) V`` in the decoder's
    self-attention) have no weight to compress, and quantizing their output would feed int8 scores to the
    softmax.

    Args:
        model: an ``onnx.ModelProto``.
        patterns: module-name substrings (e.g. ``class_embed``); node names carry the PyTorch module path.
    """
    weights = {init.name for init in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    excluded = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        by_name = any(p and p in node.name for p in patterns)
        no_weight = not any(name in weights for name in node.input)
        if by_name or no_weight:
            excluded.append(node.name)
    return excluded


def quantize_onnx_static(
    onnx_in: str | os.PathLike[str],
    onnx_out: str | os.PathLike[str],
    calibration: Iterator[np.ndarray],
    *,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    calibrate_method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    reduce_range: bool = True,
    encryption_key: str | None = None,
    providers: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Quantize ``onnx_in`` to QDQ INT8 and write ``onnx_out`` atomically (metadata copied, quantization noted).

    Args:
        onnx_in: a ddetr ONNX export (standard ops, ``on_cpu: true``).
        onnx_out: the quantized file.
        calibration: float32 batches (B, 3, H, W) preprocessed as inference does.
        keep_float: node-name substrings left in float (module names of the PyTorch model).
        calibrate_method: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: per-output-channel weight scales.
        activation_type: ``uint8`` (U8S8, ONNX Runtime's fast path on x86: about 2x faster than ``int8`` S8S8 in bench/deploy_cpu.py
            here) or ``int8``.
        reduce_range: 7-bit weight codes (see the module docstring); ``False`` gives full 8-bit weights, computed as
            the file says only on x86 CPUs with VNNI (AVX512-VNNI or AVX-VNNI).
        encryption_key: when non-empty, ``onnx_out`` is written encrypted (``onnx_in`` must be a plain file:
            ONNX Runtime's quantizer reads paths).
        providers: ONNX Runtime execution providers of the calibration session
            (:func:`ddetr.runtime.devices.calibration_providers`); None: the CPU.

    Returns:
        The ``quantization`` entry written into the metadata.

    Raises:
        SpecError: unknown calibration method or activation type.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ddetr.artefacts.onnx_file import INPUT_NAME, card_from_proto, set_card

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    methods["percentile"] = CalibrationMethod.Percentile
    if calibrate_method not in methods:
        raise SpecError(
            f"quantize.algorithm: {calibrate_method!r} is not an ONNX Runtime calibration method; "
            f"use one of {', '.join(CALIBRATE_METHODS)}."
        )
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if activation_type not in types:
        raise SpecError(f"quantize.backend_kwargs.activation_type: {activation_type!r}; use int8 or uint8.")
    card = card_from_proto(onnx.load(str(onnx_in), load_external_data=False), str(onnx_in))
    out = Path(onnx_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize.") as work:
        raw, prepared = Path(work) / "model.onnx", Path(work) / "prepared.onnx"
        # ONNX Runtime's own graph optimisation first: folds the backbone's frozen batch norms (Mul, Add) into
        # the convolutions, so that they are quantized as one int8 conv instead of conv + float arithmetic
        quant_pre_process(str(onnx_in), str(prepared), skip_symbolic_shape=True)
        excluded = nodes_to_exclude(onnx.load(str(prepared)), keep_float)
        quantize_static(
            str(prepared),
            str(raw),
            _Reader(calibration, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            per_channel=per_channel,
            activation_type=types[activation_type],
            weight_type=QuantType.QInt8,
            # explicit, not ONNX Runtime's default (False): see the module docstring
            reduce_range=reduce_range,
            nodes_to_exclude=excluded,
            calibrate_method=methods[calibrate_method],
            calibration_providers=list(providers) if providers else ["CPUExecutionProvider"],
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                # float consumers of a quantized tensor keep reading the float tensor, not its int8 copy
                "DedicatedQDQPair": True,
            },
        )
        quantized = onnx.load(str(raw))
        note = {
            "backend": "onnxruntime",
            "mode": "static_ptq",
            "format": "QDQ",
            "weights": ("int8 per-channel" if per_channel else "int8 per-tensor")
            + (" (7-bit range)" if reduce_range else ""),
            "activations": activation_type,
            "calibrate_method": calibrate_method,
            "ops": list(QUANTIZED_OP_TYPES),
            "keep_float": list(keep_float),
            "excluded_nodes": len(excluded),
        }
        set_card(quantized, card.evolve(quantization=note))
        if encryption_key:
            from ddetr.crypto import write_bytes_atomic

            write_bytes_atomic(out, quantized.SerializeToString(), encryption_key)
        else:
            with atomic_path(out) as tmp:
                onnx.save(quantized, str(tmp))
    logger.info("Quantized %s -> %s (%d nodes kept float by name).", onnx_in, out, len(excluded))
    return note
