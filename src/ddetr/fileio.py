"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash or a kill never leaves a truncated file under the final name, and a reader sees the old or the new file.
:func:`atomic_path` is the one mechanism; :func:`atomic_open`, :func:`atomic_write_text` and
:func:`atomic_write_bytes` are built on it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it
_CALLS = itertools.count()  # with the pid, makes each temporary name unique per process and call


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened or synced."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (network, FUSE) do not sync folders
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes to a path itself; it becomes ``path`` on success.

    The temporary name is hidden (it starts with a dot), unique per process and call, and ends with the
    suffix of ``path``, so libraries that choose a format from the extension (PIL, ``numpy.save``, matplotlib)
    write the same format. When the block succeeds the file is fsynced, given the permissions ``open()``
    would give it, renamed over ``path`` with ``os.replace`` and the folder is fsynced. When the block raises,
    the temporary file is removed and an existing ``path`` is left as it was.

    Args:
        path: the final file; its folder is created.

    Yields:
        The temporary path (nothing exists there yet); the block must write one file to it.

    Raises:
        FileNotFoundError: the block succeeded but wrote nothing to the temporary path.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with atomic_path(Path(folder) / "weights.npy") as tmp:
        ...         np.save(tmp, np.arange(3))
        ...     sorted(p.name for p in Path(folder).iterdir()), np.load(Path(folder) / "weights.npy").tolist()
        (['weights.npy'], [0, 1, 2])
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{next(_CALLS)}.tmp{final.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: nothing was written to the temporary file for {final}")
        # what open() gives: writers that use mkstemp leave 0600, and results are shared
        os.chmod(tmp, 0o666 & ~_UMASK)
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # the block's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` when the block succeeds.

    Args:
        path: the final file; its folder is created.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_symlink(target: str | os.PathLike[str], link: str | os.PathLike[str]) -> Path:
    """Point the symbolic link ``link`` at ``target``, replacing any existing link or file atomically.

    The new link is made under a temporary name in the link's folder, renamed over ``link`` with
    ``os.replace``, and the folder is fsynced: a reader sees the old link or the new one, never none.

    Args:
        target: what the link points to, stored as given (pass a relative path for a relocatable folder).
        link: the link's path.

    Returns:
        ``link`` as a Path.
    """
    final = Path(link)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{next(_CALLS)}.tmplink")
    try:
        os.symlink(os.fspath(target), tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return final


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-\d+\.tmp(link|.*)$")


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` and :func:`atomic_symlink` left by dead processes.

    A process killed mid-write (SIGKILL, power loss) leaves its hidden temporary file beside the final one;
    a later run calls this on the folders it writes to. Files of a process that is still alive are kept.

    Args:
        folder: the folder to clean (not recursive); a missing folder is fine.

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True
