"""torchao int8 weight-only post-training quantization of a ddetr checkpoint (TAO's default ``quantize``).

The quantized checkpoint is a normal ddetr checkpoint whose quantized ``nn.Linear`` weights are torchao
``Int8Tensor`` values (int8 data + per-row scales, loadable with ``torch.load(weights_only=True)``), plus a
``quantization`` entry naming the recipe. :func:`load_quantized_model` rebuilds the model, applies the same
recipe to the freshly built float model and loads the int8 weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ddetr.errors import CheckpointError, UnavailableError

logger = logging.getLogger(__name__)

TORCHAO_INSTALL = "pip install torchao"
RECIPE = "int8_weight_only"


def require_torchao() -> Any:
    """Import torchao or raise UnavailableError naming the package."""
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise UnavailableError(
            f"quantize.backend=torchao needs the torchao package, which is not installed; run `{TORCHAO_INSTALL}`."
        ) from None
    return quantization


def apply_int8_weight_only(model: nn.Module, skip_names: Sequence[str] = ()) -> list[str]:
    """Quantize every ``nn.Linear`` (not nn.MultiheadAttention's projections) of ``model`` in place (int8 weights, float activations) except skipped ones.

    Args:
        model: the detector (float, eval mode).
        skip_names: module-name substrings left in float.

    Returns:
        The names of the quantized modules.
    """
    quantization = require_torchao()
    quantized: list[str] = []
    seen: set[int] = set()  # heads shared between decoder layers are one module reached by several names

    # exactly nn.Linear: nn.MultiheadAttention's out_proj subclass is read as a raw weight by F.linear's caller

    def wanted(module: nn.Module, name: str) -> bool:
        keep = (
            type(module) is nn.Linear
            and id(module) not in seen
            and not any(s and s in name for s in skip_names)
        )
        if keep:
            seen.add(id(module))
            quantized.append(name)
        return keep

    quantization.quantize_(model, quantization.Int8WeightOnlyConfig(), filter_fn=wanted)
    return quantized


def quantize_checkpoint_torchao(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    skip_names: Sequence[str] = (),
    encryption_key: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Write an int8 weight-only copy of ``checkpoint`` to ``out`` (atomically).

    ``encryption_key`` reads an encrypted checkpoint and, when non-empty, encrypts ``out``.

    Returns:
        The quantized model (eval mode) and the ``quantization`` entry written into the checkpoint.
    """
    from ddetr.checkpoint import build_model_from_checkpoint, save_checkpoint

    model, info = build_model_from_checkpoint(checkpoint, encryption_key=encryption_key)
    if info.raw.get("quantization"):
        raise CheckpointError(f"quantize.model_path: {checkpoint} is already quantized.")
    names = apply_int8_weight_only(model, skip_names)
    note = {"backend": "torchao", "mode": "weight_only_ptq", "recipe": RECIPE, "skip_names": list(skip_names)}
    note["modules"] = len(names)
    save_checkpoint(
        out,
        state_dict=model.state_dict(),
        model=info.model,
        num_classes=info.num_classes,
        class_names=info.class_names,
        spec=info.spec,
        extra={"quantization": note},
        encryption_key=encryption_key,
    )
    logger.info("torchao int8 weight-only: %d linear layers quantized -> %s", len(names), out)
    return model.eval(), note


def load_quantized_model(
    path: str | os.PathLike[str], encryption_key: str | None = None
) -> tuple[nn.Module, Any]:
    """Build the model a torchao-quantized checkpoint describes and load its int8 weights.

    ``encryption_key`` reads an encrypted checkpoint (plain ones ignore it).

    Returns:
        ``(model, CheckpointInfo)``, model in eval mode.

    Raises:
        CheckpointError: not a torchao-quantized ddetr checkpoint. UnavailableError: torchao missing.
    """
    from ddetr.checkpoint import build_model_from_checkpoint

    # the same build as every other checkpoint (frozen batch norm, quantized layout), so a checkpoint trained
    # with model.freeze_backbone_bn=false loads too
    model, info = build_model_from_checkpoint(Path(path), encryption_key=encryption_key)
    note = info.raw.get("quantization") or {}
    if note.get("backend") != "torchao" or note.get("recipe") != RECIPE:
        raise CheckpointError(
            f"{path}: not a torchao {RECIPE} checkpoint (quantization entry: {note or None})."
        )
    return model, info


def prepare_model(model: nn.Module, note: dict[str, Any]) -> None:
    """Give a freshly built float model the layout a quantized checkpoint's state dict has (for loading)."""
    if note.get("backend") == "torchao" and note.get("recipe") == RECIPE:
        apply_int8_weight_only(model, note.get("skip_names") or ())
