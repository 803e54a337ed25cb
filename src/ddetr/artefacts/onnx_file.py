"""The ONNX file kind: its fixed names and the model card in its metadata.

A ddetr ONNX file has one input ``inputs`` (B, 3, H, W) float32 (normalised RGB at the card's fixed
``input_size``) and two outputs ``pred_logits`` (B, Q, C) raw logits and ``pred_boxes`` (B, Q, 4) normalised
(cx, cy, w, h). The metadata entry ``ddetr`` holds the card as JSON (:meth:`ModelCard.to_dict`); files
written before cards existed hold the earlier flat entry, which :func:`card_from_proto` reads too.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ddetr.artefacts.card import ModelCard, card_from_parts
from ddetr.crypto import is_encrypted, read_bytes
from ddetr.errors import CheckpointError

INPUT_NAME = "inputs"
OUTPUT_NAMES = ("pred_logits", "pred_boxes")
METADATA_KEY = "ddetr"


def set_card(proto: Any, card: ModelCard) -> None:
    """Write (or replace) the ``ddetr`` metadata entry of an ``onnx.ModelProto`` with ``card``."""
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(card.to_dict())


def card_from_proto(proto: Any, where: str) -> ModelCard:
    """The card in an ``onnx.ModelProto``'s metadata.

    Raises:
        CheckpointError: the graph lacks ddetr's input/outputs or the ``ddetr`` entry, or the entry is broken.
    """
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    meta = next((prop.value for prop in proto.metadata_props if prop.key == METADATA_KEY), None)
    if meta is None or INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= set(outputs):
        raise CheckpointError(
            f"{where}: not a ddetr ONNX model (expected input '{INPUT_NAME}', outputs {list(OUTPUT_NAMES)} and "
            f"'{METADATA_KEY}' metadata; found inputs {inputs}, outputs {outputs}). Export it with `ddetr export`."
        )
    try:
        data = json.loads(meta)
    except ValueError:
        raise CheckpointError(f"{where}: its '{METADATA_KEY}' metadata is not JSON; re-export it.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: its '{METADATA_KEY}' metadata is not a JSON object; re-export it.")
    if "card_version" in data:
        return ModelCard.from_dict(data, where)
    return card_from_parts(data, where)  # metadata version 1 (flat, before cards)


def load_proto(
    path: str | os.PathLike[str], encryption_key: str | None = None, *, data: bytes | None = None
) -> Any:
    """The ``onnx.ModelProto`` of a file, plain or encrypted, without external weights.

    Raises:
        CheckpointError: not ONNX, or encrypted and the key is missing or wrong.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if data is None and is_encrypted(path):
        data = read_bytes(path, encryption_key)
    try:
        if data is not None:
            return onnx.load_model_from_string(data)
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(exc).__name__}).") from None


def read_card(
    path: str | os.PathLike[str], encryption_key: str | None = None, *, data: bytes | None = None
) -> ModelCard:
    """The model card of a ddetr ONNX file.

    Args:
        path: the ``.onnx`` file, plain or encrypted.
        encryption_key: the key an encrypted file was written with (plain files ignore it).
        data: the file's plaintext bytes when the caller already has them (``path`` is then only named).

    Raises:
        CheckpointError: the file is not ONNX, is an ONNX model that ddetr did not export, or is encrypted and
            the key is missing or wrong.
    """
    card = card_from_proto(load_proto(path, encryption_key, data=data), str(path))
    return card.evolve(encrypted=is_encrypted(path))
