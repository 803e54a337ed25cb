"""TAO's nine Deformable DETR spec templates load; ``???``, shorthand keys and TAO-only values behave as TAO's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ddetr import api
from ddetr.errors import SpecError
from ddetr.spec.load import SHORTHAND_KEYS, load_spec
from ddetr.spec.rules import check_required

TEMPLATES = Path(__file__).parent / "data" / "tao_templates"
# template -> the action it is for (TAO Deploy's templates are ddetr's same actions)
ACTIONS = {
    "train": "train",
    "evaluate": "evaluate",
    "inference": "inference",
    "export": "export",
    "quantize": "quantize",
    "gen_trt_engine": "gen_trt_engine",
    "deploy_evaluate": "evaluate",
    "deploy_inference": "inference",
    "deploy_gen_trt_engine": "gen_trt_engine",
}
# the field each template leaves ??? that its action needs first
FIRST_MISSING = {
    "train": r"dataset\.train_data_sources\[0\]\.image_dir is required",
    "evaluate": r"evaluate\.checkpoint or evaluate\.trt_engine",
    "inference": r"inference\.checkpoint or inference\.trt_engine",
    "export": r"export\.checkpoint is required",
    "quantize": r"quantize\.model_path is required",
    "gen_trt_engine": r"gen_trt_engine\.onnx_file is required",
    "deploy_evaluate": r"evaluate\.checkpoint or evaluate\.trt_engine",
    "deploy_inference": r"inference\.checkpoint or inference\.trt_engine",
    "deploy_gen_trt_engine": r"gen_trt_engine\.onnx_file is required",
}


def test_all_nine_templates_are_there() -> None:
    assert sorted(p.stem for p in TEMPLATES.glob("*.yaml")) == sorted(ACTIONS)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_template_loads_for_its_action(name: str, tmp_path: Path) -> None:
    spec = load_spec(TEMPLATES / f"{name}.yaml", [f"results_dir={tmp_path}"], action=ACTIONS[name])
    assert spec.results_dir == str(tmp_path)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_template_run_as_is_names_the_missing_field(name: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=FIRST_MISSING[name]) as err:
        api.run_action(ACTIONS[name], TEMPLATES / f"{name}.yaml", overrides=[f"results_dir={tmp_path}"])
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before any folder is made


@pytest.mark.parametrize("name", ["deploy_evaluate", "deploy_inference"])
def test_deploy_template_on_an_engine_is_not_checked_against_its_model_section(
    name: str, tmp_path: Path
) -> None:
    action = ACTIONS[name]
    for model_file in ("model.engine", "model.onnx"):
        spec = load_spec(
            TEMPLATES / f"{name}.yaml", [f"{action}.trt_engine={tmp_path / model_file}"], action=action
        )
        assert spec.model.num_feature_levels == 2 and spec.model.return_interm_indices == [1, 2, 3, 4]
    # on a checkpoint the spec's model section is checked as before
    with pytest.raises(SpecError, match="num_feature_levels"):
        load_spec(
            TEMPLATES / f"{name}.yaml", [f"{action}.checkpoint={tmp_path / 'model.pth'}"], action=action
        )


def test_derived_fields_left_missing_are_not_required(tmp_path: Path) -> None:
    spec = load_spec(
        TEMPLATES / "gen_trt_engine.yaml",
        [f"gen_trt_engine.onnx_file={tmp_path / 'm.onnx'}"],
        action="gen_trt_engine",
    )
    assert (
        spec.gen_trt_engine.trt_engine == "???"
        and spec.gen_trt_engine.tensorrt.calibration.cal_cache_file == "???"
    )
    assert spec.gen_trt_engine.tensorrt.calibration.cal_image_dir == []  # ??? for a list: not set
    check_required(spec, "gen_trt_engine")  # no error: engine and cache are named after the ONNX file
    spec = load_spec(TEMPLATES / "export.yaml", [f"export.checkpoint={tmp_path / 'm.pth'}"], action="export")
    check_required(spec, "export")


def test_missing_data_source_is_named(tmp_path: Path) -> None:
    overrides = [f"results_dir={tmp_path}", f"evaluate.checkpoint={tmp_path / 'm.pth'}"]
    with pytest.raises(SpecError, match=r"dataset\.test_data_sources\.image_dir is required"):
        api.run_action("evaluate", TEMPLATES / "evaluate.yaml", overrides=overrides)


def test_shorthand_keys_map_to_their_fields_with_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ddetr.spec.load"):
        spec = load_spec(None, ["num_epochs=3", "batch_size=2", "learning_rate=0.001", "trt_data_type=fp16"])
    assert spec.train.num_epochs == 3 and spec.dataset.batch_size == 2
    assert spec.train.optim.lr == 0.001 and spec.gen_trt_engine.tensorrt.data_type == "FP16"
    lines = [r.getMessage() for r in caplog.records if "shorthand" in r.getMessage()]
    assert len(lines) == 1 and all(f"{k} -> {v}" in lines[0] for k, v in SHORTHAND_KEYS.items())


def test_shorthand_key_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("num_epochs: 7\ntrain:\n  seed: 3\n")
    spec = load_spec(path)
    assert spec.train.num_epochs == 7 and spec.train.seed == 3


def test_values_tao_allows_are_accepted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        spec = load_spec(
            None,
            ["train.input_width=960", "train.input_height=544", "quantize.device=trt", "export.format=xdl"],
        )
    assert (spec.train.input_width, spec.train.input_height) == (960, 544)
    assert spec.quantize.device == "trt" and spec.export.format == "xdl"
    inert = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inert fields")]
    assert len(inert) == 1
    assert all(
        f in inert[0] for f in ("train.input_width=960", "train.input_height=544", "export.format='xdl'")
    )
    with pytest.raises(SpecError, match=r"quantize\.device"):
        load_spec(None, ["quantize.device=tpu"])


@pytest.mark.parametrize("name", ["gc_vit_large", "gc_vit_large_384"])
@pytest.mark.parametrize("action", ["train", "automl", None])
def test_tao_backbones_without_counterpart_fail_at_load(name: str, action: str | None) -> None:
    with pytest.raises(SpecError, match=f"'{name}' is not available.*valid names are resnet_18.*gc_vit_base"):
        load_spec(None, [f"model.backbone={name}"], action=action)
