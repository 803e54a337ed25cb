"""``ddetr import_weights``: a published checkpoint -> a self-describing ddetr checkpoint (no spec).

The state-dict conversion lives in :mod:`ddetr.model.weights`; this task builds the model, loads the converted
weights strictly, checks that tensors the architecture shares agree, and writes the checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from ddetr.errors import CheckpointError, SpecError
from ddetr.tasks.results import ImportWeightsResult

logger = logging.getLogger(__name__)

SOURCES = ("original", "hf")


def count_parameters(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Elements of distinct tensors (aliased keys counted once)."""
    seen = {}
    for tensor in state_dict.values():
        seen[(tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))] = (
            tensor.numel()
        )
    return sum(seen.values())


def run(
    source: Literal["original", "hf"] | str,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
) -> ImportWeightsResult:
    """Convert a published checkpoint into a self-describing ddetr checkpoint.

    The converted weights are loaded strictly into ``DeformableDETR.from_config`` before anything is
    written; nothing is written on failure.

    Args:
        source: ``"original"`` (the SenseTime release ``.pth``) or ``"hf"`` (a Hugging Face model folder).
        input: the file or folder to read.
        output: the ``.pth`` to write.

    Returns:
        The file written, with its tensor and parameter counts, architecture and number of classes.

    Raises:
        CheckpointError: unreadable input or weights that do not fit the architecture.
        SpecError: unknown ``source``.
    """
    from ddetr.artefacts.card import ModelCard
    from ddetr.artefacts.checkpoint import load_into_model, save_checkpoint, short_list
    from ddetr.model.detector import DeformableDETR
    from ddetr.model.weights import arch_summary, import_hf, import_original

    class_names: list[str] | None = None
    if source == "original":
        sd, model_section, num_classes = import_original(input)
    elif source == "hf":
        sd, model_section, num_classes, class_names = import_hf(input)
    else:
        raise SpecError(f"import_weights: --source must be 'original' or 'hf', got {source!r}")
    model = DeformableDETR.from_config(model_section, num_classes)
    load_into_model(model, sd, f"{input} (converted from {source})")
    state_dict = model.state_dict()
    # keys the model shares (aliases, heads repeated per layer) must agree, or loading kept only one of them
    overwritten = [k for k, v in sd.items() if not torch.equal(state_dict[k], v)]
    if overwritten:
        raise CheckpointError(
            f"{input}: tensors that this architecture shares hold different values, so one would be lost: "
            f"{short_list(overwritten)}"
        )
    written = save_checkpoint(
        output,
        card=ModelCard(
            model=model_section,
            num_classes=num_classes,
            class_names=tuple(class_names or ()),
            num_select=model_section.num_select,
        ),
        state_dict=state_dict,
        extra={"imported_from": {"source": source, "path": str(input)}},
    )
    result = ImportWeightsResult(
        source=source,
        input=Path(input),
        output=Path(written),
        tensors=len(state_dict),
        parameters=count_parameters(state_dict),
        architecture=arch_summary(model_section),
        num_classes=num_classes,
    )
    logger.debug("imported %s", result.describe())
    return result
