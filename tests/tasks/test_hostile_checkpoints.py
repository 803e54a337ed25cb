"""Malicious checkpoints handed to ddetr never run code: resume (the real ``ddetr train`` command, with and
without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), train.pretrained_model_path and import_weights."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cli_helpers import DDETR
from ddetr.cli import main
from hostile_payload import save_malicious

FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
BLOCKED = re.compile(r"refused: the file needs the Python global '(builtins|io)\.open'")


def _only_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.mark.parametrize("force", [None, "1"], ids=["plain-env", "force-no-weights-only"])
def test_train_resume_from_a_malicious_latest_checkpoint(
    tiny_data: dict, tiny_overrides, tmp_path: Path, force: str | None
) -> None:
    results = tmp_path / "results"
    marker = tmp_path / "executed"
    evil = save_malicious(results / "train" / "dd_model_latest.pth", marker)
    env = {k: v for k, v in os.environ.items() if k != FORCE}
    if force:
        env[FORCE] = force
    proc = subprocess.run(
        [str(DDETR), "train", *tiny_overrides(tiny_data, results), "train.num_epochs=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    line = _only_error_line(proc.stderr)
    assert str(evil) in line and BLOCKED.search(line), line
    assert not marker.exists()
    assert not list((results / "train").glob("model_epoch_*.pth"))  # no training step ran


@pytest.mark.parametrize("force", [None, "1"], ids=["plain-env", "force-no-weights-only"])
def test_pretrained_model_path_and_import_weights(
    tiny_data: dict, tiny_overrides, tmp_path: Path, monkeypatch, capsys, force: str | None
) -> None:
    if force:
        monkeypatch.setenv(FORCE, force)
    else:
        monkeypatch.delenv(FORCE, raising=False)
    marker = tmp_path / "executed"
    evil = save_malicious(tmp_path / "pretrained.pth", marker)
    args = [*tiny_overrides(tiny_data, tmp_path / "results"), f"train.pretrained_model_path={evil}"]
    assert main(["train", *args]) == 2
    assert BLOCKED.search(_only_error_line(capsys.readouterr().err))
    assert main(["import_weights", "--source", "original", str(evil), str(tmp_path / "out.pth")]) == 2
    assert BLOCKED.search(_only_error_line(capsys.readouterr().err))
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
