"""Self-describing checkpoints: weights plus the architecture and class names they belong to.

A ddetr checkpoint is one ``torch.save`` dict::

    {"format": "ddetr", "format_version": 1, "ddetr_version": "0.1.0",
     "model": {...model section...}, "num_classes": 91, "class_names": [...] | None,
     "spec": {...resolved spec...} | None, "state_dict": {...}, **extra}

Downstream actions build the model from the checkpoint alone (:func:`build_model_from_checkpoint`),
never from defaults. Lightning checkpoints written by our trainer are read too: their ``state_dict``
keys carry a ``model.`` prefix and our metadata sits under ``checkpoint["ddetr"]``.

Everything is read with ``torch.load(weights_only=True)`` and written atomically (temporary file in
the same folder, then ``os.replace``), so a crash never leaves a truncated file under the final name.
With an ``encryption_key`` files are written encrypted (:mod:`ddetr.crypto`); encrypted files need the
key to be read, plain ones are read whatever the key.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from ddetr import __version__
from ddetr.crypto import is_encrypted, read_bytes, write_bytes_atomic
from ddetr.errors import CheckpointError
from ddetr.fileio import atomic_open
from ddetr.spec.sections import ModelSection

if TYPE_CHECKING:
    from ddetr.model.detector import DeformableDETR

logger = logging.getLogger(__name__)

FORMAT_NAME = "ddetr"
FORMAT_VERSION = 1
LIGHTNING_MODEL_PREFIX = "model."
LIGHTNING_IGNORED_PREFIXES = ("criterion.",)
_MAX_LISTED = 8


@dataclass
class CheckpointInfo:
    """What a checkpoint holds, with the state dict keyed as the model's own.

    Attributes:
        state_dict: tensors keyed as ``DeformableDETR.state_dict()`` keys them.
        model: the model section the weights were made with (the architecture).
        num_classes: width of the classification head (largest category id + 1).
        class_names: ``class_names[i]`` names logit ``i``; ``None`` when unknown.
        spec: the resolved experiment spec the checkpoint was written with, when known.
        raw: the whole loaded dict (optimizer state, epoch, ... for Lightning checkpoints).
        path: the file that was read.
    """

    state_dict: dict[str, torch.Tensor]
    model: ModelSection
    num_classes: int
    class_names: list[str] | None = None
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


def _model_dict(model: ModelSection | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model, ModelSection):
        return model.model_dump(mode="json")
    try:
        return ModelSection.model_validate(dict(model)).model_dump(mode="json")
    except ValidationError as err:
        raise CheckpointError(f"model section is not valid: {_first_validation_error(err)}") from None


def _first_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"model.{loc}: {first.get('msg', 'invalid')} (got {first.get('input')!r})"


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    state_dict: Mapping[str, torch.Tensor],
    model: ModelSection | Mapping[str, Any],
    num_classes: int,
    class_names: list[str] | None = None,
    spec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    encryption_key: str | None = None,
) -> Path:
    """Write a self-describing ddetr checkpoint atomically.

    Args:
        path: output file (``.pth``).
        state_dict: the model's weights, keyed as ``DeformableDETR.state_dict()``.
        model: the model section (architecture) the weights belong to.
        num_classes: classification head width.
        class_names: name of each logit index, if known.
        spec: the resolved experiment spec (plain dict), if any.
        extra: more top-level entries (e.g. ``{"source": "hf"}``); must not reuse reserved names.
        encryption_key: when non-empty, the file is written encrypted with it.

    Returns:
        The path written.

    Raises:
        CheckpointError: invalid model section, ``num_classes`` < 1, or ``extra`` reusing a reserved key.
    """
    if int(num_classes) < 1:
        raise CheckpointError(f"{path}: num_classes must be >= 1, got {num_classes}")
    if class_names is not None and len(class_names) > num_classes:
        raise CheckpointError(
            f"{path}: {len(class_names)} class names given for num_classes={num_classes}; "
            "class_names[i] must name logit i"
        )
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ddetr_version": __version__,
        "model": _model_dict(model),
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None else None,
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


def _torch_load(path: Path, map_location: str | torch.device, encryption_key: str | None = None) -> Any:
    # an encrypted file is decrypted in memory first (CheckpointError for a missing or wrong key)
    source: Path | io.BytesIO = io.BytesIO(read_bytes(path, encryption_key)) if is_encrypted(path) else path
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (torch.load with weights_only=True failed: {reason})"
        ) from None


def _metadata_from(
    path: Path, meta: Mapping[str, Any], what: str
) -> tuple[ModelSection, int, list | None, Any]:
    for key in ("model", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: {what} has no '{key}' entry; found keys {sorted(meta)}")
    try:
        model = ModelSection.model_validate(dict(meta["model"]))
    except (ValidationError, TypeError, ValueError) as err:
        detail = _first_validation_error(err) if isinstance(err, ValidationError) else str(err)
        raise CheckpointError(f"{path}: {what} holds an invalid model section: {detail}") from None
    num_classes = meta["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"{path}: {what} num_classes must be an integer >= 1, got {num_classes!r}")
    class_names = meta.get("class_names")
    if class_names is not None:
        class_names = [str(n) for n in class_names]
    return model, num_classes, class_names, meta.get("spec")


def _lightning_state_dict(path: Path, state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    ours: dict[str, torch.Tensor] = {}
    other: list[str] = []
    for key, value in state_dict.items():
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
) -> CheckpointInfo:
    """Read a ddetr checkpoint, or a Lightning checkpoint written by the ddetr trainer.

    Args:
        path: the ``.pth`` / ``.ckpt`` file.
        map_location: device for the tensors.
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).

    Returns:
        A :class:`CheckpointInfo` whose ``state_dict`` is keyed as the model's (no ``model.`` prefix).

    Raises:
        CheckpointError: missing file, not a PyTorch file, unsafe pickle content, no ddetr metadata, or an
            encrypted file with no key or the wrong key.
    """
    file = Path(path)
    if not file.is_file():
        what = "a folder" if file.is_dir() else "nothing"
        raise CheckpointError(f"{file}: checkpoint file not found (found {what} at that path)")
    raw = _torch_load(file, map_location, encryption_key)
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
        model, num_classes, class_names, spec = _metadata_from(file, raw, "checkpoint")
        state_dict = raw.get("state_dict")
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{file}: ddetr checkpoint has no 'state_dict' dict")
    elif isinstance(raw.get("ddetr"), Mapping) and isinstance(raw.get("state_dict"), Mapping):
        model, num_classes, class_names, spec = _metadata_from(
            file, raw["ddetr"], "Lightning checkpoint 'ddetr'"
        )
        state_dict = _lightning_state_dict(file, raw["state_dict"])
    else:
        found = short_list(sorted(str(k) for k in raw))
        hint = ""
        if "model" in raw and "args" in raw:
            hint = "; it looks like an original Deformable DETR release: run `ddetr import_weights --source original`"
        raise CheckpointError(f"{file}: no ddetr metadata (found top-level keys: {found}){hint}")

    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: state_dict entries that are not tensors: {short_list(bad)}")
    return CheckpointInfo(
        state_dict=dict(state_dict),
        model=model,
        num_classes=num_classes,
        class_names=class_names,
        spec=spec,
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
    """
    problems = describe_mismatch(*state_dict_mismatch(model.state_dict(), state_dict))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the architecture: {problems}")
    model.load_state_dict(state_dict, strict=True)


def build_model_from_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    encryption_key: str | None = None,
) -> tuple[DeformableDETR, CheckpointInfo]:
    """Build the model a checkpoint describes and load its weights strictly.

    Args:
        path: a ddetr or ddetr-Lightning checkpoint.
        map_location: device for the tensors (the model is built on CPU, then holds these tensors).
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).

    Returns:
        ``(model, info)`` with the model in eval mode.

    Raises:
        CheckpointError: unreadable checkpoint, or weights that do not fit the recorded architecture
            (names the first missing/unexpected keys and shape differences).
        UnavailableError: a quantized checkpoint whose back end's package (torchao, nvidia-modelopt) is missing.
    """
    from ddetr.model.detector import DeformableDETR

    info = load_checkpoint(path, map_location=map_location, encryption_key=encryption_key)
    # the checkpoint holds the whole model: never re-read the backbone-only file it was initialised from
    # and run batch norm frozen (folded into the convolutions): in eval mode it equals a live one
    architecture = info.model.model_copy(update={"pretrained_backbone_path": "", "freeze_backbone_bn": True})
    model = DeformableDETR.from_config(architecture, info.num_classes)
    if info.raw.get("quantization"):  # torchao / ModelOpt: give the float model the quantized layout first
        from ddetr.deploy.quantize import prepare_quantized_model

        model = prepare_quantized_model(model, info)
    load_into_model(model, info.state_dict, str(info.path))
    model.eval()
    return model, info
