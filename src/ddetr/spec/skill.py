"""The agent skill bundle (TAO skill-bank layout), generated from the spec models' field metadata.

:func:`bundle_files` returns every file of the bundle as text: ``schemas/<action>.schema.json`` (TAO's schema
layout and type vocabulary), ``schemas/manifest.json``, ``references/spec_template_<action>.yaml`` (each
schema's ``default``), ``references/skill_info.yaml`` and ``SKILL.md``. Nothing here restates a default, a
range, a choice or a description: they are read from ``spec/sections.py`` (and the backbone names and required
fields from ``spec/rules.py``), so the bundle cannot drift from the loader. The output is deterministic
(sorted keys, no dates); ``ddetr skill results_dir=DIR`` writes it, ``make skill`` refreshes the copy in
``skill/`` and ``docs/spec-reference.md`` (``python -m ddetr.spec.skill ROOT``).

Type vocabulary of the schemas (TAO's): ``bool``, ``int``, ``float``, ``string``, ``categorical`` (with
``enum``), ``list``, ``collection`` (a section or a mapping). A field whose value may be ``null`` has
``"nullable": true``; ddetr's own fields have ``"ddetr_only": true`` and inert ones ``"inert": true``.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from ddetr._version import __version__
from ddetr.fileio import atomic_write_text
from ddetr.spec.load import SHORTHAND_KEYS
from ddetr.spec.rules import REQUIRED_FIELDS, VALID_BACKBONE_NAMES
from ddetr.spec.schema import ACTION_SECTIONS, TOP_LEVEL_KEYS
from ddetr.spec.sections import AutomlSection, Section, Spec, field_meta

__all__ = [
    "NETWORK",
    "POPULAR_FIELDS",
    "SKILL_ACTIONS",
    "bundle_files",
    "field_rows",
    "main",
    "marks",
    "tao_schema",
    "template_text",
    "write_bundle",
]

NETWORK = "deformable_detr"
SKILL_NAME = "ddetr-deformable-detr"
# the actions with a schema and a template, and the sections each reads (gen_trt_engine also accepts the
# model section TAO's deploy template carries; the ONNX file decides the architecture)
SKILL_SECTIONS: dict[str, tuple[str, ...]] = {
    **ACTION_SECTIONS,
    "gen_trt_engine": ("model", *ACTION_SECTIONS["gen_trt_engine"]),
    "dataset": ("dataset",),
}
SKILL_ACTIONS: tuple[str, ...] = tuple(SKILL_SECTIONS)
# Fields an agent sets most often (TAO's "popular" marks): the device and schedule counts.
POPULAR_FIELDS: tuple[str, ...] = (
    "train.num_gpus",
    "train.gpu_ids",
    "train.num_nodes",
    "train.num_epochs",
    "train.checkpoint_interval",
    "train.validation_interval",
    "evaluate.num_gpus",
    "inference.num_gpus",
    "gen_trt_engine.batch_size",
    "gen_trt_engine.tensorrt.min_batch_size",
    "gen_trt_engine.tensorrt.opt_batch_size",
    "gen_trt_engine.tensorrt.max_batch_size",
    "gen_trt_engine.tensorrt.calibration.cal_batch_size",
    "gen_trt_engine.tensorrt.calibration.cal_batches",
)
# What each action reads and writes, for skill_info.yaml (paths checked against the spec when generated).
ACTION_IO: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "train": {
        "inputs": {
            "dataset.train_data_sources[0].image_dir": {"type": "folder"},
            "dataset.train_data_sources[0].json_file": {"type": "file"},
            "dataset.val_data_sources[0].image_dir": {"type": "folder"},
            "dataset.val_data_sources[0].json_file": {"type": "file"},
            "model.pretrained_backbone_path": {"type": "file", "optional": True},
            "train.pretrained_model_path": {"type": "file", "optional": True},
            "train.resume_training_checkpoint_path": {"type": "file", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
    "evaluate": {
        "inputs": {
            "dataset.test_data_sources.image_dir": {"type": "folder"},
            "dataset.test_data_sources.json_file": {"type": "file"},
            "evaluate.checkpoint": {"type": "file", "optional": True},
            "evaluate.trt_engine": {"type": "file", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
    "inference": {
        "inputs": {
            "dataset.infer_data_sources.image_dir": {"type": "folder"},
            "dataset.infer_data_sources.classmap": {"type": "file", "optional": True},
            "inference.checkpoint": {"type": "file", "optional": True},
            "inference.trt_engine": {"type": "file", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
    "export": {
        "inputs": {"export.checkpoint": {"type": "file"}},
        "outputs": {"results_dir": {"type": "folder"}, "export.onnx_file": {"type": "file"}},
    },
    "quantize": {
        "inputs": {
            "quantize.model_path": {"type": "file"},
            "dataset.quant_calibration_data_sources.image_dir": {"type": "folder", "optional": True},
            "dataset.quant_calibration_data_sources.json_file": {"type": "file", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
    "gen_trt_engine": {
        "inputs": {
            "gen_trt_engine.onnx_file": {"type": "file"},
            "gen_trt_engine.tensorrt.calibration.cal_image_dir": {"type": "folder", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}, "gen_trt_engine.trt_engine": {"type": "file"}},
    },
    "automl": {
        "inputs": {
            "dataset.train_data_sources[0].image_dir": {"type": "folder"},
            "dataset.train_data_sources[0].json_file": {"type": "file"},
            "dataset.val_data_sources[0].image_dir": {"type": "folder"},
            "dataset.val_data_sources[0].json_file": {"type": "file"},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
    "dataset": {
        "inputs": {
            "dataset.train_data_sources[0].image_dir": {"type": "folder", "optional": True},
            "dataset.train_data_sources[0].json_file": {"type": "file", "optional": True},
        },
        "outputs": {"results_dir": {"type": "folder"}},
    },
}
# How a job service fills a field (TAO's spec_params vocabulary).
SPEC_PARAMS: dict[str, dict[str, str]] = {
    "train": {
        "encryption_key": "key",
        "model.pretrained_backbone_path": "ptm_if_no_resume_model",
        "results_dir": "output_dir",
        "train.pretrained_model_path": "ptm_if_no_resume_model",
        "train.resume_training_checkpoint_path": "resume_model",
    },
    "evaluate": {
        "encryption_key": "key",
        "evaluate.checkpoint": "parent_model",
        "evaluate.trt_engine": "parent_model",
        "results_dir": "output_dir",
    },
    "inference": {
        "encryption_key": "key",
        "inference.checkpoint": "parent_model",
        "inference.trt_engine": "parent_model",
        "results_dir": "output_dir",
    },
    "export": {
        "encryption_key": "key",
        "export.checkpoint": "parent_model",
        "export.onnx_file": "create_onnx_file",
        "results_dir": "output_dir",
    },
    "quantize": {"encryption_key": "key", "quantize.model_path": "parent_model", "results_dir": "output_dir"},
    "gen_trt_engine": {
        "encryption_key": "key",
        "gen_trt_engine.onnx_file": "parent_model",
        "gen_trt_engine.tensorrt.calibration.cal_cache_file": "create_cal_cache",
        "gen_trt_engine.trt_engine": "create_engine_file",
        "results_dir": "output_dir",
    },
    "automl": {"encryption_key": "key", "results_dir": "output_dir"},
    "dataset": {"results_dir": "output_dir"},
}


# ------------------------------------------------------------------------------------------- field metadata


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``(annotation without None, nullable)``; ``list[str] | str`` keeps the list."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        nullable = len(rest) < len(args)
        lists = [a for a in rest if typing.get_origin(a) is list]
        return (lists[0] if lists else rest[0]), nullable
    return annotation, False


def _tao_type(annotation: Any) -> tuple[str, list[Any] | None]:
    """TAO's type word (and the enum of a ``Literal``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "categorical", list(typing.get_args(annotation))
    if origin is list:
        return "list", None
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "collection", None
    for python, word in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if annotation is python:
            return word, None
    return "string", None


def _bounds(info: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for constraint in info.metadata:
        for name in ("ge", "gt", "le", "lt", "pattern"):
            value = getattr(constraint, name, None)
            if value is not None:
                found[name] = value
    return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


def marks(section: type[BaseModel], name: str) -> list[str]:
    """The reference marks of a field: ``(+)`` (ddetr adds it; TAO has no such field), ``inert``, or ``TAO``."""
    info = section.model_fields[name]
    meta = field_meta(section, name)
    found = []
    if (info.description or "").startswith("(+)") or "(+)" in (section.__doc__ or "").split(":", 1)[0]:
        found.append("(+)")
    if meta.get("inert"):
        found.append("inert")
    return found or ["TAO"]


def _depends_on(condition: str, section_path: str, section: type[BaseModel]) -> list[str]:
    names = []
    for word in re.findall(r"[a-z_]+", condition):
        if word in section.model_fields:
            names.append(f"{section_path}.{word}" if section_path else word)
        elif word == "num_classes":
            names.append("dataset.num_classes")
    return list(dict.fromkeys(names))


def _field_schema(section: type[BaseModel], name: str, path: str, section_path: str) -> dict[str, Any]:
    info = section.model_fields[name]
    meta = field_meta(section, name)
    annotation, nullable = _unwrap(info.annotation)
    word, enum = _tao_type(annotation)
    default = _jsonable(info.get_default(call_default_factory=True))
    out: dict[str, Any] = {"type": word, "default": default, "title": _title(name)}
    if info.description:
        out["description"] = info.description
    if enum is not None:
        out["enum"] = enum
    if nullable:
        out["nullable"] = True
    bounds = _bounds(info)
    for low in ("ge", "gt"):
        if low in bounds:
            out["minimum"] = bounds[low]
    for high in ("le", "lt"):
        if high in bounds:
            out["maximum"] = bounds[high]
    if "pattern" in bounds:
        out["pattern"] = bounds["pattern"]
    condition = (
        meta.get("condition")
        or (f"> {bounds['gt']}" if "gt" in bounds else "")
        or (f"< {bounds['lt']}" if "lt" in bounds else "")
    )
    if condition:
        out["math_cond"] = condition
        depends = _depends_on(condition, section_path, section)
        if depends:
            out["depends_on"] = depends[0] if len(depends) == 1 else depends
    if meta.get("automl"):
        out["automl_enabled"] = True
        if "automl_range" in meta:
            out["automl_range"] = meta["automl_range"]
    elif meta.get("never_searched") or meta.get("inert") or word in ("list", "collection"):
        out["automl_enabled"] = False
    if meta.get("never_searched"):
        out["automl_disabled_reason"] = meta["never_searched"]
    if path == "model.backbone":
        out["valid_options"] = list(VALID_BACKBONE_NAMES)
    if path in POPULAR_FIELDS:
        out["popular"] = True
    found = marks(section, name)
    if "(+)" in found:
        out["ddetr_only"] = True
    if "inert" in found:
        out["inert"] = True
    return out


def _required_in(section_path: str) -> list[str]:
    """Fields of a section some action always needs (single requirements of ``REQUIRED_FIELDS``)."""
    names = set()
    for groups in REQUIRED_FIELDS.values():
        for group in groups:
            if len(group) == 1 and "[]" not in group[0]:
                head, _, field = group[0].rpartition(".")
                if head == section_path:
                    names.add(field)
    return sorted(names)


def _section_schema(model: type[BaseModel], path: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(schema, automl default fields, automl disabled fields)`` of a section, recursively."""
    properties: dict[str, Any] = {}
    enabled: list[str] = []
    disabled: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        annotation, _ = _unwrap(info.annotation)
        if isinstance(annotation, type) and issubclass(annotation, Section):
            inner, inner_on, inner_off = _section_schema(annotation, dotted)
            inner["title"] = _title(name)
            if info.description:
                inner["description"] = info.description
            properties[name] = inner
            enabled += inner_on
            disabled += [dotted, *inner_off]
            continue
        prop = _field_schema(model, name, dotted, path)
        properties[name] = prop
        if prop.get("automl_enabled") is True:
            enabled.append(dotted)
        elif prop.get("automl_enabled") is False:
            disabled.append(dotted)
    schema: dict[str, Any] = {
        "type": "collection",
        "default": model().model_dump(mode="json"),
        "properties": properties,
        "automl_enabled": False,
    }
    if model.__doc__:
        schema["description"] = model.__doc__.strip().splitlines()[0]
    if enabled:
        schema["automl_default_parameters"] = sorted(enabled)
    if disabled:
        schema["automl_disabled_parameters"] = sorted(disabled)
    popular = sorted(n for n, p in properties.items() if p.get("popular"))
    if popular:
        schema["popular"] = popular
    required = _required_in(path)
    if required:
        schema["required"] = required
    return schema, enabled, disabled


def _popular_values(properties: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prop in properties.items():
        if prop.get("type") == "collection" and "properties" in prop:
            inner = _popular_values(prop["properties"])
            if inner:
                out[name] = inner
        elif prop.get("popular"):
            out[name] = prop["default"]
    return out


def tao_schema(action: str) -> dict[str, Any]:
    """The schema of one action in TAO's layout (``type``, ``properties``, ``default``, ``required``, ...).

    Raises:
        KeyError: unknown action (see :data:`SKILL_ACTIONS`).
    """
    sections = SKILL_SECTIONS[action]
    properties: dict[str, Any] = {}
    enabled: list[str] = []
    disabled: list[str] = []
    for key in TOP_LEVEL_KEYS:
        properties[key] = _field_schema(Spec, key, key, "")
    for section in sections:
        model = Spec.model_fields[section].annotation
        schema, on, off = _section_schema(model, section)
        description = Spec.model_fields[section].description
        if description:
            schema["description"] = description
        schema["title"] = _title(section)
        properties[section] = schema
        enabled += on
        disabled += [section, *off]
    default = {key: properties[key]["default"] for key in properties}
    return {
        "type": "object",
        "properties": properties,
        "default": default,
        "required": [sections[-1]],
        "popular": _popular_values(properties),
        "automl_default_parameters": sorted(enabled) if action in ("train", "automl") else [],
        "automl_disabled_parameters": sorted(disabled),
        "x_tao_schema": {
            "action": action,
            "core_module": "ddetr.spec.sections",
            "ddetr_version": __version__,
            "model": NETWORK,
            "network_arch": NETWORK,
            "schema_action": action,
            "schema_version": 1,
            "source": "generated by ddetr from its spec models (ddetr skill)",
            "type_vocabulary": ["bool", "categorical", "collection", "float", "int", "list", "string"],
        },
    }


def template_text(action: str) -> str:
    """``references/spec_template_<action>.yaml``: the schema's ``default`` as YAML (sorted keys)."""
    header = f"# ddetr {action} spec template: the default of schemas/{action}.schema.json (generated).\n"
    return header + yaml.safe_dump(
        tao_schema(action)["default"], sort_keys=True, default_flow_style=None, width=110
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _manifest() -> dict[str, Any]:
    actions = {}
    for action in SKILL_ACTIONS:
        schema = tao_schema(action)
        actions[action] = {
            "automl_default_parameters": schema["automl_default_parameters"],
            "automl_disabled_parameters": schema["automl_disabled_parameters"],
            "core_module": "ddetr.spec.sections",
            "path": f"schemas/{action}.schema.json",
            "popular": schema["popular"],
            "schema_action": action,
            "spec_template": f"references/spec_template_{action}.yaml",
        }
    return {"actions": actions, "model": NETWORK, "network_arch": NETWORK, "schema_version": 1}


def _check_paths() -> None:
    """Every field path the bundle names exists in the spec (a renamed field fails the generation).

    Raises:
        ValueError: a path names no field.
    """
    named = [*POPULAR_FIELDS, *SHORTHAND_KEYS.values()]
    for io in ACTION_IO.values():
        named += [*io["inputs"], *io["outputs"]]
    for params in SPEC_PARAMS.values():
        named += list(params)
    for path in named:
        node: Any = Spec()
        for part in path.split("."):
            name, _, index = part.partition("[")
            if not isinstance(node, BaseModel) or name not in type(node).model_fields:
                raise ValueError(f"the skill bundle names {path}, which is not a spec field")
            node = getattr(node, name)
            if index:
                node = node[int(index.rstrip("]"))]


def _skill_info() -> dict[str, Any]:
    actions = {}
    for action in SKILL_ACTIONS:
        io = ACTION_IO[action]
        actions[action] = {
            "command": f"ddetr {action} -e {{config_path}}",
            "config_format": "yaml",
            "inputs": io["inputs"],
            "mode": "config",
            "outputs": io["outputs"],
            "spec_template": f"references/spec_template_{action}.yaml",
        }
    return {
        "actions": actions,
        "automl_enabled": True,
        "automl_policy": {"default": "on", "values": ["on", "off"], "spec_key": "automl_policy"},
        "data_format": "coco",
        "description": "Deformable DETR 2D object detection (ddetr): train, evaluate, inference, export, quantize, "
        "TensorRT engines and AutoML from one TAO-compatible spec.",
        "gpu_spec_key": "train.num_gpus",
        "install": "pip install ddetr (CPU works; CUDA, TensorRT and ModelOpt are optional)",
        "name": SKILL_NAME,
        "network_arch": NETWORK,
        "spec_params": SPEC_PARAMS,
        "spec_shorthand_keys": dict(SHORTHAND_KEYS),
        "version": __version__,
    }


# ------------------------------------------------------------------------------------------------ SKILL.md


def _automl_literal(name: str) -> list[str]:
    return list(typing.get_args(AutomlSection.model_fields[name].annotation))


def _skill_md() -> str:
    train = tao_schema("train")
    searched = ", ".join(f"`{p}`" for p in train["automl_default_parameters"])
    metrics = ", ".join(f"`{m}`" for m in _automl_literal("metric"))
    algorithms = ", ".join(f"`{m}`" for m in _automl_literal("algorithm"))
    shorthand = ", ".join(f"`{k}` -> `{v}`" for k, v in SHORTHAND_KEYS.items())
    rows = "\n".join(
        f"| `{a}` | `ddetr {a} -e spec.yaml` | "
        + ", ".join(
            f"`{k}`" + (" (optional)" if v.get("optional") else "") for k, v in ACTION_IO[a]["inputs"].items()
        )
        + " | "
        + ", ".join(f"`{k}`" for k in ACTION_IO[a]["outputs"])
        + " |"
        for a in SKILL_ACTIONS
    )
    return f"""---
name: {SKILL_NAME}
description: Deformable DETR 2D object detection with ddetr (a TAO-compatible toolkit). Use to train, evaluate,
  run inference, export to ONNX, quantize, build TensorRT engines or search hyperparameters (AutoML) for a
  Deformable DETR detector from a TAO-style experiment spec.
metadata:
  version: "{__version__}"
  generated: "ddetr skill (from src/ddetr/spec; do not edit by hand)"
allowed-tools: Read Bash
tags:
- object
- detection
---

# Deformable DETR with ddetr

Every action reads one YAML experiment spec whose sections and field names are TAO's Deformable DETR ones.
`schemas/<action>.schema.json` describe every field (TAO's layout: `type`, `default`, `minimum`/`maximum`,
`enum`, `automl_enabled`, `math_cond`, `depends_on`, `popular`; ddetr's own fields carry `ddetr_only: true`,
fields accepted only for TAO compatibility `inert: true`). `references/spec_template_<action>.yaml` is each
schema's `default` and loads unchanged. `references/skill_info.yaml` lists the commands, inputs and outputs.

## Actions

| action | command | inputs | outputs |
|---|---|---|---|
{rows}

Overrides follow the spec as dotted `key=value` pairs: `ddetr train -e spec.yaml train.num_epochs=20`.
Shorthand keys are accepted at the top level: {shorthand}.
`ddetr default_specs results_dir=DIR` writes commented templates; `ddetr skill results_dir=DIR` writes this bundle.

## Workflow

1. `dataset`: check the data (`ddetr dataset -e spec.yaml`) before training; it reports bad boxes, missing
   images and class ids outside `dataset.num_classes`.
2. `train` (AutoML by default for agent-driven runs, see below) -> checkpoints in `<results_dir>/train/`.
3. `evaluate` the chosen checkpoint (COCO mAP on `dataset.test_data_sources`), `inference` on new images.
4. `export` the checkpoint to ONNX (`export.on_cpu: true` for ONNX Runtime; false: TensorRT's attention plugin).
5. `quantize` (torchao, ModelOpt or ONNX Runtime) and/or `gen_trt_engine` (TensorRT, GPU only).

## Data layout

COCO detection json plus an image folder, archive (`.tar`, `.tar.gz`, `.zip`) or URL per source:
`dataset.train_data_sources: [{{image_dir, json_file}}]`, `val_data_sources` likewise (lists), and single
mappings for `test_data_sources`, `quant_calibration_data_sources`, `infer_data_sources` (`image_dir` a list,
`classmap` a text file with one class name per line, line i = category id i + 1).
`dataset.num_classes` is the largest category id + 1 (id 0 unused): 3 classes with ids 1..3 need `num_classes: 4`.
`dataset.eval_class_ids` (null: all) restricts the COCO metric. `ddetr convert voc|kitti|yolo` writes COCO json.

## Checkpoints: which file to pass on

Training writes `model_epoch_<EEE>_step_<SSSSS>.pth` every `train.checkpoint_interval` and
`dd_model_latest.pth` (the newest). Pass the exact checkpoint you chose to the next action
(`evaluate.checkpoint`, `inference.checkpoint`, `export.checkpoint`, `quantize.model_path`), not
`dd_model_latest.pth`, unless the user asked for the latest. After AutoML, `<results_dir>/automl/best_trial.json`
names the best trial's exact checkpoint and `best_spec.yaml` its spec. `export` writes
`<results_dir>/export/<checkpoint stem>.onnx` (unless `export.onnx_file` is set); pass that file to
`gen_trt_engine.onnx_file`, `evaluate.trt_engine` or `inference.trt_engine`. `gen_trt_engine` writes
`<results_dir>/gen_trt_engine/<onnx stem>.engine`. Training resumes from `dd_model_latest.pth` by itself;
`train.resume_training_checkpoint_path` names another file.

## The architecture travels with the model

Every checkpoint, ONNX file and engine carries its model card: architecture, class names, `num_select`,
normalisation and resize. Downstream actions take them from the file, so do not copy `model.*` fields from the
training spec; a spec field set to another value wins for post-processing/preprocessing (one warning line),
while a checkpoint's architecture always wins. On an ONNX file or engine the spec's `model` section is not
checked at all.

## AutoML (on by default for agent-driven training)

For a training request from an agent, set `automl_policy: on` unless the user asks for plain training
("no AutoML", "disable HPO", "plain training": `automl_policy: off`, the spec default). With `automl_policy: on`
(or `automl.enabled: true`) `ddetr train` runs the hyperparameter search (`ddetr automl`) instead of one
training. Settings: `automl.algorithm` ({algorithms}), `automl.metric` ({metrics}), `automl.max_recommendations`
(trials), `automl.max_epochs`, `automl.hyperparameters` (dotted fields; empty: the defaults),
`automl.range_override`. Searched by default: {searched}. Results: `<results_dir>/automl/leaderboard.csv`,
`best_trial.json`, `best_spec.yaml`.

## Error patterns and fixes

Every user error is one line starting `error:` (exit code 2) naming the field, the value and the fix.

- `... is required but the spec leaves it ??? ...`: set the named field (a TAO template leaves it `???`).
- `unknown key 'x' in section ...; did you mean 'y'?`: a misspelt field; use the suggested name.
- `model.num_select: N must be < model.num_queries * dataset.num_classes`: lower `model.num_select`.
- `model.return_interm_indices [...] has K entries but model.num_feature_levels is L`: make them equal.
- `dataset.augmentation.train_random_crop_max ... must be > ...train_random_crop_min`: raise the max.
- `model.backbone: 'gc_vit_large' is not available ...`: choose one of the valid names the message lists.
- `inert fields (accepted for TAO compatibility, no effect here): ...` (a warning): the named TAO fields do nothing.
- Class ids in the json above `dataset.num_classes - 1`: raise `dataset.num_classes` (largest id + 1).
- CUDA out of memory: lower `dataset.batch_size` (4 -> 2 -> 1) or `dataset.augmentation` sizes.
- `TensorRT is not installed` / no GPU: `gen_trt_engine` and TensorRT engines need an NVIDIA GPU; use
  `export.on_cpu: true` and evaluate the ONNX file with ONNX Runtime instead.

## CPU and GPU

CPU is supported for every action except `gen_trt_engine` and running engines: training uses one CPU
process when no GPU is found (`train.num_gpus` is then ignored, with a warning), fp16 becomes bf16 autocast.
With GPUs set `train.num_gpus` and `train.gpu_ids` together (`num_gpus: 8`, `gpu_ids: [0, ..., 7]`);
`train.distributed_strategy` is `ddp` or `fsdp`, `train.num_nodes` > 1 for several machines.
`quantize` runs on the CPU whatever `quantize.device` says (one warning for `cuda`/`trt`).
"""


# ----------------------------------------------------------------------------------------- the whole bundle


def bundle_files() -> dict[str, str]:
    """Every file of the skill bundle: ``{relative path: text}``, in a fixed order."""
    _check_paths()
    files: dict[str, str] = {"SKILL.md": _skill_md()}
    for action in SKILL_ACTIONS:
        files[f"schemas/{action}.schema.json"] = _json(tao_schema(action))
    files["schemas/manifest.json"] = _json(_manifest())
    for action in SKILL_ACTIONS:
        files[f"references/spec_template_{action}.yaml"] = template_text(action)
    files["references/skill_info.yaml"] = (
        "# generated by ddetr skill; do not edit by hand\n"
        + yaml.safe_dump(_skill_info(), sort_keys=True, default_flow_style=False, width=100)
    )
    return files


def write_bundle(folder: str | Path) -> list[Path]:
    """Write :func:`bundle_files` under ``folder`` (each file atomically); returns the written paths."""
    root = Path(folder)
    written = []
    for relative, text in bundle_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, text))
    return written


# --------------------------------------------------------------------------------------- spec reference doc


def field_rows(model: type[BaseModel] = Spec, prefix: str = "") -> list[dict[str, Any]]:
    """One row per field, sections included, depth first: path, type, default, range, meaning, marks."""
    rows: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation, _ = _unwrap(info.annotation)
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows.append(
                {
                    "path": path,
                    "section": True,
                    "description": info.description or "",
                    "marks": marks(model, name),
                }
            )
            rows += field_rows(annotation, f"{path}.")
            continue
        prop = _field_schema(model, name, path, prefix.rstrip("."))
        rows.append({"path": path, "section": False, **prop, "marks": marks(model, name)})
    return rows


def _range_text(row: dict[str, Any]) -> str:
    parts = []
    if "enum" in row:
        parts.append(" \\| ".join(str(v) for v in row["enum"]))
    if "minimum" in row or "maximum" in row:
        low = row.get("minimum", "")
        high = row.get("maximum", "")
        op_low = (
            ">" if row.get("math_cond", "").startswith(">") and row.get("math_cond") == f"> {low}" else ">="
        )
        if low != "" and high != "":
            parts.append(f"{op_low} {low}, <= {high}" if op_low == ">" else f"{low} .. {high}")
        elif low != "":
            parts.append(f"{op_low} {low}")
        else:
            parts.append(f"<= {high}")
    if "pattern" in row:
        parts.append(f"`{row['pattern']}`")
    if "valid_options" in row:
        parts.append(", ".join(row["valid_options"]))
    return "; ".join(parts)


def _cell(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value) if value == "" else value
    return text.replace("|", "\\|")


def spec_reference_md() -> str:
    """``docs/spec-reference.md``: every field with its type, default, range, meaning and marks."""
    lines = [
        "# Spec field reference (generated)",
        "",
        "Generated from `src/ddetr/spec/sections.py` by `make skill` (`python -m ddetr.spec.skill .`); do not edit.",
        "[SPEC.md](SPEC.md) explains how a spec is read; this page lists every field. Marks: **TAO** a field of",
        "TAO's Deformable DETR spec that ddetr implements; **(+)** a field ddetr adds (TAO has none); **inert** accepted",
        "so that TAO files load, without effect (named in one warning line when set). **AutoML**: searched by default",
        "(with its search range), **never** with the reason.",
        "",
    ]
    header = [
        "| field | type | default | range | meaning | marks | AutoML |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = field_rows()
    top = [r for r in rows if "." not in r["path"] and not r["section"]]
    lines += ["## Top level", "", *header]
    for row in [*top, *(r for r in rows if r not in top)]:
        if row["section"]:
            depth = row["path"].count(".")
            lines += [
                "",
                f"{'#' * min(2 + depth, 5)} `{row['path']}`"
                + (f" ({', '.join(row['marks'])})" if row["marks"] != ["TAO"] else ""),
                "",
            ]
            if row["description"]:
                lines += [row["description"], ""]
            lines += header
            continue
        automl = ""
        if row.get("automl_enabled") is True:
            automl = "yes" + (f" {row['automl_range']}" if "automl_range" in row else "")
            if "math_cond" in row:
                automl += f", {row['math_cond']}"
        elif "automl_disabled_reason" in row:
            automl = f"never: {row['automl_disabled_reason']}"
        kind = row["type"] + (" or null" if row.get("nullable") else "")
        name = row["path"].rsplit(".", 1)[-1]
        lines.append(
            f"| `{name}` | {kind} | `{_cell(row['default'])}` | {_range_text(row)} | "
            f"{(row.get('description') or '').replace('|', '/')} | {', '.join(row['marks'])} | {automl} |"
        )
    return "\n".join(lines).rstrip() + "\n"


def generated_files() -> dict[str, str]:
    """The repository's generated files: ``skill/...`` and ``docs/spec-reference.md`` (``make skill``)."""
    files = {f"skill/{path}": text for path, text in bundle_files().items()}
    files["docs/spec-reference.md"] = spec_reference_md()
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m ddetr.spec.skill ROOT``: write :func:`generated_files` under the repository root ROOT."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".")
    for relative, text in generated_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    print(f"wrote {len(generated_files())} files under {root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
