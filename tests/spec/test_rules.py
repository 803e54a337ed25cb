"""The spec's cross-field rules run when the spec loads: one line naming the fields, before any folder or data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run_ddetr
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.spec.rules import (
    GC_VIT_BACKBONES,
    MODEL_BUILDING_ACTIONS,
    RESNET_BACKBONES,
    VALID_BACKBONE_NAMES,
    check_model_section,
)
from ddetr.spec.sections import ModelSection, Spec

# (overrides, fields the one-line error must name)
MODEL_RULES = [
    (["model.num_feature_levels=3"], ["model.return_interm_indices", "model.num_feature_levels"]),
    (["model.return_interm_indices=[3, 1, 2, 4]"], ["model.return_interm_indices"]),
    (["model.return_interm_indices=[1, 2, 3, 5]"], ["model.return_interm_indices"]),
    (
        ["model.num_queries=10", "dataset.num_classes=3", "model.num_select=30"],
        ["model.num_select", "model.num_queries", "dataset.num_classes"],
    ),
    (["model.hidden_dim=64", "model.nheads=6"], ["model.hidden_dim", "model.nheads"]),
    (["model.hidden_dim=48", "model.nheads=4"], ["model.hidden_dim", "32"]),
    (["model.two_stage=true", "model.with_box_refine=false"], ["model.two_stage", "model.with_box_refine"]),
    (
        ["model.backbone=resnet_7"],
        ["model.backbone", "resnet_7", "resnet_50", "gc_vit_xxtiny", "timm:<name>"],
    ),
    (["model.backbone='timm:'"], ["model.backbone", "unknown backbone 'timm:'"]),
    (["model.backbone=gc_vit_large"], ["model.backbone", "gc_vit_large"]),
    (["model.backbone=resnet_34", "model.dilation=true"], ["model.dilation", "resnet_34"]),
]
# Rules docs/SPEC.md asks of every action; the other model rules only apply where the model is built from the spec.
EVERY_ACTION = {0, 1, 2, 3}
OTHER_ACTIONS = ("evaluate", "inference", "export", "quantize", "dataset", "default_specs")


def _ids(rules: list) -> list[str]:
    return [" ".join(overrides) for overrides, _ in rules]


@pytest.mark.parametrize("action", [*MODEL_BUILDING_ACTIONS, None])
@pytest.mark.parametrize(("overrides", "names"), MODEL_RULES, ids=_ids(MODEL_RULES))
def test_each_model_rule_fails_at_load_in_one_line(overrides, names, action) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(None, overrides, action=action)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("action", OTHER_ACTIONS)
def test_actions_reading_the_architecture_from_a_checkpoint_keep_only_the_every_action_rules(action) -> None:
    for index, (overrides, _names) in enumerate(MODEL_RULES):
        if index in EVERY_ACTION:
            with pytest.raises(SpecError):
                load_spec(None, overrides, action=action)
        else:  # the checkpoint's architecture replaces these fields
            assert load_spec(None, overrides, action=action).model.backbone


def test_gen_trt_engine_reads_no_model_rule() -> None:
    """gen_trt_engine takes the architecture from its ONNX file (TAO's deploy template sets 2 levels, 4 indices)."""
    for overrides, _names in MODEL_RULES:
        assert load_spec(None, overrides, action="gen_trt_engine").model


def test_interm_indices_give_one_message_at_load_and_from_python() -> None:
    with pytest.raises(SpecError) as at_load:
        load_spec(None, ["model.num_feature_levels=3"], action="train")
    with pytest.raises(SpecError) as at_load_evaluate:
        load_spec(None, ["model.num_feature_levels=3"], action="evaluate")
    from ddetr.model.detector import DeformableDETR

    with pytest.raises(SpecError) as from_python:
        DeformableDETR.from_config(ModelSection(num_feature_levels=3), 91)
    assert str(at_load.value) == str(at_load_evaluate.value) == str(from_python.value)
    assert "model.num_feature_levels=4" in str(at_load.value)  # how to fix it


def test_extra_levels_after_the_last_stage_are_accepted() -> None:
    spec = load_spec(None, ["model.return_interm_indices=[2, 3, 4, 5]"], action="train")
    assert spec.model.return_interm_indices == [2, 3, 4, 5]
    check_model_section(spec.model, 3)


def test_the_spec_defines_the_backbone_names_the_model_builds() -> None:
    from ddetr.model import backbone

    assert list(backbone.RESNETS) == list(RESNET_BACKBONES)
    assert {"resnet_18", "resnet_101", "gc_vit_tiny", "timm:<name>"} <= set(VALID_BACKBONE_NAMES)
    assert "gc_vit_large" not in VALID_BACKBONE_NAMES and GC_VIT_BACKBONES["gc_vit_base"] == "gcvit_base"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.hidden_dim=48", "model.nheads=4"],
        ["model.backbone=vgg16"],
        ["model.two_stage=true", "model.with_box_refine=false"],
        ["model.num_feature_levels=3"],
    ],
    ids=["hidden_dim", "backbone", "two_stage", "levels"],
)
def test_cli_train_with_a_broken_rule_creates_no_results_folder(tmp_path: Path, overrides: list[str]) -> None:
    results = tmp_path / "results"
    spec = tmp_path / "spec.yaml"
    missing = tmp_path / "no_data"
    spec.write_text(
        f"results_dir: {results}\n"
        "dataset:\n"
        f"  train_data_sources: [{{image_dir: {missing}, json_file: {missing}/train.json}}]\n"
        f"  val_data_sources: [{{image_dir: {missing}, json_file: {missing}/val.json}}]\n"
    )
    line = one_error_line(run_ddetr("train", "-e", spec, *overrides))
    assert line.startswith("error: model.")
    assert not results.exists()


INERT = [
    ("dataset.augmentation.fixed_padding", "false"),
    ("inference.is_internal", "true"),
    ("gen_trt_engine.opset_version", "13"),
]


def _inert_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "inert" in r.getMessage()]


@pytest.mark.parametrize(("field", "value"), INERT, ids=[f for f, _ in INERT])
def test_fields_without_effect_warn_when_set(caplog, field: str, value: str) -> None:
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, [f"{field}={value}"])
    lines = _inert_lines(caplog)
    assert len(lines) == 1 and f"{field}=" in lines[0], lines
    caplog.clear()
    default = json.dumps(Spec().get(field))  # JSON is YAML: true, [0], 0
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, [f"{field}={default}"])
    assert _inert_lines(caplog) == []


def test_every_field_without_effect_is_named_in_one_line(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, [f"{field}={value}" for field, value in INERT])
    lines = _inert_lines(caplog)
    assert len(lines) == 1
    for field, _value in INERT:
        assert f"{field}=" in lines[0]


@pytest.mark.parametrize(
    "override",
    [
        "train.cudnn.benchmark=true",
        "train.cudnn.deterministic=false",
        "train.activation_checkpoint=false",
        "gen_trt_engine.gpu_id=1",  # the GPU the engine is built on
    ],
)
def test_implemented_tao_fields_are_not_called_inert(caplog, override: str) -> None:
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, [override])
    assert _inert_lines(caplog) == []


def test_no_inert_warning_when_none_is_set(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, ["train.gpu_ids=[1]", "train.num_epochs=3"])  # train.gpu_ids is read by the trainer
    assert _inert_lines(caplog) == []
