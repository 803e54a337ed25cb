"""The model card: serial form, its readers' errors, and the rule that decides what the spec may change."""

from __future__ import annotations

import logging

import pytest
import torch

from ddetr.artefacts.card import CARD_VERSION, ModelCard, card_for_spec, card_from_parts
from ddetr.errors import CheckpointError
from ddetr.spec.load import load_spec
from ddetr.spec.sections import IMAGENET_MEAN, IMAGENET_STD, ModelSection


def _card(**changes) -> ModelCard:
    section = ModelSection(num_queries=30, num_select=30)
    return ModelCard(model=section, num_classes=4, class_names=("", "a", "b", "c"), num_select=30).evolve(
        **changes
    )


def test_round_trip_of_the_serial_form() -> None:
    card = _card(mean=(0.1, 0.2, 0.3), input_size=(64, 48), batch_size=2, trt_plugin=True, source="m.pth")
    data = card.to_dict()
    assert data["card_version"] == CARD_VERSION and "encrypted" not in data
    assert ModelCard.from_dict(data, "x") == card
    assert ModelCard.from_dict(data, "x").source == "m.pth"


def test_defaults_come_from_the_spec() -> None:
    card = ModelCard(model=ModelSection(), num_classes=2)
    assert card.mean == IMAGENET_MEAN and card.std == IMAGENET_STD
    assert (card.shortest_side, card.max_size, card.input_size) == (800, 1333, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_classes": 2}, "no 'model' entry"),
        ({"model": {}, "num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"model": {}, "num_classes": True}, "num_classes must be an integer >= 1"),
        ({"model": {"nheads": "x"}, "num_classes": 2}, r"model\.nheads"),
        ({"model": {}, "num_classes": 2, "mean": [1, 2]}, "needs 3 values"),
        ({"model": {}, "num_classes": 2, "input_size": [64]}, "invalid model card entry"),
        ({"model": {}, "num_classes": 2, "class_names": ["a", "b", "c"]}, "3 class names for num_classes=2"),
        # tensors where lists belong (found by tests/test_fuzz.py): no "Boolean value of Tensor" traceback
        ({"model": {}, "num_classes": 2, "class_names": torch.zeros(2)}, "class_names must be a list"),
        ({"model": {}, "num_classes": 2, "class_names": "ab"}, "class_names must be a list"),
        ({"model": {}, "num_classes": 2, "mean": torch.zeros(3)}, "invalid model card entry"),
        ({"model": {}, "num_classes": 2, "input_size": torch.ones(2)}, "invalid model card entry"),
        ({"model": {}, "num_classes": 2, "input_size": {"card_version": None}}, "invalid model card entry"),
    ],
)
def test_broken_cards_are_one_line_errors(data: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as err:
        card_from_parts(data, "file.onnx")
    assert str(err.value).startswith("file.onnx") and "\n" not in str(err.value)


def test_newer_card_version_is_refused() -> None:
    with pytest.raises(CheckpointError, match="newer than this ddetr reads"):
        ModelCard.from_dict({**_card().to_dict(), "card_version": CARD_VERSION + 1}, "x")


def test_from_spec_takes_architecture_preprocessing_and_names() -> None:
    spec = load_spec(
        None, ["dataset.num_classes=3", "model.num_select=17", "dataset.augmentation.test_random_resize=512"]
    )
    card = ModelCard.from_spec(spec, ["", "x", "y"])
    assert (card.num_classes, card.num_select, card.shortest_side) == (3, 17, 512)
    assert card.class_names == ("", "x", "y") and card.model == spec.model


def test_spec_defaults_leave_the_card_alone(caplog: pytest.LogCaptureFixture) -> None:
    card = _card(mean=(0.5, 0.5, 0.5), shortest_side=96)
    spec = load_spec(None, [], action="inference")
    with caplog.at_level(logging.WARNING):
        assert card_for_spec(card, spec, "inference") == card
    assert caplog.text == ""


def test_spec_values_win_with_one_warning_naming_each_field(caplog: pytest.LogCaptureFixture) -> None:
    card = _card()
    spec = load_spec(
        None,
        action="evaluate",
        overrides=[
            "model.num_select=12",
            "dataset.augmentation.input_mean=[0.5, 0.5, 0.5]",
            "dataset.augmentation.test_random_resize=640",
            "dataset.augmentation.random_resize_max_size=1333",  # set, but equal to the card: no mention
        ],
    )
    with caplog.at_level(logging.WARNING):
        out = card_for_spec(card, spec, "evaluate")
    assert (out.num_select, out.mean, out.shortest_side, out.max_size) == (12, (0.5, 0.5, 0.5), 640, 1333)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "model.num_select spec=12 model=30" in text and "dataset.augmentation.input_mean" in text
    assert "test_random_resize spec=640 model=800" in text and "random_resize_max_size" not in text


def test_input_size_from_the_spec_or_fixed_by_the_artefact(caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(None, ["inference.input_width=96", "inference.input_height=64"])
    assert card_for_spec(_card(), spec, "inference").input_size == (96, 64)
    assert card_for_spec(_card(), spec, "evaluate").input_size is None  # evaluate's own fields are unset
    fixed = _card(input_size=(64, 64))
    with caplog.at_level(logging.WARNING):
        assert card_for_spec(fixed, spec, "inference").input_size == (64, 64)
    assert "exported for 64x64" in caplog.text


def test_spec_objects_keep_what_was_written(caplog: pytest.LogCaptureFixture) -> None:
    """A Spec built in Python says what was set by assignment too; reloading it with overrides keeps that."""
    spec = load_spec(None, [], action="inference")
    spec.dataset.augmentation.test_random_resize = 512  # assignment: a written value
    reloaded = load_spec(spec, [("inference.conf_threshold", 0.1)], action="inference")
    card = _card()
    for candidate in (spec, reloaded):
        out = card_for_spec(card, candidate, "inference")
        assert out.shortest_side == 512 and out.num_select == 30 and out.mean == card.mean
    assert "num_select" not in reloaded.model.model_fields_set  # a default stays unset through the reload
