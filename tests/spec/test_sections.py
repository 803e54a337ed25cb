"""Spec sections: defaults and ranges of docs/SPEC.md, markers, metadata, require()."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ddetr.errors import SpecError
from ddetr.spec.sections import (
    MISSING,
    DataSource,
    InferDataSource,
    ModelSection,
    Spec,
    field_meta,
    is_set,
    require,
)


def test_defaults_follow_spec_md():
    s = Spec()
    assert s.model.num_queries == 300 and s.model.dropout_ratio == 0.3 and s.model.num_select == 300
    assert s.dataset.num_classes == 91 and s.dataset.batch_size == 4 and s.dataset.eval_class_ids is None
    assert s.dataset.train_data_sources == [DataSource(image_dir="", json_file="")]
    assert s.dataset.infer_data_sources == InferDataSource(image_dir=[""], classmap="")
    assert s.dataset.augmentation.train_random_crop_max == 600
    assert s.train.num_epochs == 10 and s.train.seed == 1234 and s.train.optim.lr == 2e-4
    assert s.train.optim.lr_steps == [40] and s.train.checkpoint_interval_unit == "epoch"
    assert s.evaluate.conf_threshold == 0.0 and s.inference.conf_threshold == 0.5
    assert s.export.opset_version == 17 and s.export.input_width == 640 and s.export.batch_size == -1
    assert s.quantize.backend == "torchao" and s.quantize.device == "cuda"
    assert s.gen_trt_engine.tensorrt.data_type == "FP32" and s.gen_trt_engine.tensorrt.workspace_size == 1024
    assert s.wandb.enable is False and s.results_dir == "" and s.automl_policy == "off"
    a = s.automl
    assert (a.enabled, a.algorithm, a.metric, a.direction) == (False, "bayesian", "val_mAP", "maximize")
    assert (a.max_recommendations, a.max_epochs, a.reduction_factor, a.max_concurrent) == (20, 27, 3, 1)
    assert (a.hyperparameters, a.range_override, a.storage, a.study_name, a.timeout_minutes) == (
        [],
        {},
        "",
        "",
        0,
    )


def test_mutable_defaults_are_not_shared():
    a, b = Spec(), Spec()
    a.train.optim.lr_steps.append(5)
    a.dataset.train_data_sources[0].image_dir = "x"
    assert b.train.optim.lr_steps == [40]
    assert b.dataset.train_data_sources[0].image_dir == ""


def test_null_means_default_and_missing_marker_is_kept_for_strings():
    s = Spec.model_validate(
        {
            "encryption_key": None,
            "model": {"pretrained_backbone_path": None},
            "inference": {"color_map": None, "checkpoint": MISSING},
            "dataset": {"train_data_sources": None, "eval_class_ids": None},
            "gen_trt_engine": {
                "tensorrt": {"calibration": {"cal_image_dir": MISSING, "cal_cache_file": MISSING}}
            },
        }
    )
    assert s.encryption_key == "" and s.model.pretrained_backbone_path == ""
    assert s.inference.color_map == {} and s.inference.checkpoint == MISSING
    assert s.dataset.train_data_sources == [DataSource()]
    assert s.gen_trt_engine.tensorrt.calibration.cal_image_dir == []
    assert s.gen_trt_engine.tensorrt.calibration.cal_cache_file == MISSING


def test_single_train_source_mapping_is_wrapped_in_a_list():
    s = Spec.model_validate({"dataset": {"train_data_sources": {"image_dir": "a", "json_file": "b"}}})
    assert s.dataset.train_data_sources == [DataSource(image_dir="a", json_file="b")]


def test_infer_image_dir_accepts_a_string_or_a_list():
    assert InferDataSource(image_dir="imgs").image_dir == "imgs"
    assert InferDataSource(image_dir=["a", "b"]).image_dir == ["a", "b"]


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("model", {"num_feature_levels": 6}),
        ("model", {"enc_layers": 0}),
        ("model", {"dec_layers": 257}),
        ("dataset", {"batch_size": 0}),
        ("train", {"optim": {"lr": -1e-4}}),  # 0 is in TAO's range (a warning)
        ("train", {"precision": "fp8"}),
        ("evaluate", {"conf_threshold": 1.5}),
        ("quantize", {"device": "gpu0"}),
        ("automl", {"reduction_factor": 1}),
        ("automl", {"algorithm": "genetic"}),
    ],
)
def test_out_of_range_or_invalid_values_are_rejected(section, values):
    with pytest.raises(ValidationError):
        Spec.model_validate({section: values})


def test_case_is_normalised_for_tao_spellings():
    s = Spec.model_validate(
        {"train": {"precision": "FP16"}, "gen_trt_engine": {"tensorrt": {"data_type": "fp16"}}}
    )
    assert s.train.precision == "fp16" and s.gen_trt_engine.tensorrt.data_type == "FP16"


def test_yaml_on_off_booleans_become_the_policy_words():
    assert Spec.model_validate({"automl_policy": True}).automl_policy == "on"
    assert Spec.model_validate({"automl_policy": False}).automl_policy == "off"


def test_unknown_keys_are_rejected_everywhere():
    for data in ({"bogus": 1}, {"wandb": {"bogus": 1}}, {"dataset": {"augmentation": {"bogus": 1}}}):
        with pytest.raises(ValidationError):
            Spec.model_validate(data)


def test_automl_table_of_spec_md_is_field_metadata():
    from ddetr.spec.sections import AugmentationSection, DatasetSection, OptimSection

    assert field_meta(ModelSection, "num_queries")["automl_range"] == [100, 900]
    assert field_meta(ModelSection, "num_select")["condition"].startswith("<= num_queries")
    assert field_meta(DatasetSection, "batch_size")["automl"] is True
    assert "automl" not in field_meta(DatasetSection, "workers")
    assert field_meta(AugmentationSection, "train_random_crop_max")["automl_range"] == [32, 1333]
    assert field_meta(OptimSection, "lr")["automl_range"] == [0.0, 0.01]
    assert field_meta(OptimSection, "lr_step_size")["automl_range"] == [1, 10000]
    assert "automl" not in field_meta(ModelSection, "hidden_dim")


def test_automl_never_searched_fields_are_field_metadata():
    from pydantic import BaseModel

    def flagged(model: type[BaseModel], prefix: str = "") -> set[str]:
        found = set()
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                found |= flagged(info.annotation, f"{prefix}{name}.")
            elif field_meta(model, name).get("never_searched"):
                found.add(f"{prefix}{name}")
        return found

    # docs/automl.md, "Never searched"
    assert flagged(Spec) == {
        "model.hidden_dim",
        "model.nheads",
        "model.dec_nheads",
        "model.return_interm_indices",
        "model.num_feature_levels",
        "dataset.augmentation.scales",
        "dataset.augmentation.test_random_resize",
        "dataset.eval_class_ids",
        "dataset.workers",
        "dataset.num_classes",
        "train.optim.monitor_name",
    }
    assert "must divide model.hidden_dim" in field_meta(ModelSection, "nheads")["never_searched"]


def test_inert_fields_are_marked():
    from ddetr.spec.sections import DatasetSection, WandbSection

    assert field_meta(ModelSection, "clip_max_norm")["inert"] is True
    assert field_meta(DatasetSection, "dataset_type")["inert"] is True
    assert not any(field_meta(WandbSection, n).get("inert") for n in WandbSection.model_fields)  # W&B works
    assert field_meta(Spec, "model_name")["inert"] is True
    # fields nothing reads (their TAO meaning is not implemented)
    from ddetr.spec.sections import (
        AugmentationSection,
        CudnnSection,
        EvaluateSection,
        ExportSection,
        GenTrtEngineSection,
        InferenceSection,
        TrainSection,
    )

    # implemented: the trainer reads them (tests/engine/test_trainer_flags.py)
    assert not any(field_meta(CudnnSection, n).get("inert") for n in CudnnSection.model_fields)
    assert "inert" not in field_meta(TrainSection, "activation_checkpoint")
    assert field_meta(AugmentationSection, "fixed_padding")["inert"] is True
    assert field_meta(InferenceSection, "is_internal")["inert"] is True
    assert field_meta(GenTrtEngineSection, "opset_version")["inert"] is True
    assert "inert" not in field_meta(GenTrtEngineSection, "gpu_id")  # the TensorRT build's device
    # read by the device plans (ddetr.engine.trainer, ddetr.runtime.devices)
    for section in (TrainSection, EvaluateSection, InferenceSection):
        assert "inert" not in field_meta(section, "gpu_ids")
    assert "inert" not in field_meta(ExportSection, "gpu_id")
    assert "inert" not in field_meta(ModelSection, "num_select")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", False),
        ("  ", False),
        (MISSING, False),
        (None, False),
        ([""], False),
        ("a.pth", True),
        (["a"], True),
        (0, True),
    ],
)
def test_is_set(value, expected):
    assert is_set(value) is expected


def test_require_names_the_missing_field():
    spec = Spec.model_validate({"evaluate": {"checkpoint": MISSING}})
    with pytest.raises(SpecError, match=r"evaluate\.checkpoint is required.*'\?\?\?'"):
        require(spec, "evaluate.checkpoint")
    with pytest.raises(SpecError, match=r"evaluate\.checkpoint is required"):
        require(Spec(), "evaluate.checkpoint")
    spec.evaluate.checkpoint = "m.pth"
    assert require(spec, "evaluate.checkpoint") == "m.pth"


def test_require_either_of_two_fields():
    spec = Spec.model_validate({"evaluate": {"checkpoint": MISSING, "trt_engine": "m.onnx"}})
    assert require(spec, "evaluate.checkpoint", "evaluate.trt_engine") == "m.onnx"
    with pytest.raises(SpecError, match=r"one of evaluate\.checkpoint or evaluate\.trt_engine"):
        require(Spec(), "evaluate.checkpoint", "evaluate.trt_engine")


def test_get_rejects_unknown_paths():
    assert Spec().get("train.optim.lr") == 2e-4
    with pytest.raises(SpecError, match=r"train\.optim\.learning_rate"):
        Spec().get("train.optim.learning_rate")
