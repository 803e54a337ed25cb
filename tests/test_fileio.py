"""ddetr.fileio: atomic writes that leave the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ddetr.fileio import atomic_open, atomic_write_bytes, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the umask gives an ordinary file
    text = atomic_write_text(tmp_path / "sub" / "experiment.yaml", "a: 1\n")
    data = atomic_write_bytes(tmp_path / "model.pth", b"\0\1")
    assert _mode(text) == _mode(data) == _mode(plain)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "status.json", "old\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
