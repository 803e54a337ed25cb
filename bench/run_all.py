"""Run every benchmark script in bench/ (each in its own process) and summarise.

Usage: ``python bench/run_all.py [extra args passed to every script]``. Exit status 1 if any script failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TIMEOUT_S = 900


def main() -> int:
    scripts = sorted(
        p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    summary = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.run(
                [sys.executable, str(script), *sys.argv[1:]], timeout=TIMEOUT_S, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        summary.append((script.name, code, time.perf_counter() - start))
    print("== summary")
    for name, code, seconds in summary:
        print(f"{name:<30} {'ok' if code == 0 else f'FAILED ({code})':<14} {seconds:>6.0f} s")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
