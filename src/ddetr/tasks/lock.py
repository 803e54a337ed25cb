"""One run per results folder: an exclusive lock on ``<results_dir>/<action>/`` for the life of the process.

:func:`lock_results_dir` takes an ``fcntl.flock`` on ``<folder>/ddetr.lock`` (non-blocking) and writes the
holder's pid, host and start time into it. A second run on the same folder fails at once with one line
naming the holder. The kernel drops the lock when its process dies, so a lock file left by a killed run
is simply taken over, with a warning naming the run that left it. The lock is released (and the file
removed) when the process exits; taking it again in the same process is a no-op, so a script or a test
may run the same action several times. Only the first process of a multi-process run (rank 0, node 0)
locks; the other ranks share its folder by design. Where ``fcntl`` does not exist (Windows) nothing is
locked.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ddetr.errors import SpecError
from ddetr.jobs.registry import pid_alive

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "is_secondary_rank", "lock_results_dir", "release_all"]

LOCK_NAME = "ddetr.lock"
# set by Lightning's launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK, LOCAL_RANK, GROUP_RANK) and srun
# (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID); SLURM's are read only inside a job step of several tasks
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
_SLURM_RANK_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, pid of the process that took it)


def _nonzero(name: str) -> bool:
    value = os.environ.get(name, "").strip()
    return value.isdigit() and int(value) != 0


def is_secondary_rank() -> bool:
    """True in every process of a multi-process run except the first (global rank 0 on node 0).

    The one test of "may this process write the run's shared files" (the results-folder lock, experiment.yaml,
    status.json, job records): it reads the environment the launchers set, so it holds from the first line of
    a child process, before any process group exists.
    """
    if any(_nonzero(name) for name in _RANK_VARIABLES):
        return True
    tasks = os.environ.get("SLURM_NTASKS", "").strip()
    if tasks.isdigit() and int(tasks) > 1:
        return any(_nonzero(name) for name in _SLURM_RANK_VARIABLES)
    return False


def _holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its pid yet"
    started = holder.get("started")
    since = f", started {started}" if started else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def lock_results_dir(folder: Path, action: str, field: str = "results_dir") -> Path | None:
    """Take the exclusive lock of an action's results folder, or fail at once naming the holder.

    Args:
        folder: the action's folder (it exists).
        action: the action name, for messages.
        field: the spec field that chose the folder, for messages.

    Returns:
        The lock file, or None when nothing was locked (a secondary rank, or no ``fcntl``).

    Raises:
        SpecError: another live run holds the folder (one line with its pid, host and start time).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    if is_secondary_rank():
        return None
    path = (folder / LOCK_NAME).resolve()
    if path in _held and _held[path][1] == os.getpid():
        return path  # this process holds it already
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SpecError(
                f"{field}: {folder} is in use by another ddetr {action} run ({_describe(holder)}); wait for it "
                f"to finish, stop it, or choose another {field}"
            ) from None
        except OSError as exc:
            os.close(fd)
            logger.warning("%s: cannot lock %s (%s); not protected against a second run", action, path, exc)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by a run that just finished: lock the new one
    left = _holder(fd)
    if left and left.get("pid") != os.getpid():
        here = left.get("host") == socket.gethostname()
        state = "no longer running" if here and not pid_alive(left.get("pid")) else "its lock was released"
        logger.warning("%s: taking over %s: it was left by %s (%s)", action, folder, _describe(left), state)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "action": action,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _held[path] = (fd, os.getpid())
    return path


def release_all() -> None:
    """Release every lock this process took (removing the lock files); called at exit."""
    for path, (fd, pid) in list(_held.items()):
        if pid != os.getpid():
            continue  # a forked child: the parent still holds it
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)  # closing drops the flock
        del _held[path]


atexit.register(release_all)
