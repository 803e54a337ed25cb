"""Experiment spec loading: YAML file + dotted ``key=value`` overrides -> a validated :class:`Spec`.

Every problem is reported as a one-line :class:`~ddetr.errors.SpecError` before any work starts: a missing
file, an unknown key (with the closest valid name), a wrong type, a value out of range (with the allowed
range), and the cross-field rules of docs/SPEC.md (``ddetr.spec.rules``). Inert fields set to non-default values
are named in one warning line.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ddetr.errors import SpecError
from ddetr.fileio import atomic_write_text
from ddetr.spec.rules import TRAINING_ACTIONS, check_rules
from ddetr.spec.sections import ModelSection, Spec, field_meta

logger = logging.getLogger(__name__)

__all__ = [
    "SHORTHAND_KEYS",
    "apply_shorthand_keys",
    "check_rules",
    "dump_spec",
    "inert_fields_set",
    "load_spec",
    "merge_model_from_checkpoint",
    "resolve_interpolations",
    "set_value",
]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 and OmegaConf do."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


#: Bounds on what a spec may hold once YAML aliases are expanded: a real spec has a few hundred values and a
#: nesting depth below 10, so these only stop alias bombs ("billion laughs") and self-referring aliases.
MAX_SPEC_VALUES = 100_000
MAX_SPEC_DEPTH = 64
#: Bound on ``${...}`` resolution: lookups made and characters produced, against references that multiply.
MAX_INTERPOLATION_STEPS = 100_000
MAX_INTERPOLATED_CHARS = 1_000_000


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text`` (quotes ignored: an upper bound is all that is needed)."""
    depth = deepest = 0
    for char in re.sub(r"[^\[\]{}]", "", text):
        depth = depth + 1 if char in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _yaml_load(text: str, source: str) -> Any:
    # PyYAML's scanner slows down quadratically with open flow brackets ('[' * 2000 takes seconds) before it
    # fails with RecursionError: refuse deep nesting before parsing
    if _flow_depth(text) > MAX_SPEC_DEPTH:
        raise SpecError(f"{source}: not a usable spec: brackets nested more than {MAX_SPEC_DEPTH} deep")
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise SpecError(f"{source}: not a usable spec: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: not valid YAML{where}: {problem}") from None


# ----------------------------------------------------------------------------------------------- loading


KEY_FIELD = "encryption_key"  # taken verbatim (never YAML-parsed, never interpolated) and never shown

# Top-level shorthand keys of TAO's skill bank (and their dotted fields), accepted in a file or as overrides.
SHORTHAND_KEYS: dict[str, str] = {
    "num_epochs": "train.num_epochs",
    "batch_size": "dataset.batch_size",
    "learning_rate": "train.optim.lr",
    "trt_data_type": "gen_trt_engine.tensorrt.data_type",
}


def apply_shorthand_keys(data: dict[str, Any]) -> dict[str, str]:
    """Move top-level shorthand keys (:data:`SHORTHAND_KEYS`) to their fields in the raw spec mapping in place.

    Returns:
        ``{shorthand: dotted field}`` of the keys that were moved (the caller logs one line).
    """
    moved: dict[str, str] = {}
    for short, dotted in SHORTHAND_KEYS.items():
        if short in data:
            set_value(data, dotted, data.pop(short), f"{short}=...")
            moved[short] = dotted
    return moved


def _check_key_type(data: dict[str, Any], source: str | None) -> None:
    """A key that is not a string is refused without showing it (YAML would have changed or dropped it)."""
    if KEY_FIELD not in data or isinstance(data[KEY_FIELD], str):
        return
    value = data[KEY_FIELD]
    kind = "null (no value)" if value is None else f"a {type(value).__name__}"
    if source is None:
        raise SpecError(f"{KEY_FIELD} must be a string, got {kind} (the value is not shown)")
    raise SpecError(
        f"{source}: {KEY_FIELD} must be a quoted string: YAML read the unquoted value as {kind}; "
        f"write {KEY_FIELD}: \"...\" (or '' for no encryption). The value is not shown."
    )


def load_spec(
    path: str | Path | Spec | None,
    overrides: Sequence[str | tuple[str, Any]] = (),
    action: str | None = None,
) -> Spec:
    """Read, override and validate an experiment spec.

    Args:
        path: The YAML spec file, a :class:`Spec` to start from (validated again with the overrides), or
            ``None`` for the defaults.
        overrides: Dotted ``key=value`` strings applied after the file, values parsed as YAML
            (``train.optim.lr_steps=[30,45]``, ``dataset.train_data_sources=[{image_dir: a, json_file: b}]``)
            except ``encryption_key=KEY``, whose text is the key verbatim, or ``(dotted key, value)`` pairs
            whose value is used as it is (the Python API's keywords).
        action: the action the spec is for. ``train``/``automl`` and ``None`` (unknown) check every rule of the
            model section (they build the model from it: ``ddetr.spec.rules.check_model_section``); the other
            actions take the architecture from a checkpoint and check only the model rules every action keeps.
            The training-only warnings (``lr_steps`` that never decay) are logged for ``train``/``automl`` and
            ``None``, not for evaluate, export, ...

    Returns:
        The validated spec.

    Raises:
        SpecError: one line naming the file, key or field, the value and what is allowed.
    """
    data: dict[str, Any] = {}
    if isinstance(path, Spec):
        # only what was written: a default left untouched stays "not set" (the model card rule depends on it)
        data = explicit_fields(path)
    elif path is not None:
        p = Path(path)
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "not found"
            raise SpecError(f"experiment spec file {str(p)!r} {what}; pass an existing YAML file with -e")
        loaded = _yaml_load(_read_spec_text(p), str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpecError(f"{p}: the spec must be a YAML mapping of sections, got {type(loaded).__name__}")
        check_values(loaded, str(p))
        _check_key_type(loaded, str(p))
        data = loaded
    for item in overrides:
        if isinstance(item, tuple):
            check_values(item[1], f"{item[0]}", prefix=item[0])
            set_value(data, *item)
        else:
            apply_override(data, item)
    _check_key_type(data, None)
    moved = apply_shorthand_keys(data)
    if moved:
        logger.info("shorthand keys: " + ", ".join(f"{k} -> {v}" for k, v in moved.items()))
    data = resolve_interpolations(data)
    spec = validate_spec(data)
    warnings = check_rules(spec, action)
    if action in (None, *TRAINING_ACTIONS):
        for warning in warnings:
            logger.warning(warning)
    inert = inert_fields_set(spec)
    if inert:
        shown = ", ".join(f"{k}={v!r}" for k, v in inert.items())
        logger.warning(f"inert fields (accepted for TAO compatibility, no effect here): {shown}")
    return spec


def _read_spec_text(path: Path) -> str:
    """The spec file's text; bytes that are not UTF-8 are one line naming the first bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"experiment spec file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the spec as UTF-8"
        ) from None


def check_values(value: Any, source: str, prefix: str = "") -> None:
    """Refuse what YAML can build but a spec never holds, before anything walks it.

    A container that contains itself (``a: &a [*a]``), more than :data:`MAX_SPEC_VALUES` values once aliases
    are expanded (nested anchors, "billion laughs"), nesting deeper than :data:`MAX_SPEC_DEPTH`, and a
    non-finite number (``.inf``, ``.nan``) anywhere. The walk stops at the first problem, so it is bounded by
    :data:`MAX_SPEC_VALUES` steps whatever the input.

    Args:
        value: the loaded YAML (or one override's value).
        source: the file or override, for messages.
        prefix: the dotted key ``value`` sits at (an override's key; empty for a whole file).

    Raises:
        SpecError: one line naming the source and, for a number, the dotted field.
    """
    seen = 0
    active: set[int] = set()

    def walk(node: Any, where: str, depth: int) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise SpecError(
                f"{source}: more than {MAX_SPEC_VALUES} values once YAML aliases are expanded "
                "(nested anchors, an 'alias bomb'?); a spec holds a few hundred"
            )
        if isinstance(node, float) and not math.isfinite(node):
            field = where or "the value"
            raise SpecError(
                f"{field}: {node} is not a finite number; write a finite value. "
                f"Fix it in the spec or pass {where.split('[', 1)[0] or 'KEY'}=<value>."
            )
        if not isinstance(node, (dict, list)):
            return
        if id(node) in active:
            raise SpecError(
                f"{source}: {where or 'the spec'} contains itself (a YAML alias inside its own anchor)"
            )
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(
                f"{source}: {where or 'the spec'} is nested more than {MAX_SPEC_DEPTH} levels deep"
            )
        active.add(id(node))
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{where}.{key}" if where else str(key), depth + 1)
        else:
            for index, child in enumerate(node):
                walk(child, f"{where}[{index}]", depth + 1)
        active.discard(id(node))

    walk(value, prefix, 0)


def explicit_fields(section: BaseModel) -> dict[str, Any]:
    """The fields of ``section`` that were written (by a file, an override or an assignment), nested sections
    included when any field inside them was, as plain data; defaults left untouched are not in it."""
    out: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            inner = explicit_fields(value)
            if inner or name in section.model_fields_set:
                out[name] = inner
        elif name in section.model_fields_set:
            out[name] = section.model_dump(mode="python", include={name})[name]
    return out


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to the raw spec mapping in place.

    ``encryption_key=KEY`` is the exception: ``KEY`` is taken verbatim as a string (``null``, ``~``,
    ``20240101`` and ``abc #def`` are keys like any other).

    Raises:
        SpecError: no ``=``, an empty key, or a path through a value that is not a section.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"override {item!r} is not key=value; write e.g. train.num_epochs=20")
    if key == KEY_FIELD:
        set_value(data, key, raw, f"{KEY_FIELD}=...")
        return
    value = _yaml_load(raw, f"override {key}") if raw.strip() else ""
    check_values(value, f"override {key}", prefix=key)
    set_value(data, key, value, item)


def set_value(data: dict[str, Any], key: str, value: Any, item: str | None = None) -> None:
    """Set the dotted ``key`` to ``value`` in the raw (unvalidated) spec mapping in place.

    Args:
        data: The raw spec mapping.
        key: A dotted field name, e.g. ``train.num_epochs``.
        value: The value, used as it is (validation comes later, with the whole spec).
        item: The override as the user wrote it, for messages (default ``key=value``).

    Raises:
        SpecError: an empty key or part, or a path through a value that is not a section.
    """
    item = item if item is not None else f"{key}={value!r}"
    parts = key.split(".")
    if any(not p for p in parts):
        raise SpecError(f"override {item!r}: {key!r} is not a dotted field name")
    node = data
    section: type[BaseModel] | None = Spec
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        info = section.model_fields.get(part) if section is not None else None
        section = _unwrap_model(info.annotation) if info is not None else None
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict) or (info is not None and section is None):
            raise SpecError(f"override {item!r}: {here} is a value, not a section, so {key} does not exist")
        node = child
    node[parts[-1]] = value


_INTERP = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _lookup(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return True, node
    try:
        return True, Spec().get(dotted)
    except SpecError:
        return False, None


def resolve_interpolations(data: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf-style ``${dotted.key}`` references in string values.

    A value that is exactly ``${key}`` takes the referenced value with its type; otherwise the reference is
    replaced by its text. References resolve against the spec itself (then the defaults). Top-level keys
    that are not spec fields but are referenced (variables such as ``data_root``) are removed afterwards.

    Raises:
        SpecError: a reference names no key, or references loop.
    """
    used: set[str] = set()
    steps = 0

    def resolve(value: Any, where: str, depth: int = 0) -> Any:
        nonlocal steps
        steps += 1
        if steps > MAX_INTERPOLATION_STEPS:
            raise SpecError(
                f"{where or 'spec'}: ${{...}} references expand to more than {MAX_INTERPOLATION_STEPS} values; "
                "a spec holds a few hundred"
            )
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else str(k), depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if depth > 10:
            raise SpecError(f"{where}: ${{...}} references loop ({value!r})")

        def target(name: str) -> Any:
            found, ref = _lookup(data, name)
            if not found:
                raise SpecError(f"{where}: {value!r} refers to {name}, which is not in the spec")
            used.add(name.split(".")[0])
            return resolve(ref, where, depth + 1)

        whole = _INTERP.fullmatch(value)
        if whole:
            return target(whole.group(1))
        produced = len(value)

        def substitute(match: re.Match[str]) -> str:
            nonlocal produced
            text = str(target(match.group(1)))
            produced += len(text)
            if produced > MAX_INTERPOLATED_CHARS:
                raise SpecError(
                    f"{where}: ${{...}} references expand to more than {MAX_INTERPOLATED_CHARS} characters"
                )
            return text

        return _INTERP.sub(substitute, value)

    # the key is verbatim: a "${" in it is part of the key, not a reference
    resolved = resolve({k: v for k, v in data.items() if k != KEY_FIELD}, "")
    if KEY_FIELD in data:
        resolved[KEY_FIELD] = data[KEY_FIELD]
    for name in used:
        if name not in Spec.model_fields:
            resolved.pop(name, None)
    return resolved


def validate_spec(data: dict[str, Any]) -> Spec:
    """Validate a raw spec mapping; pydantic's errors become one-line SpecErrors."""
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        messages = _format_errors(exc.errors(include_url=False))
        first = messages[0]
        if len(messages) > 1:
            first += f" (and {len(messages) - 1} more: " + " | ".join(messages[1:4])
            first += " | ...)" if len(messages) > 4 else ")"
        raise SpecError(first) from None


# ------------------------------------------------------------------------------------ error formatting


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``list[X]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _resolve(loc: Sequence[Any]) -> tuple[str, type[BaseModel] | None, str | None, type[BaseModel]]:
    """Turn a pydantic error location into (dotted path, owning model, field name, last model walked).

    Union-member tags (``'list[str]'``) and other non-field parts are dropped; list indices become ``[i]``.
    """
    model: type[BaseModel] | None = Spec
    last_model: type[BaseModel] = Spec
    owner: type[BaseModel] | None = None
    field: str | None = None
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if model is not None and part in model.model_fields:
            owner, field = model, part
            path = f"{path}.{part}" if path else part
            last_model = model
            model = _unwrap_model(model.model_fields[part].annotation)
            if model is not None:
                last_model = model
        elif model is not None and path and not part.startswith(("list[", "dict[", "function")):
            # An unknown key inside a section: keep it in the path.
            path = f"{path}.{part}"
            owner, field = None, part
        elif model is Spec and not path:
            path, owner, field = part, None, part
    return path or "spec", owner, field, last_model


def _constraint_text(owner: type[BaseModel] | None, field: str | None) -> str:
    """The allowed range of a field as text, e.g. ``between 1 and 5`` or ``>= 1``."""
    if owner is None or field is None:
        return ""
    lo = hi = None
    lo_op = hi_op = ""
    for meta in owner.model_fields[field].metadata:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(meta, attr, None) is not None:
                lo, lo_op = getattr(meta, attr), op
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                hi, hi_op = getattr(meta, attr), op
    if lo is not None and hi is not None:
        if lo_op == ">=" and hi_op == "<=":
            return f"between {lo} and {hi}"
        return f"{lo_op} {lo} and {hi_op} {hi}"
    if lo is not None:
        return f"{lo_op} {lo}"
    if hi is not None:
        return f"{hi_op} {hi}"
    return ""


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping of fields",
}


def _format_errors(errors: list[dict[str, Any]]) -> list[str]:
    """One message per field: the members of a union (``list[str] | str``) are merged into one."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        by_path.setdefault(_resolve(err["loc"])[0], []).append(err)
    messages = []
    for path, errs in by_path.items():
        words = [_type_word(e["type"]) for e in errs]
        if len(errs) > 1 and all(words):
            value = errs[0].get("input")
            expected = " or ".join(dict.fromkeys(w for w in words if w))
            messages.append(
                f"{path}: expected {expected}, got {_show(value)} ({type(value).__name__}). " + _fix(path)
            )
        else:
            messages.append(_format_error(errs[0]))
    return messages


def _type_word(etype: str) -> str | None:
    return next((w for k, w in _TYPE_WORDS.items() if etype.startswith(k)), None)


def _fix(path: str) -> str:
    key = path.split("[", 1)[0]
    return f"Fix it in the spec or pass {key}=<value>."


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _format_error(err: dict[str, Any]) -> str:
    path, owner, field, section_model = _resolve(err["loc"])
    etype: str = err["type"]
    value = err.get("input")
    shown = _show(value)
    fix = _fix(path)
    if etype == "extra_forbidden":
        section = path.rsplit(".", 1)[0] if "." in path else "the top level"
        key = str(field)
        valid = list(section_model.model_fields) if "." in path else list(Spec.model_fields)
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
        where = f"section {section!r}" if "." in path else "the top level"
        return f"unknown key {key!r} in {where} ({path}); {hint}"
    if etype in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        allowed = "" if path.endswith("]") else _constraint_text(owner, field)
        if not allowed:  # a list item: the bound is the item type's, in the error's context
            ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
            allowed = " and ".join(
                f"{op} {v}" for k, op in ops.items() if (v := err.get("ctx", {}).get(k)) is not None
            )
        return f"{path}: {shown} is out of range, must be {allowed or err['msg'].lower()}. {fix}"
    if etype == "finite_number":
        return f"{path}: {shown} is not a finite number; write a finite value. {fix}"
    if etype == "too_short":
        need = err.get("ctx", {}).get("min_length", 1)
        return f"{path}: {shown} is too short, at least {need} item{'s' if need != 1 else ''} needed. {fix}"
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{path}: {shown} is not allowed, expected one of {expected}. {fix}"
    if etype == "string_pattern_mismatch":
        return f"{path}: {shown} has the wrong form ({_describe(owner, field)}). {fix}"
    word = _type_word(etype)
    if word is not None:
        return f"{path}: expected {word}, got {shown} ({type(value).__name__}). {fix}"
    return f"{path}: {err['msg']} (got {shown}). {fix}"


def _describe(owner: type[BaseModel] | None, field: str | None) -> str:
    if owner is None or field is None:
        return "see docs/SPEC.md"
    return owner.model_fields[field].description or "see docs/SPEC.md"


# ------------------------------------------------------------------------------------------- inert fields


def inert_fields_set(spec: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Inert fields whose value differs from their default, as ``{dotted path: value}``."""
    found: dict[str, Any] = {}
    cls = type(spec)
    for name, info in cls.model_fields.items():
        value = getattr(spec, name)
        path = f"{prefix}{name}"
        if field_meta(cls, name).get("inert"):
            default = info.get_default(call_default_factory=True)
            if value != default:
                found[path] = value.model_dump() if isinstance(value, BaseModel) else value
        elif isinstance(value, BaseModel):
            found.update(inert_fields_set(value, prefix=f"{path}."))
    return found


# -------------------------------------------------------------------------------------- writing, merging


def dump_spec(spec: Spec, path: str | Path) -> Path:
    """Write the resolved spec as YAML atomically (temporary file in the same folder, then rename).

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=110)
    return atomic_write_text(target, text)


def merge_model_from_checkpoint(spec_model: ModelSection, ckpt_model: dict[str, Any]) -> ModelSection:
    """The checkpoint's architecture with the spec's post-processing and loss fields.

    Architecture fields (``ModelSection.ARCHITECTURE_FIELDS``) come from the checkpoint, which is the truth
    about the weights; every other field comes from the spec. One warning line names each architecture
    field where the two differ, with both values.

    Args:
        spec_model: The ``model`` section of the current spec.
        ckpt_model: The ``model`` section stored in the checkpoint (a plain dict; unknown keys are ignored).

    Returns:
        The merged model section.

    Raises:
        SpecError: the checkpoint's model section has invalid values.
    """
    merged = spec_model.model_dump()
    differing: list[str] = []
    for name in ModelSection.ARCHITECTURE_FIELDS:
        if name not in ckpt_model:
            continue
        ckpt_value = ckpt_model[name]
        if isinstance(ckpt_value, tuple):
            ckpt_value = list(ckpt_value)
        if ckpt_value != merged[name]:
            differing.append(f"{name} spec={merged[name]!r} checkpoint={ckpt_value!r}")
        merged[name] = ckpt_value
    try:
        result = ModelSection.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SpecError(
            f"checkpoint model section: {where}: {err['msg']} (got {err.get('input')!r})"
        ) from None
    if differing:
        logger.warning(
            "the checkpoint's architecture differs from the spec's model section; using the checkpoint's: "
            + "; ".join(differing)
        )
    return result


def parse_overrides(items: Iterable[str]) -> list[str]:
    """Validate that every item looks like ``key=value`` (the CLI passes the rest through)."""
    out = []
    for item in items:
        if "=" not in item:
            raise SpecError(f"argument {item!r} is not key=value; write e.g. train.num_epochs=20")
        out.append(item)
    return out
