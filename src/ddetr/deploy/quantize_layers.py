"""``quantize.layers`` (TAO's layout), ``skip_names`` and ``keep_float``: which layers a quantizer may touch.

Shared by the ModelOpt back ends (:mod:`ddetr.deploy.quantize_modelopt`): :func:`parse_layers` checks the spec
entries, :func:`select_layers` applies them to a PyTorch model's ``Conv2d``/``Linear`` layers and
:func:`onnx_nodes_to_exclude` to an exported graph's Conv/MatMul/Gemm nodes (matched on their module path).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ddetr.errors import SpecError

__all__ = [
    "LayerRule",
    "layer_dtypes",
    "module_path",
    "name_matches",
    "onnx_nodes_to_exclude",
    "onnx_rules_check",
    "parse_layers",
    "select_layers",
]

QUANTIZABLE = (nn.Conv2d, nn.Linear)
ONNX_QUANTIZABLE = {"Conv": "Conv2d", "MatMul": "Linear", "Gemm": "Linear"}
DTYPES = ("int8", "native")
FP8_DTYPES = ("fp8_e4m3fn", "fp8_e5m2", "float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class LayerRule:
    """One ``quantize.layers`` entry: the layers it matches get int8 weights and/or int8 inputs.

    Attributes:
        pattern: ``module_name``: a module path pattern (``transformer.encoder.*``) or a class name
            (``Conv2d``, ``Linear``), shell-style wildcards.
        weights: int8 weights (``weights.dtype: int8``); False for ``native``.
        activations: int8 inputs (``activations.dtype: int8``); False for ``native``.
    """

    pattern: str
    weights: bool
    activations: bool


def _dtype(value: Any, where: str) -> bool:
    """True for int8, False for native (or not given)."""
    if value is None:
        return False
    if not isinstance(value, Mapping) or set(value) - {"dtype"}:
        raise SpecError(f"{where}: expected {{dtype: int8 | native}}, got {value!r}.")
    dtype = str(value.get("dtype", "native")).lower()
    if dtype in FP8_DTYPES:
        raise SpecError(
            f"{where}.dtype: {dtype} is not supported by ddetr's ModelOpt back ends (int8 on the CPU); use int8 or native."
        )
    if dtype not in DTYPES:
        raise SpecError(f"{where}.dtype: {dtype!r} is not a dtype; use int8 or native.")
    return dtype == "int8"


def parse_layers(layers: Sequence[Any], mode: str) -> list[LayerRule]:
    """Check ``quantize.layers`` (TAO's layout) and turn it into rules; empty means every layer.

    Each entry is ``{module_name: <pattern>, weights: {dtype: int8 | native}, activations: {dtype: ...}}`` (a
    missing ``weights``/``activations`` is native). A layer gets the dtypes of the last entry that matches it;
    with entries given, layers no entry matches stay float. Without entries every ``Conv2d``/``Linear`` gets int8
    weights, and int8 inputs in ``static_ptq``.

    Raises:
        SpecError: malformed entry, unknown dtype (fp8 included), or int8 activations in ``weight_only_ptq``.
    """
    if not layers:
        return [LayerRule("*", True, mode == "static_ptq")]
    rules = []
    for index, entry in enumerate(layers):
        where = f"quantize.layers[{index}]"
        if not isinstance(entry, Mapping) or not str(entry.get("module_name") or ""):
            raise SpecError(
                f"{where}: expected {{module_name: <pattern or class name>, weights: {{dtype: int8}}, "
                f"activations: {{dtype: int8}}}}, got {entry!r}."
            )
        unknown = sorted(set(entry) - {"module_name", "weights", "activations"})
        if unknown:
            raise SpecError(f"{where}: unknown keys {unknown}; known: module_name, weights, activations.")
        weights = _dtype(entry.get("weights"), f"{where}.weights")
        activations = _dtype(entry.get("activations"), f"{where}.activations")
        if activations and mode != "static_ptq":
            raise SpecError(
                f"{where}.activations.dtype: int8 activations need quantize.mode=static_ptq (weight_only_ptq keeps "
                "them float); set it to native or change the mode."
            )
        rules.append(LayerRule(str(entry["module_name"]), weights, activations))
    return rules


def name_matches(name: str, pattern: str) -> bool:
    """``skip_names`` / ``keep_float`` matching: a wildcard pattern matches the whole name, else a substring."""
    if not pattern:
        return False
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def layer_dtypes(
    name: str, classes: Sequence[str], rules: Sequence[LayerRule], keep_float: Sequence[str]
) -> tuple[bool, bool]:
    """``(int8 weights, int8 inputs)`` of the layer ``name`` whose class names are ``classes``."""
    if any(name_matches(name, p) for p in keep_float):
        return False, False
    dtypes = (False, False)
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule.pattern) or any(
            fnmatch.fnmatchcase(c, rule.pattern) for c in classes
        ):
            dtypes = (rule.weights, rule.activations)
    return dtypes


def select_layers(
    model: nn.Module, rules: Sequence[LayerRule], keep_float: Sequence[str]
) -> dict[str, tuple[bool, bool]]:
    """``{module name: (int8 weights, int8 inputs)}`` of the model's quantized ``Conv2d``/``Linear`` layers.

    Exactly those classes: ``nn.MultiheadAttention``'s output projection (a Linear subclass whose weight the
    attention reads directly) is left alone. A module reached by several names (shared heads) counts once.
    """
    chosen = {}
    for name, module in model.named_modules():
        if type(module) not in QUANTIZABLE:
            continue
        weights, activations = layer_dtypes(name, [type(module).__name__], rules, keep_float)
        if weights or activations:
            chosen[name] = (weights, activations)
    return chosen


def module_path(node_name: str) -> str:
    """The PyTorch module path of an exported node: ``/model/backbone/body/conv1/Conv`` -> ``backbone.body.conv1``."""
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts[:-1])


def onnx_rules_check(rules: Sequence[LayerRule]) -> None:
    """Raise SpecError for a rule that quantizes only the weights or only the inputs of a layer.

    ModelOpt's ONNX INT8 quantizes a node's weights and inputs together.
    """
    for rule in rules:
        if rule.weights != rule.activations:
            raise SpecError(
                f"quantize.layers: module_name {rule.pattern!r} quantizes only the "
                f"{'weights' if rule.weights else 'activations'}; modelopt.onnx quantizes a layer's weights and "
                "inputs together: give both int8 or both native."
            )


def onnx_nodes_to_exclude(model: Any, rules: Sequence[LayerRule], keep_float: Sequence[str]) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes ModelOpt must leave float.

    Those the rules or ``keep_float`` keep float (matched on the node's module path and class: ``Conv2d`` or
    ``Conv`` for a convolution, ``Linear``, ``MatMul`` or ``Gemm`` for a product), and the products of two
    activations (:func:`ddetr.deploy.quantize_onnx.nodes_to_exclude`).

    Raises:
        SpecError: see :func:`onnx_rules_check`.
    """
    from ddetr.deploy.quantize_onnx import nodes_to_exclude

    onnx_rules_check(rules)
    excluded = set(nodes_to_exclude(model, ()))
    for node in model.graph.node:
        if node.op_type not in ONNX_QUANTIZABLE:
            continue
        weights, _ = layer_dtypes(
            module_path(node.name), [node.op_type, ONNX_QUANTIZABLE[node.op_type]], rules, keep_float
        )
        if not weights:
            excluded.add(node.name)
    return sorted(excluded)
