"""Stopping a training run from outside: SIGTERM saves the current step, exits 143, and the run resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import train


def test_sigterm_saves_the_current_step_exits_143_and_resumes(tiny_spec_args: list[str]) -> None:
    results = Path(next(a.split("=", 1)[1] for a in tiny_spec_args if a.startswith("results_dir=")))
    train_dir = results / "train"
    long_run = [*tiny_spec_args, "train.num_epochs=500", "train.validation_interval=1000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddetr", "train", *long_run],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # wait until the first epoch's checkpoint exists, then a little into the next epoch
        while not list(train_dir.glob("model_epoch_000_*.pth")):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "training never wrote its first checkpoint"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("interrupted: training interrupted by SIGTERM at step"), last_line
    assert "Traceback" not in stderr

    events = read_status(train_dir / "status.json")
    assert events[-1]["status"] == "FAILURE" and "interrupted by SIGTERM" in events[-1]["message"]
    stopped_at = events[-1]["step"]
    latest = train_dir / "dd_model_latest.pth"
    saved = latest.resolve()
    # the interrupt checkpoint holds the step the run reached, under the TAO name, linked as latest
    epoch = (
        stopped_at - 1
    ) // 4  # the epoch of the last step taken (16 images at batch 4: 4 steps per epoch)
    assert saved.name == f"model_epoch_{epoch:03d}_step_{stopped_at:05d}.pth", (saved.name, stopped_at)
    assert stopped_at > 4
    raw = load_checkpoint(saved).raw
    assert raw["global_step"] == stopped_at
    # the job registry has the run as interrupted, with the checkpoint saved on SIGTERM among its artefacts
    from ddetr.jobs.registry import Registry

    job = Registry().get(json.loads((train_dir / "job.json").read_text())["job_id"])
    assert job.status == "interrupted" and "SIGTERM" in job.reason
    assert str(saved) in [a.path for a in job.artefacts if a.kind == "checkpoint"]

    # the same command (fewer epochs so the test ends) resumes from that step and finishes
    final_epochs = epoch + 2
    result = train.run(load_spec(None, [*tiny_spec_args, f"train.num_epochs={final_epochs}"]))
    assert result.steps == final_epochs * 4
    assert latest.resolve().name == f"model_epoch_{final_epochs - 1:03d}_step_{final_epochs * 4:05d}.pth"
    assert read_status(train_dir / "status.json")[-1]["status"] == "SUCCESS"
