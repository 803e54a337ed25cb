"""``python -m ddetr.automl.child PARENT_PID -- CMD ...``: run CMD so that it dies with the search process.

On Linux the child asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), then replaces
itself with CMD (the setting survives ``exec``). A search killed with SIGKILL therefore leaves no orphaned
training behind, and its trial's folder is not written to after the search is gone. Elsewhere CMD just runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    """Entry point: ``PARENT_PID -- CMD ...``."""
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m ddetr.automl.child PARENT_PID -- CMD ...\n")
        sys.exit(2)
    _die_with_parent(int(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
