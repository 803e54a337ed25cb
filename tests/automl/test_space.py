"""The search space: defaults from the field metadata, user ranges, and the rules every trial keeps."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddetr.automl.space import (
    ConstraintViolation,
    all_fields,
    apply_values,
    build_space,
    default_hyperparameters,
    searchable_fields,
    violations,
)
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.spec.sections import AugmentationSection, ModelSection, OptimSection

# docs/SPEC.md, "Fields AutoML searches by default"
SPEC_TABLE = {
    "model.num_queries": (100, 900),
    "model.num_select": (1, 1000),
    "model.enc_layers": (1, 12),
    "model.dec_layers": (1, 12),
    "dataset.batch_size": (1, None),
    "dataset.augmentation.horizontal_flip_prob": (0, 1),
    "dataset.augmentation.train_random_crop_min": (32, None),
    "dataset.augmentation.train_random_crop_max": (32, 1333),
    "train.optim.lr": (0, 0.01),
    "train.optim.lr_backbone": (0, 0.001),
    "train.optim.lr_linear_proj_mult": (0, 1),
    "train.optim.momentum": (0, 1),
    "train.optim.weight_decay": (0, 0.1),
    "train.optim.lr_step_size": (1, 10000),
    "train.optim.lr_decay": (0, 1),
}


def test_default_fields_are_the_spec_table() -> None:
    assert set(default_hyperparameters()) == set(SPEC_TABLE)


def test_default_ranges_follow_the_metadata(tiny_spec_file: Path) -> None:
    spec = load_spec(tiny_spec_file)
    params = {p.name: p for p in build_space(spec).params}
    for name, (low, high) in SPEC_TABLE.items():
        p = params[name]
        assert p.low >= low and (p.low == low or low == 0), name
        if high is not None:
            assert p.high == high, name
        else:
            assert p.high > p.low, name
    assert params["train.optim.lr"].log and params["train.optim.lr"].low > 0
    assert not params["train.optim.momentum"].log and params["train.optim.momentum"].low > 0
    # dependency order: a field comes after the fields its condition names
    names = [p.name for p in build_space(spec).params]
    assert names.index("model.num_queries") < names.index("model.num_select")
    crop_min = "dataset.augmentation.train_random_crop_min"
    assert names.index(crop_min) < names.index("dataset.augmentation.train_random_crop_max")
    assert params[crop_min].high < 1333  # capped below the max's top so a max always exists


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["automl.hyperparameters=[model.nonexistent]"], "does not exist"),
        (["automl.hyperparameters=[model.hidden_dim]"], "cannot be searched"),
        (["automl.hyperparameters=[dataset.train_data_sources]"], "not a searchable field"),
        (
            ["automl.hyperparameters=[train.optim.lr]", "automl.range_override={train.optim.lr: [-1, 0.1]}"],
            "outside",
        ),
        (
            [
                "automl.hyperparameters=[train.optim.momentum]",
                "automl.range_override={train.optim.momentum: [0.1, 2]}",
            ],
            "outside",
        ),
        (
            [
                "automl.hyperparameters=[model.enc_layers]",
                "automl.range_override={model.enc_layers: [1, 300]}",
            ],
            "outside",
        ),
        (
            ["automl.hyperparameters=[model.enc_layers]", "automl.range_override={model.dec_layers: [1, 2]}"],
            "not searched",
        ),
        (
            [
                "automl.hyperparameters=[model.enc_layers]",
                "automl.range_override={model.enc_layers: [1.5, 3]}",
            ],
            "outside",
        ),
        (
            ["automl.hyperparameters=[model.enc_layers]", "automl.range_override={model.enc_layers: [5, 2]}"],
            "larger",
        ),
        (
            [
                "automl.hyperparameters=[train.optim.optimizer]",
                "automl.range_override={train.optim.optimizer: [Adam]}",
            ],
            "not valid",
        ),
        (["automl.hyperparameters=[model.cls_loss_coef]"], "bounded range"),
        (["automl.algorithm=grid", "automl.hyperparameters=[train.optim.lr]"], "grid needs"),
    ],
)
def test_bad_search_space_is_one_line_error(tiny_spec_file: Path, overrides: list[str], needle: str) -> None:
    spec = load_spec(tiny_spec_file, overrides)
    with pytest.raises(SpecError, match=needle) as info:
        build_space(spec)
    assert "\n" not in str(info.value)


def test_unknown_metric_is_a_spec_error(tiny_spec_file: Path) -> None:
    with pytest.raises(SpecError, match=r"automl\.metric"):
        load_spec(tiny_spec_file, ["automl.metric=accuracy"])


def test_extra_fields_and_overrides(tiny_spec_file: Path) -> None:
    spec = load_spec(
        tiny_spec_file,
        [
            "automl.hyperparameters=[model.dropout_ratio, train.optim.optimizer, train.optim.lr, model.aux_loss]",
            "automl.range_override={model.dropout_ratio: [0.0, 0.5], train.optim.lr: {min: 1e-5, max: 1e-3, log: true}}",
        ],
    )
    params = {p.name: p for p in build_space(spec).params}
    assert (params["model.dropout_ratio"].low, params["model.dropout_ratio"].high) == (0.0, 0.5)
    assert params["train.optim.optimizer"].choices == ("AdamW", "SGD")
    assert params["model.aux_loss"].choices == (False, True)
    assert params["train.optim.lr"].log and params["train.optim.lr"].low == 1e-5


def test_empty_conditional_range_is_a_constraint_violation(tiny_spec_file: Path) -> None:
    # num_select in [30, 40] but num_queries is 20: no value keeps num_select <= num_queries
    spec = load_spec(
        tiny_spec_file,
        ["automl.hyperparameters=[model.num_select]", "automl.range_override={model.num_select: [30, 40]}"],
    )
    space = build_space(spec)
    study = optuna.create_study()
    with pytest.raises(ConstraintViolation, match="num_select"):
        space.suggest(study.ask(), spec)


class DrawTrial:
    """An Optuna-like trial whose values hypothesis chooses (edges included)."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return self.draw(st.integers(low, high))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return self.draw(st.floats(low, high, allow_nan=False))

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.draw(st.sampled_from(choices))


@pytest.fixture
def base_file(tiny_spec_file: Path) -> Path:
    return tiny_spec_file


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    num_classes=st.integers(1, 6),
    sel_low=st.integers(1, 50),
    q_high=st.integers(1, 60),
    crop_min_high=st.integers(33, 200),
)
def test_sampled_trials_never_break_a_rule(
    base_file: Path, data: st.DataObject, num_classes: int, sel_low: int, q_high: int, crop_min_high: int
) -> None:
    overrides = [
        f"dataset.num_classes={num_classes + 1}",
        "model.num_queries=1",
        "model.num_select=1",
        "automl.hyperparameters=[model.num_queries, model.num_select, dataset.augmentation.train_random_crop_min,"
        " dataset.augmentation.train_random_crop_max, train.optim.lr, train.optim.weight_decay]",
        f"automl.range_override={{model.num_queries: [1, {q_high}], model.num_select: [{sel_low}, 100],"
        f" dataset.augmentation.train_random_crop_min: [32, {crop_min_high}],"
        " dataset.augmentation.train_random_crop_max: [32, 200]}",
    ]
    spec = load_spec(base_file, overrides)
    space = build_space(spec)
    try:
        values = space.suggest(DrawTrial(data.draw), spec)
    except ConstraintViolation:
        # only when num_select's own minimum cannot fit below every possible num_queries
        assert sel_low > 1
        return
    trial_spec = apply_values(spec, values)
    assert violations(trial_spec) == []
    m = trial_spec.model
    assert m.num_select <= m.num_queries and m.num_select < m.num_queries * trial_spec.dataset.num_classes
    aug = trial_spec.dataset.augmentation
    assert aug.train_random_crop_max > aug.train_random_crop_min
    assert trial_spec.train.optim.lr > 0 and trial_spec.train.optim.weight_decay > 0


@pytest.mark.parametrize(
    "sampler", [optuna.samplers.RandomSampler(seed=1), optuna.samplers.TPESampler(seed=1)]
)
def test_optuna_samplers_keep_the_rules(tiny_spec_file: Path, sampler: optuna.samplers.BaseSampler) -> None:
    spec = load_spec(tiny_spec_file)
    space = build_space(spec)
    study = optuna.create_study(sampler=sampler)
    for i in range(120):
        trial = study.ask()
        values = space.suggest(trial, spec)
        trial_spec = apply_values(spec, values)
        assert violations(trial_spec) == []
        study.tell(trial, math.sin(i))


def test_searchable_fields_exclude_never_searched() -> None:
    fields = searchable_fields()
    for name in (
        "model.hidden_dim",
        "model.nheads",
        "model.num_feature_levels",
        "dataset.augmentation.scales",
        "dataset.augmentation.test_random_resize",
        "dataset.workers",
        "dataset.eval_class_ids",
        "train.optim.monitor_name",
    ):
        assert name not in fields
    assert "model.dropout_ratio" in fields and "train.optim.lr" in fields


@pytest.mark.parametrize(
    ("section", "name", "path"),
    [
        (ModelSection, "hidden_dim", "model.hidden_dim"),
        (ModelSection, "nheads", "model.nheads"),
        (ModelSection, "num_feature_levels", "model.num_feature_levels"),
        (AugmentationSection, "test_random_resize", "dataset.augmentation.test_random_resize"),
        (OptimSection, "monitor_name", "train.optim.monitor_name"),
    ],
)
def test_never_searched_comes_from_the_field_metadata(
    monkeypatch: pytest.MonkeyPatch, section: type, name: str, path: str
) -> None:
    """Without its ``never_searched`` flag, the same field becomes searchable: the space reads the metadata."""
    assert path not in searchable_fields()
    info = section.model_fields[name]
    meta = dict(info.json_schema_extra or {})
    reason = meta.pop("never_searched")
    monkeypatch.setattr(info, "json_schema_extra", meta or None)
    all_fields.cache_clear()
    try:
        assert path in searchable_fields()
    finally:
        monkeypatch.undo()
        all_fields.cache_clear()
    assert path not in searchable_fields()
    with pytest.raises(SpecError, match=re.escape(f"cannot be searched: {reason}")):
        build_space(load_spec(None, [f"automl.hyperparameters=[{path}]"]))


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [("tpe", "TPESampler"), pytest.param("gp", "GPSampler", marks=pytest.mark.slow)],  # GP fitting: ~30 s
)
def test_bayesian_sampler_choice_keeps_the_rules(tiny_spec_file: Path, sampler: str, expected: str) -> None:
    from ddetr.automl.search import make_sampler

    spec = load_spec(tiny_spec_file, ["automl.algorithm=bayesian", f"automl.sampler={sampler}"])
    space = build_space(spec)
    chosen = make_sampler(spec, space)
    assert type(chosen).__name__ == expected
    study = optuna.create_study(sampler=chosen, direction="maximize")
    for i in range(12):
        trial = study.ask()
        trial_spec = apply_values(spec, space.suggest(trial, spec))
        assert violations(trial_spec) == []
        study.tell(trial, math.cos(i))
