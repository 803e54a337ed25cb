"""Running the installed ``ddetr`` command as a real subprocess, and reading its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DDETR = Path(sys.executable).parent / "ddetr"


def run_ddetr(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ddetr ARGS`` with captured text output (two minutes at most)."""
    return subprocess.run([str(DDETR), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a run that failed with exit code 2 and no traceback."""
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]
