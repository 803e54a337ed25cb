"""Run every benchmark script in bench/ (each in its own process) and summarise.

Usage: ``python bench/run_all.py [extra args passed to every script]``. Exit status 1 if any script failed.
At the end: one table of every target row the scripts recorded (bench/_rows.py), with the load average.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _rows  # bench/_rows.py

BENCH = Path(__file__).resolve().parent
TIMEOUT_S = 900


def main() -> int:
    scripts = sorted(
        p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    summary = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ddetr-bench-rows-") as folder:
        rows_file = Path(folder) / "rows.jsonl"
        env = dict(os.environ, **{_rows.ENV: str(rows_file)})
        for script in scripts:
            print(f"== {script.name}", flush=True)
            start = time.perf_counter()
            try:
                code = subprocess.run(
                    [sys.executable, str(script), *sys.argv[1:]], timeout=TIMEOUT_S, check=False, env=env
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            summary.append((script.name, code, time.perf_counter() - start))
        rows = _rows.read(rows_file)
    print("== summary")
    for name, code, seconds in summary:
        print(f"{name:<30} {'ok' if code == 0 else f'FAILED ({code})':<14} {seconds:>6.0f} s")
    load_after = os.getloadavg()
    print(
        f"== targets (issue 12), {os.cpu_count()} cores, load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    print("\n".join(_rows.table(rows)))
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
