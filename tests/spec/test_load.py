"""Spec loading: TAO files, overrides, one-line errors, cross-field rules, dump and checkpoint merge."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from ddetr.errors import SpecError
from ddetr.spec.load import dump_spec, inert_fields_set, load_spec, merge_model_from_checkpoint
from ddetr.spec.sections import MISSING, DataSource, ModelSection, Spec

TAO_SPEC = Path(__file__).parent / "data" / "tao_train.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def _load_error(tmp_path: Path, overrides: list[str], text: str = "") -> str:
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text) if text else None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_full_tao_spec_loads_unchanged(caplog):
    raw = yaml.safe_load(TAO_SPEC.read_text())
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        spec = load_spec(TAO_SPEC)
    # Every section of the file made it through with its values.
    assert spec.results_dir == raw["results_dir"] and spec.encryption_key == "tlt_encode"
    assert (
        spec.model.num_select == 100
        and spec.model.pretrained_backbone_path == raw["model"]["pretrained_backbone_path"]
    )
    assert spec.model.dld_model_dir_path == ""  # null -> default
    assert (
        spec.dataset.train_data_sources[0].json_file == raw["dataset"]["train_data_sources"][0]["json_file"]
    )
    assert spec.dataset.infer_data_sources.image_dir == ["/data/raw-data/val2017/"]
    assert spec.dataset.augmentation.fixed_padding is False
    assert spec.train.num_epochs == 50 and spec.train.optim.lr == pytest.approx(2e-4)
    assert spec.train.optim.weight_decay == pytest.approx(1e-4)
    assert spec.evaluate.checkpoint == MISSING and spec.export.onnx_file == MISSING
    assert spec.inference.color_map == {"person": "green", "car": "red"} and spec.inference.input_width == 960
    assert spec.quantize.model_path == MISSING and spec.gen_trt_engine.tensorrt.data_type == "FP32"
    assert spec.wandb.enable is True and spec.wandb.project == "TAO Toolkit"
    inert_lines = [r.getMessage() for r in caplog.records if "inert" in r.getMessage()]
    assert len(inert_lines) <= 1 and all("\n" not in line for line in inert_lines)
    assert not any("wandb." in line for line in inert_lines)  # the wandb section has an effect


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    spec = load_spec(_write(tmp_path, "train:\n  optim:\n    lr: 1e-3\n    weight_decay: 5E-5\n"))
    assert spec.train.optim.lr == pytest.approx(1e-3) and spec.train.optim.weight_decay == pytest.approx(5e-5)


def test_inert_warning_names_every_inert_field_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(
            None, ["model.clip_max_norm=0.5", "dataset.dataset_type=default", "train.optim.lr_steps=[5]"]
        )
    lines = [r.getMessage() for r in caplog.records if "inert" in r.getMessage()]
    assert len(lines) == 1
    assert "model.clip_max_norm=0.5" in lines[0] and "dataset.dataset_type='default'" in lines[0]


def test_no_inert_warning_for_defaults():
    assert inert_fields_set(Spec()) == {}


def test_overrides_of_scalars_lists_and_dicts(tmp_path):
    path = _write(tmp_path, "train:\n  num_epochs: 3\n")
    spec = load_spec(
        path,
        [
            "train.num_epochs=20",
            "train.optim.lr_steps=[30,45]",
            "dataset.train_data_sources=[{image_dir: a, json_file: b}, {image_dir: c, json_file: d}]",
            "inference.color_map={car: red}",
            "dataset.eval_class_ids=[1, 3]",
            "evaluate.input_width=null",
            "results_dir=/tmp/out",
            "encryption_key=",
        ],
    )
    assert spec.train.num_epochs == 20 and spec.train.optim.lr_steps == [30, 45]
    assert spec.dataset.train_data_sources == [
        DataSource(image_dir="a", json_file="b"),
        DataSource(image_dir="c", json_file="d"),
    ]
    assert spec.inference.color_map == {"car": "red"} and spec.dataset.eval_class_ids == [1, 3]
    assert spec.results_dir == "/tmp/out" and spec.encryption_key == ""


def test_override_of_missing_marker_is_kept():
    assert load_spec(None, ["evaluate.checkpoint=???"]).evaluate.checkpoint == MISSING


def test_missing_spec_file():
    with pytest.raises(SpecError, match=r"experiment spec file '.*nope\.yaml' not found"):
        load_spec("/definitely/nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    msg = _load_error(tmp_path, [], text="train:\n  num_epochs: [1, 2\n")
    assert "not valid YAML" in msg and "line" in msg


def test_spec_must_be_a_mapping(tmp_path):
    assert "YAML mapping" in _load_error(tmp_path, [], text="- a\n- b\n")


def test_unknown_key_names_section_and_closest_name(tmp_path):
    msg = _load_error(tmp_path, [], text="model:\n  num_querys: 100\n")
    assert "'num_querys'" in msg and "section 'model'" in msg and "did you mean 'num_queries'" in msg


def test_unknown_nested_and_top_level_keys():
    msg = _load_error(Path(), ["train.optim.learning_rate=0.1"])
    assert "'learning_rate'" in msg and "section 'train.optim'" in msg
    msg = _load_error(Path(), ["modle.backbone=resnet_18"])
    assert "'modle'" in msg and "did you mean 'model'" in msg
    msg = _load_error(Path(), ["dataset.train_data_sources=[{imagedir: a, json_file: b}]"])
    assert "dataset.train_data_sources[0]" in msg and "did you mean 'image_dir'" in msg


def test_wrong_type_names_field_value_and_expected_type():
    msg = _load_error(Path(), ["train.num_epochs=ten"])
    assert msg.startswith("train.num_epochs:") and "expected an integer" in msg and "'ten'" in msg
    assert "train.num_epochs=" in msg  # how to fix
    msg = _load_error(Path(), ["dataset.infer_data_sources.image_dir=5"])
    assert "expected a list or a string" in msg


def test_out_of_range_names_the_allowed_range():
    msg = _load_error(Path(), ["model.num_feature_levels=7"])
    assert "model.num_feature_levels" in msg and "7" in msg and "between 1 and 5" in msg
    msg = _load_error(Path(), ["train.optim.lr=-0.1"])
    assert "train.optim.lr" in msg and ">= 0" in msg  # TAO's range starts at 0 (0 itself only warns)


def test_literal_choices_are_listed():
    msg = _load_error(Path(), ["train.optim.optimizer=Adam"])
    assert "'AdamW'" in msg and "'SGD'" in msg


def test_override_syntax_errors():
    assert "key=value" in _load_error(Path(), ["train.num_epochs"])
    assert "is a value, not a section" in _load_error(Path(), ["model.backbone.depth=3"])


def test_num_select_rule():
    msg = _load_error(Path(), ["dataset.num_classes=2", "model.num_queries=100", "model.num_select=200"])
    assert "model.num_select" in msg and "100 * 2 = 200" in msg
    assert load_spec(None, ["dataset.num_classes=2", "model.num_queries=100", "model.num_select=199"])


def test_return_interm_indices_length_rule():
    msg = _load_error(Path(), ["model.num_feature_levels=2"])
    assert "model.return_interm_indices" in msg and "model.num_feature_levels is 2" in msg
    spec = load_spec(None, ["model.num_feature_levels=2", "model.return_interm_indices=[2, 3]"])
    assert spec.model.return_interm_indices == [2, 3]


def test_random_crop_rule():
    msg = _load_error(Path(), ["dataset.augmentation.train_random_crop_max=384"])
    assert "train_random_crop_max (384)" in msg and "train_random_crop_min (384)" in msg


def test_eval_class_ids_must_be_below_num_classes():
    msg = _load_error(Path(), ["dataset.num_classes=3", "dataset.eval_class_ids=[1, 5]"])
    assert "[5]" in msg and "dataset.num_classes = 3" in msg


def test_lr_steps_beyond_num_epochs_is_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, ["train.num_epochs=5", "train.optim.lr_steps=[10, 20]"])
    lines = [r.getMessage() for r in caplog.records if "lr_steps" in r.getMessage()]
    assert len(lines) == 1 and "never decays" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        load_spec(None, ["train.num_epochs=5", "train.optim.lr_steps=[3, 20]"])
    assert not [r for r in caplog.records if "lr_steps" in r.getMessage()]
    # a training-only warning: not shown to evaluate, export, dataset, ...
    for action, shown in (("evaluate", 0), ("dataset", 0), ("train", 1), ("automl", 1)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
            load_spec(None, ["train.num_epochs=5", "train.optim.lr_steps=[10]"], action=action)
        assert len([r for r in caplog.records if "lr_steps" in r.getMessage()]) == shown, action


def test_values_tao_allows_are_accepted_and_the_meaningless_ones_warn_once(caplog):
    """TAO's schema: lr and lr_decay from 0, dropout_ratio up to 1, focal_alpha unbounded, momentum 0..1."""
    odd = ["train.optim.lr=0", "train.optim.lr_decay=0", "model.dropout_ratio=1", "model.focal_alpha=1.5"]
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        spec = load_spec(None, [*odd, "train.optim.momentum=0"], action="train")
    assert (spec.train.optim.lr, spec.train.optim.lr_decay, spec.model.focal_alpha) == (0, 0, 1.5)
    lines = [r.getMessage() for r in caplog.records if "TAO's schema accepts" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    for field in (
        "train.optim.lr=0",
        "train.optim.lr_decay=0",
        "model.dropout_ratio=1",
        "model.focal_alpha=1.5",
    ):
        assert field in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        assert load_spec(None, ["model.focal_alpha=-0.5", "train.optim.momentum=1"]).model.focal_alpha == -0.5
        load_spec(None, [])
    lines = [r.getMessage() for r in caplog.records if "TAO's schema accepts" in r.getMessage()]
    assert len(lines) == 1 and "model.focal_alpha=-0.5" in lines[0] and "momentum" not in lines[0]
    for bad in ("train.optim.momentum=1.01", "train.optim.lr_decay=1.5", "train.optim.lr=-1e-4"):
        assert bad.split("=")[0] in _load_error(Path(), [bad])


def test_dump_spec_round_trips_atomically(tmp_path):
    spec = load_spec(TAO_SPEC, ["train.optim.lr_steps=[3, 7]"])
    out = dump_spec(spec, tmp_path / "sub" / "experiment.yaml")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["experiment.yaml"]
    assert load_spec(out) == spec


def test_merge_model_from_checkpoint_uses_checkpoint_architecture(caplog):
    spec_model = ModelSection(hidden_dim=64, enc_layers=1, num_select=50, num_queries=100)
    ckpt = ModelSection(hidden_dim=32, enc_layers=2, num_select=10, num_queries=100).model_dump()
    ckpt["some_old_key"] = 1
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        merged = merge_model_from_checkpoint(spec_model, ckpt)
    assert merged.hidden_dim == 32 and merged.enc_layers == 2  # architecture from the checkpoint
    assert merged.num_select == 50  # post-processing from the spec
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "hidden_dim spec=64 checkpoint=32" in lines[0] and "enc_layers spec=1 checkpoint=2" in lines[0]
    assert "num_select" not in lines[0]


def test_merge_without_differences_is_silent(caplog):
    model = ModelSection(hidden_dim=32)
    with caplog.at_level(logging.WARNING, logger="ddetr.spec.load"):
        assert merge_model_from_checkpoint(model, model.model_dump()) == model
    assert not caplog.records


def test_interpolations_resolve_against_the_spec_and_variables(tmp_path):
    text = (
        "data_root: /data/coco\n"
        "results_dir: /res\n"
        "dataset:\n"
        "  num_classes: 3\n"
        "  train_data_sources:\n"
        "    - {image_dir: '${data_root}/train', json_file: '${data_root}/train.json'}\n"
        "evaluate:\n"
        "  checkpoint: ${results_dir}/train/dd_model_latest.pth\n"
        "  batch_size: ${dataset.num_classes}\n"
    )
    spec = load_spec(_write(tmp_path, text), ["data_root=/mnt/coco"])
    assert spec.dataset.train_data_sources[0].image_dir == "/mnt/coco/train"
    assert spec.evaluate.checkpoint == "/res/train/dd_model_latest.pth"
    assert spec.evaluate.batch_size == 3  # a whole-value reference keeps the type


def test_unresolvable_interpolation_and_unused_unknown_top_level_key():
    msg = _load_error(Path(), ["evaluate.checkpoint=${nowhere}/m.pth"])
    assert "evaluate.checkpoint" in msg and "nowhere" in msg
    assert "unknown key 'data_root'" in _load_error(Path(), ["data_root=/x"])
