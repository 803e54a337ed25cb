"""The agent skill bundle and docs/spec-reference.md: generated from the spec models, committed, never stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cli_helpers import run_ddetr
from ddetr.cli import main
from ddetr.spec.load import load_spec
from ddetr.spec.skill import SKILL_ACTIONS, bundle_files, generated_files, tao_schema

ROOT = Path(__file__).resolve().parents[2]
TAO_TEMPLATES = Path(__file__).parent / "data" / "tao_templates"


def test_committed_bundle_and_reference_match_a_fresh_generation() -> None:
    stale = []
    for relative, text in generated_files().items():
        path = ROOT / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    extra = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "skill").rglob("*") if p.is_file())
    extra = [p for p in extra if p not in generated_files()]
    assert not stale and not extra, (
        f"generated files are stale {stale} or unexpected {extra}: run `make skill` and commit the result"
    )


def test_readme_links_the_generated_spec_reference() -> None:
    """Issue 9 calls it docs/spec.md; it is docs/spec-reference.md (SPEC.md would collide on case-insensitive disks)."""
    assert "(docs/spec-reference.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/spec-reference.md" in generated_files()


def test_generation_is_deterministic() -> None:
    assert bundle_files() == bundle_files()
    assert "202" not in json.dumps(tao_schema("train")["x_tao_schema"])  # no dates


# TAO's type words as JSON types; a field with "nullable": true also takes null
_TAO_TYPES = {
    "bool": lambda c, v: isinstance(v, bool),
    "int": lambda c, v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda c, v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda c, v: isinstance(v, str),
    "categorical": lambda c, v: isinstance(v, (str, int, float, bool)),
    "list": lambda c, v: isinstance(v, list),
    "collection": lambda c, v: isinstance(v, dict),
    "object": lambda c, v: isinstance(v, dict),
}


def _type(validator: Any, types: Any, instance: Any, schema: dict) -> Any:
    if instance is None and schema.get("nullable"):
        return
    for word in types if isinstance(types, list) else [types]:
        if validator.is_type(instance, word):
            return
    yield jsonschema.ValidationError(f"{instance!r} is not of type {types!r}")


def _enum(validator: Any, enums: Any, instance: Any, schema: dict) -> Any:
    if instance is None and schema.get("nullable"):
        return
    if instance not in enums:
        yield jsonschema.ValidationError(f"{instance!r} is not one of {enums!r}")


TaoValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    validators={"type": _type, "enum": _enum},
    type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine_many(_TAO_TYPES),
)


def _closed(schema: dict) -> dict:
    """The schema with unknown keys refused in every collection (as ddetr's loader refuses them)."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        out["additionalProperties"] = False
    return out


def _errors(schema: dict, instance: Any) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in TaoValidator(_closed(schema)).iter_errors(instance)]


@pytest.mark.parametrize("action", SKILL_ACTIONS)
def test_template_validates_against_its_schema_and_loads_unchanged(action: str, tmp_path: Path) -> None:
    schema = tao_schema(action)
    template = ROOT / "skill" / "references" / f"spec_template_{action}.yaml"
    data = yaml.safe_load(template.read_text())
    assert data == schema["default"]
    assert _errors(schema, data) == []
    spec = load_spec(template, action=action if action != "dataset" else None)
    dumped = spec.model_dump(mode="json")
    assert {k: dumped[k] for k in data} == data  # every value loads back unchanged
    # and through the command line: the template is the spec of `ddetr skill`
    assert main(["skill", "-e", str(template), f"results_dir={tmp_path}"]) == 0
    assert (tmp_path / "schemas" / f"{action}.schema.json").read_text() == bundle_files()[
        f"schemas/{action}.schema.json"
    ]


def test_schema_validation_catches_bad_values() -> None:
    schema = tao_schema("train")
    data = yaml.safe_load((ROOT / "skill" / "references" / "spec_template_train.yaml").read_text())
    data["model"]["num_queries"] = 0
    data["train"]["optim"]["optimizer"] = "Adam"
    data["train"]["no_such_field"] = 1
    errors = _errors(schema, data)
    assert len(errors) == 3, errors


@pytest.mark.parametrize("name", sorted(p.stem for p in TAO_TEMPLATES.glob("*.yaml")))
def test_every_tao_template_validates_against_our_schema(name: str) -> None:
    action = name.removeprefix("deploy_")
    data = yaml.safe_load((TAO_TEMPLATES / f"{name}.yaml").read_text())
    assert _errors(_missing_as_any(tao_schema(action), data), data) == []


def _missing_as_any(schema: dict, data: Any) -> dict:
    """TAO's ``???`` stands for a value not given yet: any type is allowed where the template writes it."""
    out = dict(schema)
    if isinstance(data, dict) and "properties" in schema:
        out["properties"] = {
            k: (_missing_as_any(v, data[k]) if k in data else v) for k, v in schema["properties"].items()
        }
    elif data == "???" or (isinstance(data, list) and "???" in data):
        out = {"title": schema.get("title", "")}
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        out.pop("type", None)
    return out


def test_skill_md_names_the_checkpoints_training_writes() -> None:
    from ddetr.engine.callbacks import CHECKPOINT_FILENAME, LATEST_NAME

    text = bundle_files()["SKILL.md"]
    assert f"{LATEST_NAME}.pth" in text
    assert CHECKPOINT_FILENAME == "model_epoch_{epoch:03d}_step_{step:05d}"
    assert "model_epoch_<EEE>_step_<SSSSS>.pth" in text
    assert "automl_policy: on" in text and "automl_policy: off" in text


def test_skill_info_lists_every_action_with_its_command() -> None:
    info = yaml.safe_load(bundle_files()["references/skill_info.yaml"])
    assert info["automl_enabled"] is True and set(info["actions"]) == set(SKILL_ACTIONS)
    assert info["actions"]["export"]["command"] == "ddetr export -e {config_path}"
    assert info["spec_shorthand_keys"]["trt_data_type"] == "gen_trt_engine.tensorrt.data_type"
    manifest = json.loads(bundle_files()["schemas/manifest.json"])
    assert set(manifest["actions"]) == set(SKILL_ACTIONS)


def test_ddetr_skill_command_writes_the_bundle(tmp_path: Path) -> None:
    proc = run_ddetr("skill", f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith("skill/")] == sorted(bundle_files())
    for relative, text in bundle_files().items():
        assert (tmp_path / relative).read_text() == text
