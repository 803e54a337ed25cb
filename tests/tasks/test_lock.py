"""Two runs into one results folder: the second fails at once naming the first; a dead run's lock is taken
over with a warning; one process may run an action again; automl folders stay shared."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import one_error_line, run_ddetr
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.tasks import lock
from ddetr.tasks.common import prepare_results_dir

HOLD = """
import sys, time
from ddetr.spec.load import load_spec
from ddetr.tasks.common import prepare_results_dir
prepare_results_dir(load_spec(None, [f"results_dir={sys.argv[1]}"]), "default_specs")
print("locked", flush=True)
time.sleep(120)
"""


def _holder(results: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked", proc.stderr
    return proc


def test_second_run_fails_at_once_then_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = _holder(results)
    try:
        experiment = results / "default_specs" / "experiment.yaml"
        written = experiment.stat().st_mtime_ns
        second = run_ddetr("default_specs", f"results_dir={results}")
        line = one_error_line(second)
        assert f"pid {first.pid} on host {socket.gethostname()}" in line
        assert "is in use by another ddetr default_specs run" in line
        assert experiment.stat().st_mtime_ns == written  # the second run wrote nothing
        assert not (results / "train.yaml").exists()
    finally:
        first.send_signal(signal.SIGKILL)  # dies without cleaning up: its lock file stays
        first.wait()
    assert (results / "default_specs" / lock.LOCK_NAME).is_file()
    third = run_ddetr("default_specs", f"results_dir={results}")
    assert third.returncode == 0, third.stderr
    assert f"taking over {results / 'default_specs'}" in third.stderr
    assert (
        f"pid {first.pid} on host {socket.gethostname()}" in third.stderr
        and "no longer running" in third.stderr
    )
    assert (results / "train.yaml").is_file()
    assert not (results / "default_specs" / lock.LOCK_NAME).exists()  # removed at a clean exit


def test_same_process_may_run_again_and_other_actions_are_separate(tmp_path: Path) -> None:
    spec = load_spec(None, [f"results_dir={tmp_path}"])
    try:
        first = prepare_results_dir(spec, "evaluate")
        assert prepare_results_dir(spec, "evaluate") == first
        prepare_results_dir(spec, "inference")
        assert (first / lock.LOCK_NAME).is_file()
        prepare_results_dir(spec, "automl")
        assert not (tmp_path / "automl" / lock.LOCK_NAME).exists()  # AutoML workers share their folder
    finally:
        lock.release_all()
    assert not (first / lock.LOCK_NAME).exists()


def test_secondary_ranks_do_not_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    spec = load_spec(None, [f"results_dir={tmp_path}"])
    folder = prepare_results_dir(spec, "evaluate")
    assert not (folder / lock.LOCK_NAME).exists()


def test_lock_held_by_another_process_refuses_in_process(tmp_path: Path) -> None:
    results = tmp_path / "results"
    holder = _holder(results)
    try:
        with pytest.raises(SpecError, match=rf"pid {holder.pid} on host"):
            prepare_results_dir(load_spec(None, [f"results_dir={results}"]), "default_specs")
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(results / "default_specs" / lock.LOCK_NAME)
