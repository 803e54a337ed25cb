"""safe_torch_load: weights-only whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says, one line naming the global."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import pytest
import torch

from ddetr.artefacts.checkpoint import load_checkpoint, safe_torch_load
from ddetr.engine.checkpoint_io import EncryptedCheckpointIO
from ddetr.errors import CheckpointError
from ddetr.model.backbone import build_backbone
from hostile_payload import save_malicious

FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture(params=[None, "1"], ids=["plain-env", "force-no-weights-only"])
def hostile_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Runs each test without and with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    if request.param is None:
        monkeypatch.delenv(FORCE, raising=False)
    else:
        monkeypatch.setenv(FORCE, request.param)
    return request.param


def _refused_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    text = str(err.value)
    assert "\n" not in text
    assert str(path) in text and re.search(r"'(builtins|io)\.open'", text) and "refused" in text


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, hostile_env: str | None) -> None:
    marker = tmp_path / "executed"
    path = save_malicious(tmp_path / "evil.pth", marker, w=torch.zeros(2))
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(path)
    _refused_one_line(err, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _refused_one_line(err, path)
    with pytest.raises(
        CheckpointError
    ) as err:  # the Lightning resume path, whatever weights_only it asks for
        EncryptedCheckpointIO(None).load_checkpoint(path, weights_only=False)
    _refused_one_line(err, path)
    assert not marker.exists()


def test_the_variable_really_makes_plain_torch_load_unsafe(tmp_path: Path, monkeypatch) -> None:
    # the threat this guards against: with the variable, a load that leaves weights_only unset runs code
    monkeypatch.setenv(FORCE, "1")
    marker = tmp_path / "executed"
    path = save_malicious(tmp_path / "evil.pth", marker)
    with pytest.warns(UserWarning, match=FORCE):
        torch.load(path)
    assert marker.exists()


def test_encrypted_malicious_checkpoint_is_refused_on_resume(tmp_path: Path, hostile_env) -> None:
    marker = tmp_path / "executed"
    plain = save_malicious(tmp_path / "plain.pth", marker)
    writer = EncryptedCheckpointIO("s3cret")
    enc = tmp_path / "enc.pth"
    from ddetr.crypto import write_bytes_atomic

    write_bytes_atomic(enc, plain.read_bytes(), "s3cret")
    with pytest.raises(CheckpointError) as err:
        writer.load_checkpoint(enc)
    _refused_one_line(err, enc)
    assert not marker.exists()


def test_allowed_content_still_loads(tmp_path: Path, hostile_env) -> None:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1e-4)}, buffer)
    buffer.seek(0)
    loaded = safe_torch_load(buffer, name="release")
    assert loaded["args"].lr == 1e-4 and loaded["model"]["w"].sum() == 3


def test_garbage_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x80\x04not a pickle at all" * 10)
    with pytest.raises(CheckpointError, match=r"random\.pth: not a readable PyTorch checkpoint") as err:
        safe_torch_load(path)
    assert "\n" not in str(err.value)


def test_pretrained_backbone_path_is_weights_only(tmp_path: Path, hostile_env) -> None:
    from ddetr.spec.sections import ModelSection

    marker = tmp_path / "executed"
    path = save_malicious(tmp_path / "backbone.pth", marker, **{"conv1.weight": torch.zeros(64, 3, 7, 7)})
    section = ModelSection(backbone="resnet_18", pretrained_backbone_path=str(path))
    with pytest.raises(CheckpointError, match=r"model\.pretrained_backbone_path: .*'(builtins|io)\.open'"):
        build_backbone(section)
    assert not marker.exists()
