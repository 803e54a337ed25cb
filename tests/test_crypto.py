"""ddetr.crypto: authenticated encryption of files, clear errors for a missing or wrong key, plain files pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddetr.crypto import (
    HEADER_BYTES,
    MAGIC,
    TAG_BYTES,
    decrypt_bytes,
    encrypt_bytes,
    is_encrypted,
    plain_copy,
    read_bytes,
    write_bytes_atomic,
)
from ddetr.errors import CheckpointError

KEY = "tlt_encode"


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 14, 15, 100])
def test_round_trip_across_slice_boundaries(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import ddetr.crypto

    monkeypatch.setattr(ddetr.crypto, "SLICE_BYTES", 7)  # the cipher is fed 7 bytes at a time
    data = os.urandom(size)
    sealed = encrypt_bytes(data, KEY)
    assert len(sealed) == HEADER_BYTES + size + TAG_BYTES
    assert sealed.startswith(MAGIC)
    assert decrypt_bytes(sealed, KEY) == data


def test_ciphertext_hides_the_plaintext_and_differs_each_time() -> None:
    data = b"state_dict " * 1000
    first, second = encrypt_bytes(data, KEY), encrypt_bytes(data, KEY)
    assert b"state_dict" not in first
    assert first != second  # fresh salt and nonce per file
    assert decrypt_bytes(first, KEY) == decrypt_bytes(second, KEY) == data


def test_wrong_key_is_a_clear_error_without_the_key() -> None:
    sealed = encrypt_bytes(b"weights", "correct horse")
    with pytest.raises(CheckpointError, match="does not match") as info:
        decrypt_bytes(sealed, "battery staple", source="model.pth")
    message = str(info.value)
    assert message.startswith("model.pth:") and "\n" not in message
    assert "battery" not in message and "horse" not in message


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key_says_the_file_is_encrypted(key: str | None, tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "model.pth", b"weights", KEY)
    with pytest.raises(CheckpointError, match=r"is encrypted; set encryption_key .*-k KEY") as info:
        read_bytes(path, key)
    assert str(path) in str(info.value)


def test_plain_file_is_read_as_is_whatever_the_key(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "third_party.pth", b"plain weights", None)
    assert not is_encrypted(path)
    assert path.read_bytes() == b"plain weights"
    assert read_bytes(path, KEY) == read_bytes(path, None) == b"plain weights"
    assert plain_copy(path, KEY, tmp_path / "work") == path


@pytest.mark.parametrize("where", [0, len(MAGIC), HEADER_BYTES - 1, HEADER_BYTES, -1])
def test_any_changed_byte_is_refused(where: int) -> None:
    sealed = bytearray(encrypt_bytes(b"x" * 50, KEY))
    sealed[where] ^= 0x01
    with pytest.raises(CheckpointError):
        decrypt_bytes(bytes(sealed), KEY)


def test_cut_short_or_extended_files_are_refused() -> None:
    sealed = encrypt_bytes(b"a" * 40, KEY)
    for broken in (
        sealed[:-1],  # one byte of the tag missing
        sealed[: HEADER_BYTES + 20] + sealed[-TAG_BYTES:],  # ciphertext cut, tag kept
        sealed + b"\0",  # a byte appended
        sealed[:HEADER_BYTES],  # header only
    ):
        with pytest.raises(CheckpointError, match=r"does not match|truncated"):
            decrypt_bytes(broken, KEY)


def test_write_is_atomic_and_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.onnx"
    write_bytes_atomic(path, b"old", None)
    write_bytes_atomic(path, b"new model bytes", KEY)
    assert is_encrypted(path) and b"new model" not in path.read_bytes()
    assert read_bytes(path, KEY) == b"new model bytes"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary file left


def test_plain_copy_decrypts_into_the_work_folder(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "model.onnx", b"onnx bytes", KEY)
    copy = plain_copy(path, KEY, tmp_path / "work")
    assert copy.parent == tmp_path / "work" and copy.read_bytes() == b"onnx bytes"
    assert is_encrypted(path)  # the original stays encrypted


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_bytes(tmp_path / "none.pth", KEY)
    assert not is_encrypted(tmp_path / "none.pth")
