"""The model card: what every artefact (checkpoint, ONNX file, TensorRT engine) says about its model.

One frozen :class:`ModelCard` is written into each file kind and read back from it by one reader per kind
(:mod:`ddetr.artefacts.checkpoint`, :mod:`ddetr.artefacts.onnx_file`, :mod:`ddetr.artefacts.engine_file`).
Its serial form (:meth:`ModelCard.to_dict`) is plain JSON, the same in all three.

Preprocessing and post-processing come from the card unless the spec sets other values
(:func:`card_for_spec`): one warning line then names each field that differs, as the architecture does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from ddetr.errors import CheckpointError
from ddetr.spec.sections import AugmentationSection, ModelSection, Spec

logger = logging.getLogger(__name__)

CARD_VERSION = 2
_AUG = AugmentationSection()  # the one place the defaults (ImageNet mean/std, resize) are written: the spec


@dataclass(frozen=True)
class ModelCard:
    """What an artefact must say about its model so that it runs without a spec.

    Attributes:
        model: the architecture (the spec's ``model`` section the weights were made with).
        num_classes: C, width of the class logits (largest category id + 1).
        class_names: ``class_names[i]`` names logit ``i`` ('' for unused ids); may be shorter than C or empty.
        num_select: detections kept per image by post-processing (top-k over queries x classes).
        mean, std: per-channel normalisation of [0, 1] RGB input.
        shortest_side: the validation resize's shortest side in pixels (``test_random_resize``).
        max_size: cap on the longer side after resizing, pixels (``random_resize_max_size``).
        input_size: (width, height) in pixels an exported artefact is fixed to; None: any size.
        batch_size: the fixed batch of an exported artefact; None: dynamic (or a checkpoint).
        trt_plugin: the attention is TensorRT's plugin node (ONNX Runtime cannot run it).
        quantization: the quantization note (back end, mode, ...) of a quantized artefact; None: float.
        encrypted: the file this card was read from is encrypted (set by the readers, not stored).
        source: the artefact this one was made from (e.g. the checkpoint an ONNX file was exported from).
        format_version: the card layout version (:data:`CARD_VERSION`).
    """

    model: ModelSection
    num_classes: int
    class_names: tuple[str, ...] = ()
    num_select: int = 300
    mean: tuple[float, float, float] = tuple(_AUG.input_mean)  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(_AUG.input_std)  # type: ignore[assignment]
    shortest_side: int = _AUG.test_random_resize
    max_size: int = _AUG.random_resize_max_size
    input_size: tuple[int, int] | None = None
    batch_size: int | None = None
    trt_plugin: bool = False
    quantization: Mapping[str, Any] | None = None
    encrypted: bool = field(default=False, compare=False)
    source: str = field(default="", compare=False)
    format_version: int = CARD_VERSION

    @property
    def num_queries(self) -> int:
        """Q, the number of object queries."""
        return int(self.model.num_queries)

    @classmethod
    def from_spec(cls, spec: Spec, class_names: list[str] | tuple[str, ...] = ()) -> ModelCard:
        """The card of a model trained with ``spec`` (architecture, classes, preprocessing, num_select)."""
        aug = spec.dataset.augmentation
        return cls(
            model=spec.model.model_copy(deep=True),
            num_classes=int(spec.dataset.num_classes),
            class_names=tuple(str(n) for n in class_names),
            num_select=int(spec.model.num_select),
            mean=_triple(aug.input_mean),
            std=_triple(aug.input_std),
            shortest_side=int(aug.test_random_resize),
            max_size=int(aug.random_resize_max_size),
        )

    def evolve(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (the card is frozen)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able serial form written into every artefact (``encrypted`` is a fact of the file, not stored)."""
        return {
            "card_version": self.format_version,
            "model": self.model.model_dump(mode="json"),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "num_select": self.num_select,
            "mean": list(self.mean),
            "std": list(self.std),
            "shortest_side": self.shortest_side,
            "max_size": self.max_size,
            "input_size": list(self.input_size) if self.input_size else None,
            "batch_size": self.batch_size,
            "trt_plugin": self.trt_plugin,
            "quantization": dict(self.quantization) if self.quantization else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ModelCard:
        """Read :meth:`to_dict`'s form back; ``where`` names the file for errors.

        Raises:
            CheckpointError: a newer card version, a missing or invalid entry (one line naming it).
        """
        version = data.get("card_version")
        if not isinstance(version, int) or version > CARD_VERSION:
            raise CheckpointError(
                f"{where}: model card version {version!r} is newer than this ddetr reads ({CARD_VERSION}); upgrade ddetr"
            )
        return card_from_parts(data, where)


def _triple(values: Any) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"needs 3 values (R, G, B), got {len(out)}")
    return out  # type: ignore[return-value]


def model_section(data: Any, where: str) -> ModelSection:
    """A stored model section validated; CheckpointError naming the first bad field."""
    if isinstance(data, ModelSection):
        return data.model_copy(deep=True)
    try:
        return ModelSection.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise CheckpointError(
            f"{where}: invalid model section: model.{loc}: {first.get('msg', 'invalid')} (got {first.get('input')!r})"
        ) from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: invalid model section: {err}") from None


def card_from_parts(data: Mapping[str, Any], where: str) -> ModelCard:
    """A card from a mapping of its fields, with defaults where an older artefact has no entry.

    Reads the current form and the entries earlier ddetr versions wrote (``num_queries`` is implied by the
    model section; ``mean``/``std``/resize default to the spec's defaults).

    Raises:
        CheckpointError: ``model`` or ``num_classes`` missing, or a value of the wrong type.
    """
    for key in ("model", "num_classes"):
        if key not in data:
            raise CheckpointError(f"{where}: has no '{key}' entry; found keys {sorted(map(str, data))}")
    model = model_section(data["model"], where)
    num_classes = data["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise CheckpointError(f"{where}: num_classes must be an integer >= 1, got {num_classes!r}")
    raw_names = data.get("class_names")
    if raw_names is not None and not isinstance(raw_names, (list, tuple)):
        raise CheckpointError(f"{where}: class_names must be a list of names, got {type(raw_names).__name__}")
    try:
        names = tuple(str(n) for n in (raw_names or ()))
        size = data.get("input_size")
        batch = data.get("batch_size")
        quantization = data.get("quantization")
        card = ModelCard(
            model=model,
            num_classes=num_classes,
            class_names=names,
            num_select=int(data.get("num_select", model.num_select)),
            mean=_triple(data.get("mean") or _AUG.input_mean),
            std=_triple(data.get("std") or _AUG.input_std),
            shortest_side=int(data.get("shortest_side") or _AUG.test_random_resize),
            max_size=int(data.get("max_size") or _AUG.random_resize_max_size),
            input_size=(int(size[0]), int(size[1])) if size else None,
            batch_size=int(batch) if batch is not None and int(batch) > 0 else None,
            trt_plugin=bool(data.get("trt_plugin", False)),
            quantization=dict(quantization) if quantization else None,
            source=str(data.get("source") or data.get("source_checkpoint") or ""),
        )
    # any wrong shape of value: RuntimeError is a tensor's truth value, KeyError a mapping indexed by position
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{where}: invalid model card entry: {err}") from None
    if len(names) > num_classes:
        raise CheckpointError(
            f"{where}: {len(names)} class names for num_classes={num_classes}; class_names[i] must name logit i"
        )
    return card


def legacy_checkpoint_card(meta: Mapping[str, Any], quantization: Any, where: str) -> ModelCard:
    """The card of a checkpoint written before cards existed: preprocessing from its stored spec."""
    spec = meta.get("spec") if isinstance(meta.get("spec"), Mapping) else {}
    aug = ((spec or {}).get("dataset") or {}).get("augmentation") or {}
    parts = dict(meta)
    parts.update(
        mean=aug.get("input_mean"),
        std=aug.get("input_std"),
        shortest_side=aug.get("test_random_resize"),
        max_size=aug.get("random_resize_max_size"),
        quantization=quantization,
    )
    return card_from_parts(parts, where)


# -------------------------------------------------------------------------------- the spec's say


# card attribute -> (spec section path, field) that may set it
_SPEC_FIELDS: dict[str, tuple[str, str]] = {
    "num_select": ("model", "num_select"),
    "mean": ("dataset.augmentation", "input_mean"),
    "std": ("dataset.augmentation", "input_std"),
    "shortest_side": ("dataset.augmentation", "test_random_resize"),
    "max_size": ("dataset.augmentation", "random_resize_max_size"),
}


def _section(spec: BaseModel, path: str) -> BaseModel:
    node: Any = spec
    for part in path.split("."):
        node = getattr(node, part)
    return node


def card_for_spec(card: ModelCard, spec: Spec, action: str | None = None) -> ModelCard:
    """The card with the spec's post-processing and preprocessing where the spec sets them.

    A field takes the spec's value only when the spec file or an override writes it (a default does not
    count); one warning line names each field whose value then differs from the card's, with both values.
    ``<action>.input_width``/``input_height`` (both set) give the input size of an artefact that has none;
    an artefact with a fixed size keeps it (it cannot run at another), with a warning when the spec differs.

    Args:
        card: the artefact's card.
        spec: the validated spec.
        action: ``evaluate`` or ``inference`` for their input size fields; None: no input size fields.

    Returns:
        The card the action runs with.
    """
    changes: dict[str, Any] = {}
    differing: list[str] = []
    for attr, (path, name) in _SPEC_FIELDS.items():
        section = _section(spec, path)
        if name not in section.model_fields_set:  # written in the file, by an override or by assignment
            continue
        value = getattr(section, name)
        value = _triple(value) if attr in ("mean", "std") else int(value)
        if value != getattr(card, attr):
            differing.append(f"{path}.{name} spec={_show(value)} model={_show(getattr(card, attr))}")
            changes[attr] = value
    section = getattr(spec, action, None) if action else None
    width, height = getattr(section, "input_width", None), getattr(section, "input_height", None)
    if width and height and (int(width), int(height)) != card.input_size:
        if card.input_size is None:
            changes["input_size"] = (int(width), int(height))
        else:
            logger.warning(
                "The model was exported for %dx%d input; %s.input_width/input_height %dx%d in the spec are ignored.",
                card.input_size[0], card.input_size[1], action, width, height,
            )  # fmt: skip
    if differing:
        logger.warning(
            "the spec sets values that differ from the model's; using the spec's: " + "; ".join(differing)
        )
    return card.evolve(**changes) if changes else card


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return repr(value)
