"""Lightning checkpoint I/O that encrypts training checkpoints when the spec sets ``encryption_key``.

Every checkpoint the trainer writes (periodic ``model_epoch_*.pth``, the file ``dd_model_latest.pth``
links to, an interrupt save) goes through :meth:`EncryptedCheckpointIO.save_checkpoint`, and resuming
goes through :meth:`EncryptedCheckpointIO.load_checkpoint`, so encrypted runs resume like plain ones.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ddetr.crypto import is_encrypted, read_bytes, write_bytes_atomic


class EncryptedCheckpointIO(TorchCheckpointIO):
    """``torch.save``/``torch.load`` through :mod:`ddetr.crypto`.

    With a key, checkpoints are serialised in memory, encrypted and written atomically (temporary file in
    the same folder, fsync, rename). Without one, saving is Lightning's own. Loading decrypts encrypted files
    (a missing or wrong key is a one-line CheckpointError) and reads plain files as Lightning does.

    Args:
        encryption_key: the spec's ``encryption_key``; empty or None writes plain checkpoints.
    """

    def __init__(self, encryption_key: str | None = None) -> None:
        super().__init__()
        self._key = encryption_key or None

    @property
    def encrypts(self) -> bool:
        """True when checkpoints are written encrypted."""
        return self._key is not None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path``, encrypted when a key is set."""
        if self._key is None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(Path(path), buffer.getbuffer(), self._key)

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read a checkpoint, decrypting it when it is encrypted.

        Raises:
            CheckpointError: an encrypted file and no key, or the wrong key.
            FileNotFoundError: no file at ``path``.
        """
        if isinstance(path, (str, os.PathLike)) and is_encrypted(path):
            data = read_bytes(path, self._key)
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
