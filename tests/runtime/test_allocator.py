"""runtime.allocator.keep_freed_memory: training steps stop faulting in fresh pages (measured in a subprocess,
since the setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CPU_STEP = Path(__file__).resolve().parents[2] / "bench" / "cpu_step.py"


def _faults_per_step(tune: bool) -> dict:
    """bench/cpu_step.py's worker: the demo's model, batch 4 at 128 px, 4 timed training steps."""
    done = subprocess.run(
        [sys.executable, str(CPU_STEP), "--worker", "on" if tune else "off", "--batch", "4", "--steps", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_training_steps_reuse_their_pages() -> None:
    plain = _faults_per_step(False)
    tuned = _faults_per_step(True)
    assert tuned["tuned"] is True and plain["tuned"] is False
    # measured: about 4,200 page faults per step without, about 340 with
    assert plain["faults"] > 1000
    assert tuned["faults"] < plain["faults"] / 4


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import ddetr.runtime.allocator as allocator

    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.keep_freed_memory() is False
    # decided once per process: a later call does not change its answer
    monkeypatch.setenv(allocator.ENV, "1")
    assert allocator.keep_freed_memory() is False
