"""ddetr.fileio: atomic writes that leave the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddetr.fileio import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


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


def test_atomic_path_puts_what_a_library_wrote_under_the_final_name(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "weights.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.suffix == ".npy"
        assert not target.exists() and not tmp.exists()
        np.save(tmp, np.arange(4))  # numpy appends .npy unless the name already ends with it
    assert np.load(target).tolist() == [0, 1, 2, 3]
    assert [p.name for p in target.parent.iterdir()] == ["weights.npy"]


def test_atomic_path_keeps_the_extension_a_library_picks_the_format_from(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "image.png", b"old")
    with atomic_path(target) as tmp:
        Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp)  # PIL chooses PNG from the suffix
    with Image.open(target) as image:
        assert (image.format, image.size, image.getpixel((0, 0))) == ("PNG", (4, 3), (255, 0, 0))
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_atomic_path_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "model.onnx", "old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_path_with_nothing_written_is_an_error_and_leaves_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "labels.txt", "old")
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert target.read_text() == "old"


def test_atomic_path_gives_open_permissions_to_a_private_temporary(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_path(tmp_path / "engine.plan") as tmp:
        tmp.write_bytes(b"engine")
        tmp.chmod(0o600)  # as a writer using mkstemp leaves it
    assert _mode(tmp_path / "engine.plan") == _mode(plain)


def test_temporary_names_are_unique_per_call_and_fsyncs_reach_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []  # inodes of what was fsynced
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    folder = tmp_path.stat().st_ino
    target = tmp_path / "status.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
        inodes = first.stat().st_ino, second.stat().st_ino
    assert synced == [inodes[1], folder, inodes[0], folder]
    assert target.read_text() == "1"  # the outer block finished last
    text = atomic_write_text(tmp_path / "metrics.json", "{}")  # atomic_open shares the mechanism
    assert synced[-2:] == [text.stat().st_ino, folder]
