"""EncryptedCheckpointIO: Lightning's checkpoint I/O, encrypted when the spec sets encryption_key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddetr.crypto import MAGIC
from ddetr.engine.checkpoint_io import EncryptedCheckpointIO
from ddetr.errors import CheckpointError


def _state() -> dict:
    return {"state_dict": {"model.w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "global_step": 12}


def test_without_key_files_are_plain(tmp_path: Path) -> None:
    io = EncryptedCheckpointIO("")
    assert not io.encrypts
    path = tmp_path / "ckpt" / "model.pth"
    io.save_checkpoint(_state(), path)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert io.load_checkpoint(path)["global_step"] == 12


def test_with_key_files_are_encrypted_and_read_back(tmp_path: Path) -> None:
    io = EncryptedCheckpointIO("k3y")
    path = tmp_path / "ckpt" / "model.pth"
    io.save_checkpoint(_state(), path)
    assert path.read_bytes().startswith(MAGIC)
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]
    loaded = io.load_checkpoint(path, map_location="cpu")
    torch.testing.assert_close(loaded["state_dict"]["model.w"], _state()["state_dict"]["model.w"])
    with pytest.raises(CheckpointError, match="is encrypted"):
        EncryptedCheckpointIO(None).load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not match"):
        EncryptedCheckpointIO("other").load_checkpoint(path)
    assert "k3y" not in repr(io)
