"""The encryption key is a string taken verbatim from -k, encryption_key=KEY and DDETR_ENCRYPTION_KEY; in a
spec file it must be a quoted string; no message, log or file of a run ever contains it."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cli_helpers import DDETR
from ddetr.cli import main
from ddetr.crypto import MAGIC
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec

AWKWARD_KEYS = ["null", "~", "abc #def", "20240101", "yes", "${results_dir}", "[1, 2]", " spaced "]


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replaces the export task by one that records the spec it receives."""
    record: dict = {}

    def run(spec):
        record["spec"] = spec
        return {}

    monkeypatch.setitem(sys.modules, "ddetr.tasks.export", types.SimpleNamespace(run=run))
    monkeypatch.delenv("DDETR_ENCRYPTION_KEY", raising=False)
    return record


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_key_is_verbatim_from_every_source(key: str, seen: dict, tmp_path: Path, monkeypatch) -> None:
    assert main(["export", "-r", str(tmp_path), "-k", key]) == 0
    assert seen["spec"].encryption_key == key
    assert main(["export", "-r", str(tmp_path), f"encryption_key={key}"]) == 0
    assert seen["spec"].encryption_key == key
    monkeypatch.setenv("DDETR_ENCRYPTION_KEY", key)
    assert main(["export", "-r", str(tmp_path)]) == 0
    assert seen["spec"].encryption_key == key
    spec_file = tmp_path / "spec.yaml"
    quoted = key.replace("'", "''")
    spec_file.write_text(f"results_dir: {tmp_path}\nencryption_key: '{quoted}'\n")
    monkeypatch.delenv("DDETR_ENCRYPTION_KEY")
    assert load_spec(spec_file).encryption_key == key


def test_empty_key_still_means_no_encryption(seen: dict, tmp_path: Path) -> None:
    assert main(["export", "-r", str(tmp_path), "-k", ""]) == 0
    assert seen["spec"].encryption_key == ""
    assert load_spec(None, ["encryption_key="]).encryption_key == ""


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("20240101", "int"),
        ("null", "null"),
        ("~", "null"),
        ("", "null"),
        ("yes", "bool"),
        ("2024-01-01", "date"),
    ],
)
def test_unquoted_non_string_in_a_spec_file_asks_to_quote(tmp_path: Path, text: str, kind: str) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"encryption_key: {text}\n")
    with pytest.raises(SpecError, match=r"encryption_key must be a quoted string") as err:
        load_spec(spec_file)
    message = str(err.value)
    assert kind in message and "\n" not in message
    if text not in ("", "~", "null"):
        assert text not in message.replace(str(spec_file), "")


def test_unquoted_comment_in_a_spec_file_is_yaml(tmp_path: Path) -> None:
    # the documented rule: unquoted, YAML ends the value at " #"; quoted, the key is whole
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("encryption_key: abc #def\n")
    assert load_spec(spec_file).encryption_key == "abc"
    spec_file.write_text("encryption_key: 'abc #def'\n")
    assert load_spec(spec_file).encryption_key == "abc #def"


def test_python_api_key_must_be_a_string() -> None:
    with pytest.raises(
        SpecError, match=r"encryption_key must be a string, got a int \(the value is not shown\)"
    ):
        load_spec(None, [("encryption_key", 20240101)])


def test_spec_repr_hides_the_key() -> None:
    spec = load_spec(None, ["encryption_key=Zq7-repr-secret"])
    assert "Zq7-repr-secret" not in repr(spec) and "Zq7-repr-secret" not in str(spec)


KEY = "Qx9-distinctive-key #not-a-comment"
WRONG = "Wv4-other-distinctive-key"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DDETR), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


@pytest.mark.slow  # a whole train/evaluate/export run with the key (~25 s)
def test_the_key_appears_in_no_output_of_a_run(tiny_data: dict, tiny_overrides, tmp_path: Path) -> None:
    results = tmp_path / "results"
    overrides = [*tiny_overrides(tiny_data, results), "train.num_epochs=1"]
    env = {"DDETR_ENCRYPTION_KEY": ""}
    trained = _run("train", *overrides, "-k", KEY, env=env)
    assert trained.returncode == 0, trained.stderr
    ckpt = results / "train" / "dd_model_latest.pth"
    assert ckpt.resolve().read_bytes().startswith(MAGIC)  # encrypted with the whole key
    wrong = _run("evaluate", *overrides, f"evaluate.checkpoint={ckpt}", "-k", WRONG, env=env)
    assert wrong.returncode == 2 and "does not match" in wrong.stderr, wrong.stderr
    from_env = _run("evaluate", *overrides, f"evaluate.checkpoint={ckpt}", env={"DDETR_ENCRYPTION_KEY": KEY})
    assert from_env.returncode == 0, from_env.stderr
    outputs = [trained.stdout, trained.stderr, wrong.stdout, wrong.stderr, from_env.stdout, from_env.stderr]
    checked = 0
    for path in results.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if not data.startswith(MAGIC):
                outputs.append(data.decode("utf-8", "replace"))
                checked += 1
    assert checked >= 4  # experiment.yaml, status.json of both actions, metrics
    for text in outputs:
        for secret in (KEY, WRONG, "Qx9-distinctive", "Wv4-other"):
            assert secret not in text
