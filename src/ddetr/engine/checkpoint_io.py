"""Lightning checkpoint I/O that encrypts training checkpoints when the spec sets ``encryption_key``.

Every checkpoint the trainer writes (periodic ``model_epoch_*.pth``, the file ``dd_model_latest.pth``
links to, an interrupt save) goes through :meth:`EncryptedCheckpointIO.save_checkpoint`, and resuming
goes through :meth:`EncryptedCheckpointIO.load_checkpoint`, so encrypted runs resume like plain ones.
Resuming always reads with the weights-only unpickler (:func:`ddetr.artefacts.checkpoint.load_torch_file`),
whatever Lightning asks for and whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says: a resume checkpoint is a
file a user hands us and must not be able to run code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ddetr.artefacts.checkpoint import atomic_torch_save, load_torch_file


class EncryptedCheckpointIO(TorchCheckpointIO):
    """``torch.save``/``torch.load`` through :mod:`ddetr.crypto`.

    Every local checkpoint is written atomically by :func:`ddetr.artefacts.checkpoint.atomic_torch_save`:
    a temporary file in the destination folder, fsync, ``os.replace``, fsync of the folder, so a kill never
    leaves a truncated file under the final name nor an orphan in ``TMPDIR`` (Lightning's own writer goes
    through a temporary file in ``TMPDIR`` that is copied, not renamed, when it is on another file system).
    With a key the file is encrypted. Remote URLs (``s3://...``) are left to Lightning's writer. Loading
    decrypts encrypted files (a missing or wrong key is a one-line CheckpointError); every file, encrypted or
    plain, is unpickled weights-only.

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
        """Write ``checkpoint`` to ``path`` atomically in its own folder, encrypted when a key is set."""
        remote = "://" in str(path) and not str(path).startswith("file://")
        if remote and self._key is None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None or remote:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes a local path and no storage_options"
            )
        local = str(path).removeprefix("file://")
        atomic_torch_save(checkpoint, local, self._key)

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read a checkpoint weights-only, decrypting it when it is encrypted.

        ``weights_only`` is accepted for Lightning's interface and ignored: the load is always weights-only.

        Raises:
            CheckpointError: an encrypted file and no key, or the wrong key; a file needing a Python global
                outside the allow-list; an unreadable file.
            FileNotFoundError: no file at ``path``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"{type(self).__name__}.load_checkpoint takes a local path, not {type(path).__name__}"
            )
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {file}")
        return load_torch_file(file, map_location, self._key)
