"""Self-describing checkpoints: weights plus the model card they belong to.

A ddetr checkpoint is one ``torch.save`` dict::

    {"format": "ddetr", "format_version": 2, "ddetr_version": "0.1.0",
     "card": {...ModelCard.to_dict()...}, "spec": {...resolved spec...} | None, "state_dict": {...}, **extra}

Downstream actions build the model from the card alone, never from defaults. Lightning checkpoints written
by our trainer are read too: their ``state_dict`` keys carry a ``model.`` prefix and the card sits under
``checkpoint["ddetr"]`` (:func:`lightning_entry`). Files written by earlier versions (format 1: ``model``,
``num_classes``, ``class_names`` at the top) still load: their card is made from those entries.

Everything is read with ``torch.load(weights_only=True)`` and written atomically (temporary file in
the same folder, then ``os.replace``), so a crash never leaves a truncated file under the final name.
With an ``encryption_key`` files are written encrypted (:mod:`ddetr.crypto`); encrypted files need the
key to be read, plain ones are read whatever the key.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ddetr._version import __version__
from ddetr.artefacts.card import ModelCard, legacy_checkpoint_card
from ddetr.crypto import is_encrypted, read_bytes, write_bytes_atomic
from ddetr.errors import CheckpointError
from ddetr.fileio import atomic_open

logger = logging.getLogger(__name__)

FORMAT_NAME = "ddetr"
FORMAT_VERSION = 2
LIGHTNING_KEY = "ddetr"
LIGHTNING_MODEL_PREFIX = "model."
LIGHTNING_IGNORED_PREFIXES = ("criterion.",)
_MAX_LISTED = 8

#: The only Python objects (beyond tensors, numbers, strings and containers, which torch's weights-only
#: unpickler always allows) a file we read may contain: the original release stores its ``args`` as an
#: ``argparse.Namespace``. Lightning checkpoints written by our trainer need nothing more.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: its card, its weights keyed as the model's own, and the rest of the file.

    Attributes:
        card: the model card (architecture, classes, preprocessing, quantization).
        state_dict: tensors keyed as ``DeformableDETR.state_dict()`` keys them.
        spec: the resolved experiment spec the checkpoint was written with, when known.
        raw: the whole loaded dict (optimizer state, epoch, ``modelopt_state``, ... when present).
        path: the file that was read.
    """

    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    spec: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    path: Path | None = None


def short_list(items: list[str]) -> str:
    """``a, b, c (+5 more)``: a bounded list for one-line error messages."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} (+{more} more)" if more > 0 else shown


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], encryption_key: str | None = None) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place.

    Args:
        obj: anything ``torch.save`` accepts.
        path: final file name; its folder is created if missing.
        encryption_key: when non-empty, the file is written encrypted with it (:mod:`ddetr.crypto`).

    Returns:
        The final path.

    Raises:
        Whatever ``torch.save`` or the file system raise; the temporary file is removed and an existing
        file at ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if encryption_key:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return write_bytes_atomic(final, buffer.getbuffer(), encryption_key)
    with atomic_open(final, "wb") as handle:
        torch.save(obj, handle)
    return final


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    card: ModelCard,
    state_dict: Mapping[str, torch.Tensor],
    spec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    encryption_key: str | None = None,
) -> Path:
    """Write a self-describing ddetr checkpoint atomically.

    Args:
        path: output file (``.pth``).
        card: the model card (architecture, classes, preprocessing, quantization) of the weights.
        state_dict: the model's weights, keyed as ``DeformableDETR.state_dict()``.
        spec: the resolved experiment spec (plain dict, key blanked), if any.
        extra: more top-level entries (e.g. ``{"modelopt_state": ...}``); must not reuse reserved names.
        encryption_key: when non-empty, the file is written encrypted with it.

    Returns:
        The path written.

    Raises:
        CheckpointError: ``extra`` reusing a reserved key.
    """
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ddetr_version": __version__,
        "card": card.to_dict(),
        "spec": spec,
        "state_dict": dict(state_dict),
    }
    clash = sorted(set(extra or {}) & set(payload))
    if clash:
        raise CheckpointError(f"{path}: extra entries may not replace reserved keys {clash}")
    payload.update(extra or {})
    written = atomic_torch_save(payload, path, encryption_key)
    logger.debug("wrote checkpoint %s (%d tensors)", written, len(payload["state_dict"]))
    return written


def lightning_entry(card: ModelCard, spec: dict[str, Any] | None) -> dict[str, Any]:
    """What the trainer stores under ``checkpoint["ddetr"]`` of a Lightning checkpoint (read back by
    :func:`load_checkpoint`)."""
    return {"card": card.to_dict(), "spec": spec}


def safe_torch_load(
    source: str | os.PathLike[str] | IO[bytes],
    map_location: str | torch.device | Callable[..., Any] | None = "cpu",
    *,
    name: str | None = None,
) -> Any:
    """``torch.load`` with the weights-only unpickler, whatever the environment says.

    Every file a user hands ddetr (resume checkpoints, pretrained models and backbones, imported weights,
    quantized checkpoints) is read through this function, so no pickle can run code. ``weights_only=True``
    is passed explicitly: torch honours ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only when the caller leaves
    ``weights_only`` unset, so that variable cannot turn this load unsafe. Beyond tensors and plain
    containers only :data:`SAFE_GLOBALS` are allowed.

    Args:
        source: a file path or an open binary stream (e.g. a decrypted checkpoint in memory).
        map_location: where tensors go, as ``torch.load`` takes it.
        name: how the error message names the file (default: ``source``).

    Returns:
        The unpickled object.

    Raises:
        CheckpointError: one line: the Python global the file needs that is not allowed, or why the file
            is not a readable PyTorch file.
    """
    label = name if name is not None else str(source)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... for refused or corrupt files
        text = str(err)
        blocked = _GLOBAL_RE.search(text)
        if blocked:
            raise CheckpointError(
                f"{label}: refused: the file needs the Python global '{blocked.group(1)}', which a weights-only "
                "load does not allow (it could run code); only tensors, plain containers and "
                "argparse.Namespace are read"
            ) from None
        raise CheckpointError(
            f"{label}: not a readable PyTorch checkpoint (damaged, truncated or another kind of file; "
            f"weights-only torch.load failed: {_load_failure(err)})"
        ) from None


def _load_failure(err: BaseException) -> str:
    """The cause of a failed weights-only load in a few words, without torch's advice to load unsafely."""
    text = " ".join(str(err).split())
    cause = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if cause:
        text = cause.group(1).strip()
    elif "weights_only" in text:  # torch's general notice: what failed is not in it
        text = ""
    if isinstance(err, EOFError) and not text:
        text = "the file ended early (empty or truncated)"
    text = text.split(". ")[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_torch_file(
    path: str | os.PathLike[str], map_location: Any = "cpu", encryption_key: str | None = None
) -> Any:
    """:func:`safe_torch_load` of a file that may be encrypted: decrypted in memory first.

    Raises:
        CheckpointError: an encrypted file with no key or the wrong key, or what :func:`safe_torch_load` raises.
    """
    path = Path(path)
    source: Path | io.BytesIO = io.BytesIO(read_bytes(path, encryption_key)) if is_encrypted(path) else path
    return safe_torch_load(source, map_location, name=str(path))


def _card_from(path: Path, meta: Mapping[str, Any], quantization: Any, what: str) -> ModelCard:
    where = f"{path}: {what}"
    if "card" in meta:
        if not isinstance(meta["card"], Mapping):
            raise CheckpointError(f"{where} has a 'card' entry that is not a mapping")
        return ModelCard.from_dict(meta["card"], where)
    return legacy_checkpoint_card(meta, quantization, where)  # format 1: model, num_classes, class_names


def _lightning_state_dict(path: Path, state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    ours: dict[str, torch.Tensor] = {}
    other: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: Lightning checkpoint has a weight named {key!r}, not a string")
        if key.startswith(LIGHTNING_MODEL_PREFIX):
            ours[key[len(LIGHTNING_MODEL_PREFIX) :]] = value
        elif not key.startswith(LIGHTNING_IGNORED_PREFIXES):
            other.append(key)
    if not ours:
        raise CheckpointError(
            f"{path}: Lightning checkpoint has no '{LIGHTNING_MODEL_PREFIX}*' weights; "
            f"found {short_list(sorted(state_dict))}"
        )
    if other:
        logger.warning("%s: ignoring %d weights outside the model: %s", path, len(other), short_list(other))
    return ours


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    encryption_key: str | None = None,
) -> LoadedCheckpoint:
    """Read a ddetr checkpoint, or a Lightning checkpoint written by the ddetr trainer.

    Args:
        path: the ``.pth`` / ``.ckpt`` file.
        map_location: device for the tensors.
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).

    Returns:
        A :class:`LoadedCheckpoint` whose ``state_dict`` is keyed as the model's (no ``model.`` prefix).

    Raises:
        CheckpointError: missing file, not a PyTorch file, unsafe pickle content, no ddetr metadata, or an
            encrypted file with no key or the wrong key.
    """
    file = Path(path)
    if not file.is_file():
        what = "a folder" if file.is_dir() else "nothing"
        raise CheckpointError(f"{file}: checkpoint file not found (found {what} at that path)")
    raw = load_torch_file(file, map_location, encryption_key)
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{file}: not a ddetr checkpoint (found a {type(raw).__name__}, expected a dict)"
        )

    if raw.get("format") == FORMAT_NAME:
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{file}: checkpoint format_version {version!r} is newer than this ddetr reads "
                f"({FORMAT_VERSION}); upgrade ddetr"
            )
        card = _card_from(file, raw, raw.get("quantization"), "checkpoint")
        spec = raw.get("spec")
        state_dict = raw.get("state_dict")
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{file}: ddetr checkpoint has no 'state_dict' dict")
    elif isinstance(raw.get(LIGHTNING_KEY), Mapping) and isinstance(raw.get("state_dict"), Mapping):
        card = _card_from(file, raw[LIGHTNING_KEY], None, f"Lightning checkpoint '{LIGHTNING_KEY}'")
        spec = raw[LIGHTNING_KEY].get("spec")
        state_dict = _lightning_state_dict(file, raw["state_dict"])
    else:
        found = short_list(sorted(str(k) for k in raw))
        hint = ""
        if "model" in raw and "args" in raw:
            hint = "; it looks like an original Deformable DETR release: run `ddetr import_weights --source original`"
        raise CheckpointError(f"{file}: no ddetr metadata (found top-level keys: {found}){hint}")

    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{file}: state_dict entries that are not tensors under string names: {short_list(bad)}"
        )
    card = card.evolve(encrypted=is_encrypted(file))
    return LoadedCheckpoint(
        card=card,
        state_dict=dict(state_dict),
        spec=spec if isinstance(spec, dict) else None,
        raw=raw,
        path=file,
    )


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Compare two state dicts by key and shape.

    Returns:
        ``(missing, unexpected, wrong_shape)``: keys of ``expected`` absent from ``given``, keys of ``given``
        absent from ``expected``, and ``"key: given [..] vs model [..]"`` lines for shape differences.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k}: checkpoint {list(given[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, wrong


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One-line description of a :func:`state_dict_mismatch` result (empty when everything matches)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {short_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {short_list(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches: {short_list(wrong)}")
    return "; ".join(parts)


def load_into_model(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state_dict`` into ``model``, raising a one-line CheckpointError on any mismatch.

    Args:
        model: the module to fill.
        state_dict: tensors keyed as ``model.state_dict()``.
        source: what the weights come from, for the error message (usually a path).

    A batch norm's ``num_batches_tracked`` counter that ``model`` has no place for is left out: a backbone
    trained with live batch norm (``model.freeze_backbone_bn: false``) runs with frozen ones, and the counter
    only matters to training.
    """
    wanted = model.state_dict()
    state_dict = {
        key: value
        for key, value in state_dict.items()
        if key in wanted or not key.endswith(".num_batches_tracked")
    }
    problems = describe_mismatch(*state_dict_mismatch(wanted, state_dict))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the architecture: {problems}")
    model.load_state_dict(state_dict, strict=True)
