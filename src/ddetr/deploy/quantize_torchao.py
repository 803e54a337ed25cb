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

from ddetr.errors import CheckpointError
from ddetr.model.quantized import RECIPE, apply_int8_weight_only

logger = logging.getLogger(__name__)


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
    from ddetr.artefacts.checkpoint import save_checkpoint
    from ddetr.model.detector import build_model_from_checkpoint

    model, loaded = build_model_from_checkpoint(checkpoint, encryption_key=encryption_key)
    if loaded.card.quantization:
        raise CheckpointError(f"quantize.model_path: {checkpoint} is already quantized.")
    names = apply_int8_weight_only(model, skip_names)
    note = {"backend": "torchao", "mode": "weight_only_ptq", "recipe": RECIPE, "skip_names": list(skip_names)}
    note["modules"] = len(names)
    save_checkpoint(
        out,
        card=loaded.card.evolve(quantization=note),
        state_dict=model.state_dict(),
        spec=loaded.spec,
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
        ``(model, LoadedCheckpoint)``, model in eval mode.

    Raises:
        CheckpointError: not a torchao-quantized ddetr checkpoint. UnavailableError: torchao missing.
    """
    from ddetr.model.detector import build_model_from_checkpoint

    # the same build as every other checkpoint (frozen batch norm, quantized layout), so a checkpoint trained
    # with model.freeze_backbone_bn=false loads too
    model, loaded = build_model_from_checkpoint(Path(path), encryption_key=encryption_key)
    note = dict(loaded.card.quantization or {})
    if note.get("backend") != "torchao" or note.get("recipe") != RECIPE:
        raise CheckpointError(
            f"{path}: not a torchao {RECIPE} checkpoint (quantization entry: {note or None})."
        )
    return model, loaded
