"""Encrypted checkpoints and exported models (the spec's top-level ``encryption_key``).

When ``encryption_key`` is set, files the project writes (checkpoints, ONNX exports, quantized models,
TensorRT engines) are encrypted with AES-256-GCM from the ``cryptography`` package; reading them needs the
same key. Plain files are read as they are whatever the key, so third-party weights still load.

File layout (all integers big-endian)::

    b"DDETRENC"  version (1 byte, = 2)  scrypt log2(n), r, p (1 byte each)  salt (16 bytes)  nonce (12 bytes)
    ciphertext (as long as the plaintext)  GCM tag (16 bytes)

The 256-bit key is derived from the passphrase with scrypt and the file's random salt, so every file has its
own key. The whole plaintext is one AES-GCM message (the library's incremental GCM, fed in 64 MiB slices so a
large checkpoint is not copied at once; GCM itself allows up to 64 GiB per message) with the header as
associated data; nothing decrypted is returned before the tag has been checked.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

from ddetr.errors import CheckpointError

__all__ = [
    "MAGIC",
    "decrypt_bytes",
    "encrypt_bytes",
    "is_encrypted",
    "is_encrypted_bytes",
    "read_bytes",
    "write_bytes_atomic",
]

MAGIC = b"DDETRENC"
VERSION = 2
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 14, 8, 1  # 16 MiB of memory, ~0.1 s on one core
SLICE_BYTES = 64 << 20  # bytes fed to the cipher per call
SALT_BYTES, NONCE_BYTES, TAG_BYTES = 16, 12, 16
_HEADER = struct.Struct(f">{len(MAGIC)}sBBBB{SALT_BYTES}s{NONCE_BYTES}s")
HEADER_BYTES = _HEADER.size
KEY_ENV = "DDETR_ENCRYPTION_KEY"  # the key from the environment when the spec has none (AutoML trials use it)
HOW_TO_SET = f"set encryption_key in the spec (or pass -k KEY, or set {KEY_ENV})"


def _derive(key: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """The 32-byte AES key for ``key`` and ``salt`` (scrypt)."""
    try:
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError:  # a declared dependency; only a broken install lacks it
        from ddetr.errors import UnavailableError

        raise UnavailableError(
            "encryption_key needs the cryptography package, which is not installed; run `pip install cryptography`."
        ) from None
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(key.encode("utf-8"))


def _feed(context: Any, view: memoryview, out: io.BytesIO) -> None:
    for start in range(0, len(view), SLICE_BYTES):
        out.write(context.update(view[start : start + SLICE_BYTES]))


def is_encrypted_bytes(data: bytes | memoryview) -> bool:
    """True when ``data`` starts with the ddetr encryption header."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """True when the file at ``path`` is a ddetr-encrypted file (only its first bytes are read)."""
    try:
        with open(path, "rb") as handle:
            return is_encrypted_bytes(handle.read(len(MAGIC)))
    except OSError:
        return False


def encrypt_bytes(data: bytes | memoryview, key: str) -> bytes:
    """Encrypt ``data`` with a key derived from the passphrase ``key`` (AES-256-GCM).

    Args:
        data: the plaintext (any size up to GCM's 64 GiB).
        key: the passphrase (``encryption_key``); must not be empty.

    Returns:
        The encrypted file's bytes: header, ciphertext, tag.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if not key:
        raise ValueError("encrypt_bytes: an empty key does not encrypt")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header = _HEADER.pack(MAGIC, VERSION, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, nonce)
    aes_key = _derive(key, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    encryptor = Cipher(algorithms.AES(aes_key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(header)
    out = io.BytesIO()
    out.write(header)
    _feed(encryptor, memoryview(data).cast("B"), out)
    out.write(encryptor.finalize())
    out.write(encryptor.tag)
    return out.getvalue()


def decrypt_bytes(data: bytes | memoryview, key: str | None, *, source: str = "data") -> bytes:
    """Decrypt what :func:`encrypt_bytes` returned.

    Args:
        data: the encrypted bytes.
        key: the passphrase they were encrypted with.
        source: what the bytes are (usually the file's path), for error messages.

    Raises:
        CheckpointError: no key given, the key does not match, the bytes were changed or cut short, or another
            format version. The key never appears in the message.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    view = memoryview(data).cast("B")
    if not is_encrypted_bytes(view):
        raise CheckpointError(f"{source}: not a ddetr-encrypted file")
    if not key:
        raise CheckpointError(f"{source}: the file is encrypted; {HOW_TO_SET} to read it.")
    if len(view) < HEADER_BYTES + TAG_BYTES:
        raise CheckpointError(f"{source}: encrypted file is truncated ({len(view)} bytes)")
    _magic, version, log2_n, r, p, salt, nonce = _HEADER.unpack(view[:HEADER_BYTES])
    if version != VERSION:
        raise CheckpointError(
            f"{source}: encryption format version {version} is not the one this ddetr reads ({VERSION})"
        )
    # bounded scrypt cost: a damaged header must not ask for gigabytes of memory
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and 128 * r << log2_n <= 1 << 28):
        raise CheckpointError(f"{source}: encrypted file has a damaged header")
    aes_key = _derive(key, salt, log2_n, r, p)
    tag = bytes(view[len(view) - TAG_BYTES :])
    decryptor = Cipher(algorithms.AES(aes_key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(bytes(view[:HEADER_BYTES]))
    out = io.BytesIO()
    _feed(decryptor, view[HEADER_BYTES : len(view) - TAG_BYTES], out)
    try:
        out.write(decryptor.finalize())  # checks the tag; nothing is returned unless it matches
    except InvalidTag:
        raise CheckpointError(
            f"{source}: encryption_key does not match the key this file was encrypted with "
            "(or the file was changed or cut short)"
        ) from None
    return out.getvalue()


def read_bytes(path: str | os.PathLike[str], key: str | None = None) -> bytes:
    """The plaintext of the file at ``path``: decrypted when it is encrypted, else its bytes as they are.

    Raises:
        CheckpointError: missing file, or an encrypted file read with no key or the wrong key.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{file}: is a folder, not a file") from None
    if is_encrypted_bytes(data):
        return decrypt_bytes(data, key, source=str(file))
    return data


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | memoryview, key: str | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically, encrypted when ``key`` is non-empty; returns the path."""
    from ddetr.fileio import atomic_write_bytes

    payload = encrypt_bytes(data, key) if key else data
    return atomic_write_bytes(path, payload)


def plain_copy(path: str | os.PathLike[str], key: str | None, folder: str | os.PathLike[str]) -> Path:
    """A path to the plaintext of ``path`` for libraries that only read paths.

    A plain file is returned as it is; an encrypted one is decrypted into ``folder`` (the caller's temporary
    folder, which it removes) under the same name.

    Raises:
        CheckpointError: encrypted and the key is missing or wrong.
    """
    file = Path(path)
    if not is_encrypted(file):
        return file
    Path(folder).mkdir(parents=True, exist_ok=True)
    target = Path(folder) / file.name
    if target.resolve() == file.resolve():
        target = target.with_name(f"plain_{file.name}")
    target.write_bytes(read_bytes(file, key))
    return target
