"""The TensorRT engine file kind: the model card lives in a JSON sidecar, ``<engine>.json``.

An engine cannot carry metadata of its own, so ``gen_trt_engine`` writes ``{"card": ..., "tensorrt": {build
settings}}`` beside it; engines built before cards existed have the ONNX file's flat metadata there instead,
which :func:`read_sidecar` reads too. The sidecar stays plain JSON even when the engine is encrypted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddetr.artefacts.card import ModelCard, card_from_parts
from ddetr.crypto import is_encrypted
from ddetr.errors import CheckpointError
from ddetr.fileio import atomic_write_text

SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class EngineSidecar:
    """What the sidecar of an engine holds.

    Attributes:
        card: the model card (from the ONNX file the engine was built from).
        tensorrt: the build settings (data type, batch profile ``min_batch``/``opt_batch``/``max_batch``, ...).
    """

    card: ModelCard
    tensorrt: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_batch(self) -> int:
        """The largest batch the engine's profile accepts."""
        return int(self.tensorrt.get("max_batch", 1))


def sidecar_path(engine_file: str | os.PathLike[str]) -> Path:
    """``<engine>.json``."""
    return Path(f"{engine_file}{SIDECAR_SUFFIX}")


def write_sidecar(engine_file: str | os.PathLike[str], card: ModelCard, tensorrt: Mapping[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically: the card and the build settings."""
    text = json.dumps({"card": card.to_dict(), "tensorrt": dict(tensorrt)}, indent=2)
    return atomic_write_text(sidecar_path(engine_file), text)


def read_sidecar(engine_file: str | os.PathLike[str]) -> EngineSidecar:
    """The sidecar written beside an engine by :func:`write_sidecar`.

    Raises:
        CheckpointError: no sidecar (the engine was not built by ``ddetr gen_trt_engine``), or a broken one.
    """
    path = sidecar_path(engine_file)
    if not path.is_file():
        raise CheckpointError(
            f"{engine_file}: no {path.name} beside it; build the engine with `ddetr gen_trt_engine` so that its "
            "class names, input size and normalisation are known."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path}: not a JSON file; rebuild the engine with `ddetr gen_trt_engine`."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object; rebuild the engine with `ddetr gen_trt_engine`.")
    tensorrt = data.get("tensorrt") if isinstance(data.get("tensorrt"), Mapping) else {}
    if isinstance(data.get("card"), Mapping):
        card = ModelCard.from_dict(data["card"], str(path))
    else:
        card = card_from_parts(data, str(path))  # engines built before cards: the flat ONNX metadata
    return EngineSidecar(card.evolve(encrypted=is_encrypted(engine_file)), dict(tensorrt))
