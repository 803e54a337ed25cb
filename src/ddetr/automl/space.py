"""The AutoML search space, read from the field metadata of ``spec/sections.py``.

A field is searched by default when its metadata says ``automl``; its range is ``automl_range`` (or the field's
own bounds), narrowed by ``automl.range_override``, and its ``condition`` (``"<= num_queries and < num_queries
* num_classes"``, ``"> train_random_crop_min"``, ``"> 0"``) becomes a bound that depends on the values already
chosen for the trial. Parameters are suggested in dependency order, so a sampled trial never breaks a
condition; when a condition leaves no value at all, :class:`ConstraintViolation` is raised and the trial is
never started.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ddetr.errors import SpecError
from ddetr.spec.load import validate_spec
from ddetr.spec.rules import check_rules
from ddetr.spec.sections import AutomlSection, Spec, field_meta

__all__ = [
    "ConstraintViolation",
    "Param",
    "SearchSpace",
    "apply_values",
    "build_space",
    "default_hyperparameters",
    "searchable_fields",
    "violations",
]

# Fields a user may add to automl.hyperparameters beyond the default ones: scalar fields under these prefixes.
_EXTRA_PREFIXES = ("model.", "dataset.augmentation.", "train.optim.")
_EXTRA_FIELDS = ("dataset.batch_size", "train.clip_grad_norm")
# An open upper end of a search range (``automl_range=(1, None)``) becomes this multiple of the spec's value.
OPEN_END_FACTOR = 4
# A float range starting at 0 with a "> 0" condition samples log-uniformly when the spec's value sits in the
# range's lowest 1/LOG_SCALE_RATIO; its low end becomes high * LOW_END_FRACTION (log) or high * 1e-3 (linear).
LOG_SCALE_RATIO = 20
LOW_END_FRACTION = 1e-4

Kind = Literal["int", "float", "categorical"]


class ConstraintViolation(Exception):
    """A trial's values cannot satisfy a field's condition; the trial must not be started."""


@dataclass(frozen=True)
class FieldSpec:
    """One spec field as AutoML sees it: its kind, its own bounds and its metadata."""

    path: str
    kind: Kind
    choices: tuple[Any, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def bounds_text(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.le is not None:
            parts.append(f"<= {self.le}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        return " and ".join(parts) or "any value"

    def accepts(self, value: Any) -> bool:
        """True when ``value`` has the field's type and lies within its own bounds."""
        if self.kind == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def _kind(annotation: Any) -> tuple[Kind, tuple[Any, ...]] | None:
    if annotation is bool:
        return "categorical", (False, True)
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    if typing.get_origin(annotation) is Literal:
        return "categorical", tuple(typing.get_args(annotation))
    return None


def _field_spec(path: str, info: FieldInfo, meta: dict[str, Any]) -> FieldSpec | None:
    kind = _kind(info.annotation)
    if kind is None:
        return None
    bounds: dict[str, float] = {}
    for item in info.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(item, attr, None) is not None:
                bounds[attr] = getattr(item, attr)
    return FieldSpec(path=path, kind=kind[0], choices=kind[1], meta=meta, **bounds)


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo, dict[str, Any]]]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann is not AutomlSection:
                yield from _walk(ann, f"{path}.")
        elif prefix:
            yield path, info, field_meta(model, name)


@functools.cache
def all_fields() -> dict[str, tuple[FieldInfo, dict[str, Any]]]:
    """Every leaf field of the spec's sections, by dotted path (do not modify the returned mapping)."""
    return {path: (info, meta) for path, info, meta in _walk(Spec)}


@functools.cache
def _scalar_fields() -> tuple[str, ...]:
    return tuple(p for p, (info, _meta) in all_fields().items() if _kind(info.annotation))


@functools.cache
def _conditions() -> tuple[tuple[str, tuple[Bound, ...]], ...]:
    return tuple(
        (path, tuple(parse_condition(path, str(meta.get("condition", "")))))
        for path, (_info, meta) in all_fields().items()
        if meta.get("condition")
    )


def searchable_fields() -> dict[str, FieldSpec]:
    """Fields ``automl.hyperparameters`` may name: the default ones plus other scalar tuning fields."""
    out: dict[str, FieldSpec] = {}
    for path, (info, meta) in all_fields().items():
        if meta.get("never_searched") or meta.get("inert"):  # field metadata, spec/sections.py
            continue
        if not (meta.get("automl") or path.startswith(_EXTRA_PREFIXES) or path in _EXTRA_FIELDS):
            continue
        spec = _field_spec(path, info, meta)
        if spec is not None:
            out[path] = spec
    return out


def default_hyperparameters() -> list[str]:
    """The fields searched when ``automl.hyperparameters`` is empty (those marked ``automl``)."""
    return [p for p, f in searchable_fields().items() if f.meta.get("automl")]


# ------------------------------------------------------------------------------------------ conditions

_TERM = re.compile(r"^\s*(<=|>=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Bound:
    """One term of a condition: ``op`` and a product of names and numbers (``num_queries * num_classes``)."""

    op: str
    factors: tuple[str | float, ...]

    def names(self) -> list[str]:
        return [f for f in self.factors if isinstance(f, str)]

    def evaluate(self, values: Mapping[str, Any]) -> float:
        result = 1.0
        for f in self.factors:
            result *= float(values[f]) if isinstance(f, str) else f
        return result

    def holds(self, value: float, values: Mapping[str, Any]) -> bool:
        limit = self.evaluate(values)
        return {"<": value < limit, "<=": value <= limit, ">": value > limit, ">=": value >= limit}[self.op]

    def text(self) -> str:
        return f"{self.op} " + " * ".join(str(f) for f in self.factors)


def _resolve_name(name: str, owner_path: str, leaves: Mapping[str, list[str]]) -> str:
    sibling = owner_path.rsplit(".", 1)[0] + "." + name
    if sibling in all_fields():
        return sibling
    found = leaves.get(name, [])
    if len(found) != 1:
        raise ValueError(f"condition of {owner_path}: name {name!r} matches {found or 'no field'}")
    return found[0]


def parse_condition(path: str, condition: str) -> list[Bound]:
    """Parse a metadata condition into bounds whose names are dotted field paths."""
    if not condition.strip():
        return []
    leaves: dict[str, list[str]] = {}
    for p in all_fields():
        leaves.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    bounds = []
    for term in condition.split(" and "):
        match = _TERM.match(term)
        if match is None:
            raise ValueError(f"condition of {path}: cannot read {term!r}")
        factors: list[str | float] = []
        for token in match.group(2).split("*"):
            token = token.strip()
            try:
                factors.append(float(token))
            except ValueError:
                factors.append(_resolve_name(token, path, leaves))
        bounds.append(Bound(match.group(1), tuple(factors)))
    return bounds


# -------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One searched field: a numeric range or a list of choices, plus the bounds its condition adds."""

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    bounds: tuple[Bound, ...] = ()

    def depends_on(self) -> set[str]:
        return {n for b in self.bounds for n in b.names()}

    def suggest(self, trial: Any, values: Mapping[str, Any]) -> Any:
        """Suggest this parameter's value through an Optuna trial, within the bounds ``values`` imply.

        Raises:
            ConstraintViolation: the bounds leave no admissible value.
        """
        if self.choices:
            allowed = [c for c in self.choices if self._admits(c, values)]
            if not allowed:
                raise ConstraintViolation(
                    f"{self.name}: no choice of {list(self.choices)} is {self._why(values)}"
                )
            return trial.suggest_categorical(self.name, allowed)
        low, high = self._narrow(values)
        if low > high:
            raise ConstraintViolation(
                f"{self.name}: no value in [{self.low}, {self.high}] is {self._why(values)}"
            )
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high), log=self.log)
        return trial.suggest_float(self.name, low, high, log=self.log)

    def _admits(self, value: Any, values: Mapping[str, Any]) -> bool:
        return all(b.holds(value, values) for b in self.bounds) if self.kind != "categorical" else True

    def _why(self, values: Mapping[str, Any]) -> str:
        shown = ", ".join(f"{b.text()} (= {b.evaluate(values):g})" for b in self.bounds)
        return shown or "allowed"

    def _narrow(self, values: Mapping[str, Any]) -> tuple[float, float]:
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        for b in self.bounds:
            limit = b.evaluate(values)
            if self.kind == "int":
                new = {"<": math.ceil(limit) - 1, "<=": math.floor(limit), ">": math.floor(limit) + 1}.get(
                    b.op, math.ceil(limit)
                )
            else:
                new = {"<": math.nextafter(limit, -math.inf), ">": math.nextafter(limit, math.inf)}.get(
                    b.op, limit
                )
            if b.op in ("<", "<="):
                high = min(high, new)
            else:
                low = max(low, new)
        return low, high


@dataclass
class SearchSpace:
    """The searched parameters in dependency order (a parameter comes after those its condition names)."""

    params: list[Param]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def suggest(self, trial: Any, base: Spec) -> dict[str, Any]:
        """All parameter values of one trial, each within the bounds the earlier values imply.

        Raises:
            ConstraintViolation: some parameter has no admissible value.
        """
        values = _current_values(base)
        chosen: dict[str, Any] = {}
        for param in self.params:
            chosen[param.name] = values[param.name] = param.suggest(trial, values)
        return chosen

    def grid(self) -> dict[str, list[Any]]:
        """Choices per parameter for ``algorithm: grid``."""
        return {p.name: list(p.choices) for p in self.params}


def _current_values(spec: Spec) -> dict[str, Any]:
    return {path: spec.get(path) for path in _scalar_fields()}


def _get_override(overrides: Mapping[str, Any], path: str) -> Any:
    if path in overrides:
        return overrides[path]
    node: Any = overrides  # also accept nested mappings: {train: {optim: {lr: [..]}}}
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _range_from_override(fs: FieldSpec, raw: Any, grid: bool = False) -> dict[str, Any]:
    where = f"automl.range_override.{fs.path}"
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"min", "max", "choices", "log"}
        if unknown:
            raise SpecError(f"{where}: unknown keys {sorted(unknown)}; use min, max, choices or log")
        out: dict[str, Any] = {}
        if "choices" in raw:
            out["choices"] = raw["choices"]
        if "min" in raw or "max" in raw:
            out["low"], out["high"] = raw.get("min"), raw.get("max")
        if "log" in raw:
            out["log"] = bool(raw["log"])
        return out
    if isinstance(raw, (list, tuple)):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if fs.kind != "categorical" and len(raw) == 2 and numeric and not grid:
            return {"low": raw[0], "high": raw[1]}
        return {"choices": list(raw)}
    raise SpecError(
        f"{where}: expected [min, max], a list of choices or {{min, max, choices, log}}, got {raw!r}"
    )


def _build_param(fs: FieldSpec, spec: Spec, override: Any, grid: bool) -> Param:
    where = f"automl.range_override.{fs.path}"
    given = _range_from_override(fs, override, grid) if override is not None else {}
    bounds = tuple(parse_condition(fs.path, str(fs.meta.get("condition", ""))))
    if "choices" in given or fs.kind == "categorical":
        choices = list(given.get("choices", fs.choices))
        bad = [c for c in choices if not fs.accepts(c)]
        if not choices or bad:
            raise SpecError(
                f"{where}: choices {bad or choices} are not valid values of {fs.path} ({fs.kind}, {fs.bounds_text()})"
            )
        return Param(fs.path, fs.kind, choices=tuple(choices), bounds=bounds)
    if grid:
        raise SpecError(
            f"automl.algorithm=grid needs the values of {fs.path}: give them as {where}=[v1, v2, ...] "
            f"(a list of choices) or leave {fs.path} out of automl.hyperparameters"
        )
    meta_range = fs.meta.get("automl_range")
    own_low, own_high = fs.ge, fs.le
    if own_low is None and fs.gt is not None:  # exclusive bounds: the next representable value inside
        own_low = fs.gt + 1 if fs.kind == "int" else math.nextafter(fs.gt, math.inf)
    if own_high is None and fs.lt is not None:
        own_high = fs.lt - 1 if fs.kind == "int" else math.nextafter(fs.lt, -math.inf)
    low = given.get("low", meta_range[0] if meta_range else own_low)
    high = given.get("high", meta_range[1] if meta_range else own_high)
    log = bool(given.get("log", False))
    current = spec.get(fs.path)
    if high is None and meta_range:
        high = current * OPEN_END_FACTOR
        if fs.le is not None:
            high = min(high, fs.le)
    if low is None or high is None:
        raise SpecError(
            f"{fs.path} has no bounded range ({fs.bounds_text()}); give one as {where}=[min, max]"
        )
    for name, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: {name} must be a number, got {value!r}")
    if "low" in given or "high" in given:
        outside = [v for v in (low, high) if not fs.accepts(v)]
        if outside:
            raise SpecError(
                f"{where}: [{low}, {high}] is outside the range of {fs.path} ({fs.bounds_text()}); "
                f"give a range within it"
            )
    if low > high:
        raise SpecError(f"{where}: min {low} is larger than max {high}")
    positive = fs.gt == 0 or any(b.op == ">" and b.factors == (0.0,) for b in bounds)
    if fs.kind == "float" and positive and low <= 0:
        log = log or (isinstance(current, (int, float)) and 0 < current <= high / LOG_SCALE_RATIO)
        low = high * (LOW_END_FRACTION if log else 1e-3)
    if log and low <= 0:
        raise SpecError(f"{where}: a log-scale range needs min > 0, got {low}")
    if fs.kind == "int":
        low, high = math.ceil(low), math.floor(high)
    return Param(fs.path, fs.kind, low=low, high=high, log=log, bounds=bounds)


def _order(params: list[Param]) -> list[Param]:
    """Dependency order; a parameter whose bound names a searched one comes after it."""
    by_name = {p.name: p for p in params}
    done: list[Param] = []
    seen: set[str] = set()

    def visit(p: Param, stack: tuple[str, ...]) -> None:
        if p.name in seen:
            return
        if p.name in stack:
            raise SpecError(f"automl: circular conditions between {', '.join(stack)}")
        for dep in sorted(p.depends_on()):
            if dep in by_name:
                visit(by_name[dep], (*stack, p.name))
        seen.add(p.name)
        done.append(p)

    for p in params:
        visit(p, ())
    return done


def _cap_partners(params: list[Param]) -> list[Param]:
    """``a > b`` with both searched caps b's range below a's maximum (and ``a < b`` lifts b's minimum)."""
    by_name = {p.name: p for p in params}
    for p in params:
        for b in p.bounds:
            if len(b.factors) != 1 or b.factors[0] not in by_name or p.choices:
                continue
            q = by_name[b.factors[0]]  # type: ignore[index]
            if q.choices:
                continue
            step = 1 if q.kind == "int" else 0
            if b.op in (">", ">=") and q.high is not None and p.high is not None:
                cap = p.high - (step if b.op == ">" else 0)
                by_name[q.name] = q = Param(**{**q.__dict__, "high": max(q.low, min(q.high, cap))})
            elif b.op in ("<", "<=") and q.low is not None and p.low is not None:
                floor_ = p.low + (step if b.op == "<" else 0)
                by_name[q.name] = Param(**{**q.__dict__, "low": min(q.high, max(q.low, floor_))})
    return [by_name[p.name] for p in params]


def build_space(spec: Spec) -> SearchSpace:
    """The search space the spec's ``automl`` section describes.

    Raises:
        SpecError: a hyperparameter that is not a searchable field, a range outside the field's own bounds,
            an override for a field that is not searched, or (grid) a field without a list of values.
    """
    automl = spec.automl
    fields = searchable_fields()
    grid = automl.algorithm == "grid"
    names = list(automl.hyperparameters)
    overrides = dict(automl.range_override)
    if not names:
        names = [p for p in overrides if p in fields] if grid else default_hyperparameters()
    for name in names:
        if name not in fields:
            meta = all_fields()[name][1] if name in all_fields() else None
            reason = f": {meta['never_searched']}" if meta and meta.get("never_searched") else ""
            known = "it does not exist" if meta is None else f"it cannot be searched{reason}"
            raise SpecError(
                f"automl.hyperparameters: {name!r} is not a searchable field ({known}); searchable fields "
                f"are listed in docs/automl.md, e.g. {', '.join(default_hyperparameters()[:4])}"
            )
    for key in overrides:
        if key not in names and not any(n.startswith(f"{key}.") for n in names):
            raise SpecError(
                f"automl.range_override.{key}: {key} is not searched; add it to automl.hyperparameters "
                f"or remove the override"
            )
    if len(set(names)) != len(names):
        raise SpecError(f"automl.hyperparameters: a field is named twice in {names}")
    if not names:
        raise SpecError(
            "automl: nothing to search; name fields in automl.hyperparameters (grid: give their values "
            "in automl.range_override)"
        )
    params = [_build_param(fields[n], spec, _get_override(overrides, n), grid) for n in names]
    return SearchSpace(_order(_cap_partners(params)))


# ------------------------------------------------------------------------------------ applying, checking


def apply_values(base: Spec, values: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Spec:
    """A validated copy of ``base`` with dotted ``values`` (and ``extra``) set.

    Raises:
        SpecError: the result breaks a field's range or a cross-field rule.
    """
    data = base.model_dump(mode="json")
    for path, value in {**values, **(extra or {})}.items():
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    spec = validate_spec(data)
    check_rules(spec, "train")  # every trial trains
    return spec


def violations(spec: Spec) -> list[str]:
    """Every rule of the search the spec breaks: the conditions of automl-marked fields and the loader's rules."""
    values = _current_values(spec)
    found = []
    for path, bounds in _conditions():
        for b in bounds:
            if not b.holds(values[path], values):
                found.append(f"{path}={values[path]} breaks {b.text()} (= {b.evaluate(values):g})")
    try:
        check_rules(spec, "train")
    except SpecError as exc:
        found.append(str(exc))
    return found
