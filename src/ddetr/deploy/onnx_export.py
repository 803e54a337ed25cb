"""A ddetr checkpoint to a self-describing ONNX file.

The file has one input ``inputs`` (B, 3, H, W) float32 (normalised RGB, fixed H and W) and two outputs
``pred_logits`` (B, Q, C) raw logits and ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h). B is fixed or
dynamic (``batch_size: -1``). The checkpoint's model card, with the fixed input size, batch and whether the
attention is the TensorRT plugin node, goes into the file's metadata (:mod:`ddetr.artefacts.onnx_file`), so a
runtime needs no spec. With an ``encryption_key`` the file is written encrypted (:mod:`ddetr.crypto`);
:func:`ddetr.artefacts.onnx_file.read_card` and the ONNX Runtime predictor decrypt it in memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.onnx_file import INPUT_NAME, OUTPUT_NAMES, set_card
from ddetr.crypto import write_bytes_atomic
from ddetr.errors import CheckpointError, SpecError
from ddetr.fileio import atomic_path
from ddetr.model.detector import build_model_from_checkpoint

logger = logging.getLogger(__name__)

MIN_OPSET = 16  # GridSample entered the default domain in opset 16
DEFAULT_OPSET = 17


class ExportWrapper(nn.Module):
    """The detector as ``inputs -> (pred_logits, pred_boxes)``: no mask (the exported size is fixed, unpadded)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """inputs (B, 3, H, W) -> logits (B, Q, C), boxes (B, Q, 4) normalised cx, cy, w, h."""
        out = self.model(inputs)
        return out.pred_logits, out.pred_boxes


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote: the file and the card stored in it."""

    onnx_file: Path
    card: ModelCard


def check_export_args(opset_version: int, batch_size: int, input_channel: int = 3) -> None:
    """One-line SpecErrors for export settings, before any work.

    Raises:
        SpecError: opset below :data:`MIN_OPSET`, batch_size 0 or below -1, input_channel not 3.
    """
    if opset_version < MIN_OPSET:
        raise SpecError(
            f"export.opset_version: {opset_version} is too old; the attention needs GridSample (opset >= "
            f"{MIN_OPSET}). Set export.opset_version={DEFAULT_OPSET}."
        )
    if batch_size == 0 or batch_size < -1:
        raise SpecError(f"export.batch_size: must be -1 (dynamic) or >= 1, got {batch_size}.")
    if input_channel != 3:
        raise SpecError(f"export.input_channel: the detector takes RGB images (3), got {input_channel}.")


def export_onnx(
    checkpoint: str | os.PathLike[str],
    onnx_file: str | os.PathLike[str],
    *,
    input_size: tuple[int, int] = (640, 640),
    batch_size: int = -1,
    opset_version: int = DEFAULT_OPSET,
    on_cpu: bool = True,
    verbose: bool = False,
    encryption_key: str | None = None,
    device: str = "cpu",
) -> ExportResult:
    """Export a checkpoint to ONNX, check it, and move it into place atomically.

    Args:
        checkpoint: a ddetr ``.pth`` checkpoint (the architecture and class names come from it).
        onnx_file: output path; an existing file is replaced only once the new one is complete and checked.
        input_size: (width, height) in pixels the file is fixed to.
        batch_size: -1 for a dynamic batch axis, else the fixed batch size.
        opset_version: ONNX opset, >= 16.
        on_cpu: True: standard ONNX ops only (GridSample). False: the attention is TensorRT's
            ``MultiscaleDeformableAttnPlugin_TRT`` node (ONNX Runtime cannot run such a file).
        verbose: log the exporter's graph.
        encryption_key: reads an encrypted checkpoint, and when non-empty the ONNX file is written encrypted.
        device: where the model is traced (``"cpu"`` or ``"cuda:N"``, see
            :func:`ddetr.runtime.devices.export_device`); the file is the same either way.

    Returns:
        The written path and its model card.

    Raises:
        SpecError: bad opset/batch size. CheckpointError: missing or non-ddetr checkpoint.
    """
    import onnx

    check_export_args(opset_version, batch_size)
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"export.checkpoint: {ckpt} does not exist (or is not a file).")
    model, loaded = build_model_from_checkpoint(ckpt, encryption_key=encryption_key)
    quantization = loaded.card.quantization
    if quantization and quantization.get("backend") != "modelopt.pytorch":  # ModelOpt's export Q/DQ nodes
        raise CheckpointError(
            f"export.checkpoint: {ckpt} is a quantized ({quantization.get('backend')}) checkpoint; "
            "export the float checkpoint and quantize the ONNX file (quantize.backend=onnxruntime)."
        )
    model.eval()
    if not on_cpu:
        from ddetr.deploy.trt_plugin import with_plugin_attention

        model = with_plugin_attention(model)
    wrapper = ExportWrapper(model).eval().to(device)
    width, height = int(input_size[0]), int(input_size[1])
    # trace with batch 2 when dynamic, so that no size-1 broadcast gets baked into the graph
    trace_batch = 2 if batch_size == -1 else batch_size
    dummy = torch.randn(trace_batch, 3, height, width, device=device)
    dynamic_axes = None
    if batch_size == -1:
        dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}

    out = Path(onnx_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the traced graph is an intermediate file (beside the output, removed whatever happens); the final file
    # appears whole under its name, or not at all
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        traced = Path(work) / "traced.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # shapes are fixed at export: the tracer's notes about Python ints are expected
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(traced),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset_version,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
                verbose=verbose,
                custom_opsets=None if on_cpu else {_plugin_domain(): 1},
            )
        proto = onnx.load(str(traced))
    card = loaded.card.evolve(
        input_size=(width, height),
        batch_size=batch_size if batch_size > 0 else None,
        trt_plugin=not on_cpu,
        quantization={**quantization, "format": "QDQ"} if quantization else None,
        source=str(ckpt),
    )
    set_card(proto, card)
    proto.doc_string = f"ddetr Deformable DETR exported from {ckpt.name}"
    onnx.checker.check_model(proto)
    if encryption_key:
        write_bytes_atomic(out, proto.SerializeToString(), encryption_key)
    else:
        with atomic_path(out) as tmp:
            onnx.save(proto, str(tmp))
    logger.info(
        "Exported %s -> %s (%dx%d, batch %s, opset %d, %s attention%s).",
        ckpt,
        out,
        width,
        height,
        "dynamic" if batch_size == -1 else batch_size,
        opset_version,
        "standard-op" if on_cpu else "TensorRT-plugin",
        ", encrypted" if encryption_key else "",
    )
    return ExportResult(out, card)


def _plugin_domain() -> str:
    from ddetr.deploy.trt_plugin import PLUGIN_DOMAIN

    return PLUGIN_DOMAIN
