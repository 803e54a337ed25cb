"""JSON schema and commented YAML spec templates, generated from ``spec/sections.py``.

Nothing here restates a default, a range or a description: everything is read from the pydantic models,
so templates and schemas cannot drift from the loader.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from ddetr.spec.sections import Spec, field_meta

__all__ = ["ACTION_SECTIONS", "TOP_LEVEL_KEYS", "automl_fields", "json_schema", "template_yaml"]

# Top-level scalar keys every template carries.
TOP_LEVEL_KEYS: tuple[str, ...] = ("model_name", "encryption_key", "results_dir", "automl_policy")

# The sections each action reads.
ACTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("wandb", "model", "dataset", "train"),
    "evaluate": ("model", "dataset", "evaluate"),
    "inference": ("model", "dataset", "inference"),
    "export": ("model", "dataset", "export"),
    "quantize": ("model", "dataset", "quantize"),
    "gen_trt_engine": ("dataset", "gen_trt_engine"),
    "automl": ("wandb", "model", "dataset", "train", "automl"),
}


def json_schema() -> dict[str, Any]:
    """The JSON schema of the whole spec; ddetr's field metadata (automl, never_searched, inert, ...) is included."""
    return Spec.model_json_schema()


def automl_fields(model: type[BaseModel] = Spec, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Fields AutoML searches by default: ``{dotted path: metadata}``.

    The metadata holds ``automl_range`` (``[low, high]``, ``high`` may be ``None``), ``condition`` when any,
    and the validation bounds ``ge``/``gt``/``le``/``lt`` of the field.
    """
    found: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        meta = field_meta(model, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(automl_fields(annotation, prefix=f"{path}."))
            continue
        if not meta.get("automl"):
            continue
        entry = {k: v for k, v in meta.items() if k != "automl"}
        for constraint in info.metadata:
            for bound in ("ge", "gt", "le", "lt"):
                if getattr(constraint, bound, None) is not None:
                    entry[bound] = getattr(constraint, bound)
        entry["type"] = getattr(annotation, "__name__", str(annotation))
        entry["default"] = info.get_default(call_default_factory=True)
        found[path] = entry
    return found


def _flow(value: Any) -> str:
    """One value in YAML flow style, e.g. ``[{image_dir: '', json_file: ''}]``."""
    text = yaml.safe_dump({"k": value}, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[len("{k: ") : -1]


def _comment(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    meta = field_meta(model, name)
    parts = []
    if info.description:
        parts.append(info.description)
    bounds = []
    for constraint in info.metadata:
        for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(constraint, bound, None) is not None:
                bounds.append(f"{op} {getattr(constraint, bound)}")
    if bounds:
        parts.append("range " + ", ".join(bounds))
    if meta.get("inert"):
        parts.append("inert: accepted for TAO compatibility, no effect")
    if meta.get("automl"):
        parts.append("searched by AutoML")
    if meta.get("never_searched"):
        parts.append("never searched by AutoML")
    return "  # " + "; ".join(parts) if parts else ""


def _emit(model: BaseModel, indent: int, lines: list[str]) -> None:
    cls = type(model)
    pad = "  " * indent
    for name in cls.model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel) and not _is_leaf_source(name):
            lines.append(f"{pad}{name}:{_comment(cls, name)}")
            _emit(value, indent + 1, lines)
        else:
            dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else _jsonable(value)
            lines.append(f"{pad}{name}: {_flow(dumped)}{_comment(cls, name)}")


def _is_leaf_source(name: str) -> bool:
    # Data sources read best on one line, as in TAO's templates.
    return name.endswith("_data_sources")


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value


def template_yaml(action: str, spec: Spec | None = None) -> str:
    """A commented YAML spec for one action: the top-level keys and the sections the action uses.

    Args:
        action: One of ``ACTION_SECTIONS``.
        spec: Values to write; the defaults when ``None``.

    Returns:
        YAML text that :func:`ddetr.spec.load.load_spec` reads back to the same values.

    Raises:
        KeyError: unknown action.
    """
    sections = ACTION_SECTIONS[action]
    spec = spec if spec is not None else Spec()
    lines = [
        f"# ddetr {action} spec (generated from ddetr.spec.sections; docs/SPEC.md describes every field)."
    ]
    for key in TOP_LEVEL_KEYS:
        lines.append(f"{key}: {_flow(getattr(spec, key))}{_comment(Spec, key)}")
    for section in sections:
        lines.append("")
        lines.append(f"{section}:{_comment(Spec, section)}")
        _emit(getattr(spec, section), 1, lines)
    return "\n".join(lines) + "\n"
