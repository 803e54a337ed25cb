"""Generated JSON schema and per-action YAML templates."""

from __future__ import annotations

import json

import pytest
import yaml

from ddetr.spec.load import load_spec
from ddetr.spec.schema import ACTION_SECTIONS, TOP_LEVEL_KEYS, automl_fields, json_schema, template_yaml
from ddetr.spec.sections import Spec


@pytest.mark.parametrize("action", list(ACTION_SECTIONS))
def test_template_loads_back_to_the_defaults(tmp_path, action):
    path = tmp_path / f"{action}.yaml"
    path.write_text(template_yaml(action))
    assert load_spec(path) == Spec()


@pytest.mark.parametrize("action", list(ACTION_SECTIONS))
def test_template_holds_only_the_sections_the_action_uses(action):
    data = yaml.safe_load(template_yaml(action))
    assert set(data) == set(TOP_LEVEL_KEYS) | set(ACTION_SECTIONS[action])


def test_template_comments_come_from_field_metadata():
    text = template_yaml("train")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("num_feature_levels:"))
    assert "feature levels fed to the transformer" in line and ">= 1" in line and "<= 5" in line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("clip_max_norm:"))
    assert "inert" in line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("enc_layers:"))
    assert "AutoML" in line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("hidden_dim:"))
    assert "never searched by AutoML" in line


def test_template_writes_given_values(tmp_path):
    spec = load_spec(None, ["train.num_epochs=7", "results_dir=/r"])
    path = tmp_path / "t.yaml"
    path.write_text(template_yaml("train", spec))
    loaded = load_spec(path)
    assert loaded.train.num_epochs == 7 and loaded.results_dir == "/r"


def test_json_schema_is_serialisable_and_carries_metadata():
    schema = json_schema()
    text = json.dumps(schema)
    assert '"automl": true' in text and '"inert": true' in text
    assert "AutomlSection" in schema["$defs"]


def test_automl_fields_match_the_table_of_spec_md():
    fields = automl_fields()
    assert set(fields) == {
        "model.num_queries",
        "model.num_select",
        "model.enc_layers",
        "model.dec_layers",
        "dataset.batch_size",
        "dataset.augmentation.horizontal_flip_prob",
        "dataset.augmentation.train_random_crop_min",
        "dataset.augmentation.train_random_crop_max",
        "train.optim.lr",
        "train.optim.lr_backbone",
        "train.optim.lr_linear_proj_mult",
        "train.optim.momentum",
        "train.optim.weight_decay",
        "train.optim.lr_step_size",
        "train.optim.lr_decay",
    }
    assert fields["model.enc_layers"]["le"] == 256 and fields["model.enc_layers"]["automl_range"] == [1, 12]
    assert fields["model.num_queries"]["automl_range"] == [
        100,
        900,
    ]
    assert fields["train.optim.lr"]["condition"] == "> 0" and fields["train.optim.lr"]["type"] == "float"
