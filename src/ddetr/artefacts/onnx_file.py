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
        card = ModelCard.from_dict(data, where)
    else:
        card = card_from_parts(data, where)  # metadata version 1 (flat, before cards)
    check_graph_matches_card(proto, card, where)
    return card


def _dims(value_info: Any) -> list[int | None] | None:
    """The declared dimensions of a graph input/output (None: a named or unknown axis); None: no shape."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def check_graph_matches_card(proto: Any, card: ModelCard, where: str) -> None:
    """Refuse a graph whose declared shapes contradict its ``ddetr`` metadata (a hand-edited or foreign file).

    Checked where the graph fixes a size: the input is (B, 3, H, W) with (W, H) equal to the card's
    ``input_size``; ``pred_logits`` is (B, Q, C) and ``pred_boxes`` (B, Q, 4) with the card's Q and C.

    Raises:
        CheckpointError: one line naming the tensor, what the graph declares and what the metadata says.
    """
    by_name = {v.name: v for v in [*proto.graph.input, *proto.graph.output]}
    problems: list[str] = []
    image = _dims(by_name[INPUT_NAME])
    if image is not None:
        if len(image) != 4:
            problems.append(f"input '{INPUT_NAME}' is {_shape(image)}, expected 4 dimensions (B, 3, H, W)")
        elif image[2] is not None and image[3] is not None:
            fixed = (image[3], image[2])
            if card.input_size is None or tuple(card.input_size) != fixed:
                said = "no fixed size" if card.input_size is None else f"input_size {list(card.input_size)}"
                problems.append(
                    f"input '{INPUT_NAME}' is fixed at width x height {fixed[0]}x{fixed[1]} but the metadata says {said}"
                )
    expected = {"pred_logits": card.num_classes, "pred_boxes": 4}
    for name, last in expected.items():
        dims = _dims(by_name[name])
        if dims is None:
            continue
        if len(dims) != 3:
            problems.append(
                f"output '{name}' is {_shape(dims)}, expected 3 dimensions (B, Q, {'C' if last != 4 else 4})"
            )
            continue
        if dims[1] is not None and dims[1] != card.num_queries:
            problems.append(
                f"output '{name}' has {dims[1]} queries but the metadata says num_queries {card.num_queries}"
            )
        if dims[2] is not None and dims[2] != last:
            what = f"num_classes {last}" if name == "pred_logits" else "4 box coordinates"
            problems.append(f"output '{name}' ends in {dims[2]} but the metadata says {what}")
    if problems:
        raise CheckpointError(
            f"{where}: the graph does not match its '{METADATA_KEY}' metadata: "
            + "; ".join(problems)
            + ". Re-export it."
        )


def _shape(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


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
