"""The job registry on real SQLite files: records, ids, selection, checksums, lost jobs, concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ddetr.cli import main as cli_main
from ddetr.jobs import registry as registry_module
from ddetr.jobs.lineage import candidates, choose, parse_select, verify
from ddetr.jobs.registry import Artefact, JobError, Registry, db_url, file_sha256
from ddetr.spec.load import load_spec
from ddetr.spec.sections import Spec
from ddetr.tasks import default_specs

SRC = Path(__file__).resolve().parents[2] / "src"


def _checkpoints(registry: Registry, folder: Path, maps: list[float | None]) -> str:
    """A finished train job with one fake checkpoint per entry of ``maps`` (its val_mAP, None: no validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    job = registry.start("train", results_dir=str(folder), spec="results_dir: x\n")
    arts = []
    for epoch, value in enumerate(maps):
        path = folder / f"model_epoch_{epoch:03d}_step_{(epoch + 1) * 10:05d}.pth"
        path.write_bytes(f"weights {epoch}".encode())
        kpis = {"val_mAP": value} if value is not None else {}
        arts.append(
            Artefact(path=str(path), kind="checkpoint", epoch=epoch, step=(epoch + 1) * 10, kpis=kpis)
        )
    registry.add_artefacts(job, arts)
    registry.finish(job, "success", kpis={"epochs": len(maps)})
    return job


def test_records_round_trip_with_sizes_and_checksums(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "jobs.db")
    job_id = _checkpoints(registry, tmp_path / "train", [0.1, 0.3, 0.2])
    job = registry.get(job_id)
    assert (job.action, job.status, job.pid, job.kpis) == ("train", "success", os.getpid(), {"epochs": 3})
    assert [a.step for a in job.artefacts] == [10, 20, 30]
    first = job.artefacts[0]
    assert first.size == len(b"weights 0") and first.sha256 == file_sha256(first.path)
    assert job.spec_hash and job.spec == "results_dir: x\n"
    assert registry.get(job_id[:5]).id == job_id  # a unique prefix is enough
    assert db_url(tmp_path / "x.db") == f"sqlite:///{(tmp_path / 'x.db').resolve()}"
    assert db_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unknown_id_names_the_closest(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "jobs.db")
    job_id = _checkpoints(registry, tmp_path / "train", [0.1])
    wrong = job_id[:-1] + ("a" if job_id[-1] != "a" else "b")
    with pytest.raises(JobError, match=f"no job '{wrong}'.*closest: {job_id}"):
        registry.get(wrong)


def test_select_best_latest_epoch_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(tmp_path / "jobs.db")
    job = registry.get(_checkpoints(registry, tmp_path / "train", [0.1, 0.3, 0.2]))
    found = candidates(registry, job)

    def pick(select: str) -> str:
        return Path(choose(job, found, ("checkpoint",), select, "checkpoint").path).name

    assert pick("best") == "model_epoch_001_step_00020.pth"
    assert pick("latest") == "model_epoch_002_step_00030.pth"
    assert pick("epoch=0") == "model_epoch_000_step_00010.pth"
    assert pick("step=30") == "model_epoch_002_step_00030.pth"
    with pytest.raises(JobError, match="no checkpoint at epoch 7; its epochs: 0, 1, 2"):
        pick("epoch=7")
    with pytest.raises(JobError, match="not one of best, latest"):
        parse_select("newest")
    with pytest.raises(JobError, match=r"has no ONNX file to use: it has checkpoint"):
        choose(job, found, ("onnx",), "best", "ONNX file")

    unvalidated = registry.get(_checkpoints(registry, tmp_path / "other", [None, None]))
    chosen = choose(unvalidated, candidates(registry, unvalidated), ("checkpoint",), "best", "checkpoint")
    assert Path(chosen.path).name == "model_epoch_001_step_00020.pth"
    assert "no checkpoint has a val_mAP" in caplog.text


def test_changed_or_deleted_parent_file_is_one_line(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "jobs.db")
    job = registry.get(_checkpoints(registry, tmp_path / "train", [0.1, 0.2]))
    first, second = job.artefacts
    verify(job, first)  # unchanged: fine
    Path(first.path).write_bytes(b"tampered")
    with pytest.raises(
        JobError, match=f"{first.path} has changed since it was recorded \\(sha256 mismatch\\)"
    ):
        verify(job, first)
    Path(second.path).unlink()
    with pytest.raises(JobError, match=f"{second.path} was deleted"):
        verify(job, second)


def test_sigkilled_job_is_shown_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "jobs.db"
    code = textwrap.dedent(
        f"""
        import sys, time
        from ddetr.jobs.registry import Registry
        print(Registry({str(db)!r}).start("train", results_dir="x"), flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert Registry(db).get(job_id).status == "running"  # alive: running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Registry(db).get(job_id).status == "lost"
    assert cli_main(["jobs", "list", "--db", str(db), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "lost")]


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    Registry(db)  # the tables exist before the race
    code = textwrap.dedent(
        f"""
        import sys
        from ddetr.jobs.registry import Artefact, Registry
        registry = Registry({str(db)!r})
        for i in range(40):
            job = registry.start("evaluate", results_dir=sys.argv[1])
            registry.beat(job)
            registry.finish(job, "success", kpis={{"i": i}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, name], env=env, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    jobs = Registry(db).list()
    assert len(jobs) == 80 and {j.status for j in jobs} == {"success"}
    assert sorted(j.results_dir for j in jobs) == ["a"] * 40 + ["b"] * 40


@pytest.mark.parametrize("damage", ["corrupt", "read-only", "locked"])
def test_unwritable_registry_warns_once_and_the_action_runs(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "jobs.db"
    if damage == "corrupt":
        db.write_bytes(b"this is not a database" * 100)
        url = str(db)
    elif damage == "read-only":  # SQLite's own read-only mode (file permissions do not stop root)
        Registry(db)
        url = f"sqlite:///file:{db}?mode=ro&uri=true"
    else:  # another process holds the write lock for longer than the registry waits
        Registry(db)
        url = str(db)
        monkeypatch.setattr(registry_module, "BUSY_TIMEOUT", 0.2)
    monkeypatch.setenv("DDETR_JOBS_DB", url)
    out = tmp_path / "out"
    holder = None
    if damage == "locked":
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    try:
        result = default_specs.run(load_spec(None, [f"results_dir={out}"]))
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    assert result.specs  # the action ran
    warnings = [r for r in caplog.records if "job registry not written" in r.getMessage()]
    assert len(warnings) == 1
    if damage == "locked":
        assert "locked" in warnings[0].getMessage()
    job_file = json.loads((out / "default_specs" / "job.json").read_text())
    assert job_file["job_id"] is None and job_file["action"] == "default_specs"


def test_every_action_writes_job_json_and_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "jobs.db"
    monkeypatch.setenv("DDETR_JOBS_DB", str(db))
    default_specs.run(load_spec(None, [f"results_dir={tmp_path / 'out'}", "encryption_key=secret-key"]))
    job_file = json.loads((tmp_path / "out" / "default_specs" / "job.json").read_text())
    assert set(job_file) >= {"job_id", "parent_job_id", "action"} and job_file["parent_job_id"] is None
    job = Registry(db).get(job_file["job_id"])
    assert job.status == "success" and job.action == "default_specs"
    assert {a.kind for a in job.artefacts} == {"spec"} and all(a.sha256 for a in job.artefacts)
    assert "secret-key" not in job.spec and "encryption_key: ''" in job.spec
    assert time.time() - job.started < 600


def test_jobs_command_show_best_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "jobs.db")
    job_id = _checkpoints(Registry(db), tmp_path / "train", [0.1, 0.3, 0.2])
    assert cli_main(["jobs", "best", job_id, "--db", db]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "train" / "model_epoch_001_step_00020.pth")
    assert cli_main(["jobs", "best", job_id, "--db", db, "--select", "latest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 30
    assert cli_main(["jobs", "show", job_id, "--db", db]) == 0
    shown = capsys.readouterr().out
    assert f"job        {job_id}" in shown and shown.count("artefact   checkpoint") == 3 and "sha256" in shown
    assert cli_main(["jobs", "show", job_id, "--db", db, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["artefacts"]) == 3
    assert cli_main(["jobs", "list", "--db", db, "--action", "evaluate"]) == 0
    assert "no jobs" in capsys.readouterr().out
    assert cli_main(["jobs", "show", "--db", db]) == 2
    assert "give a job id" in capsys.readouterr().err
    # --select without a parent is a one-line error before anything runs
    assert cli_main(["export", f"results_dir={tmp_path}", "--select", "epoch=1"]) == 2
    assert "no parent is given" in capsys.readouterr().err


def test_interrupted_training_keeps_its_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A train run stopped from outside is closed as interrupted, with the checkpoints it saved as artefacts."""
    from ddetr.errors import Interrupted
    from ddetr.tasks.common import prepare_results_dir
    from ddetr.tasks.jobrecord import recorded

    monkeypatch.setenv("DDETR_JOBS_DB", str(tmp_path / "jobs.db"))

    @recorded("train")
    def stopped(spec: Spec) -> None:  # a stand-in task
        folder = prepare_results_dir(spec, "train")
        (folder / "model_epoch_000_step_00003.pth").write_bytes(b"saved on SIGTERM")
        raise Interrupted("training interrupted by SIGTERM at step 3", 143)

    with pytest.raises(Interrupted):
        stopped(load_spec(None, [f"results_dir={tmp_path / 'out'}"]))
    job_file = json.loads((tmp_path / "out" / "train" / "job.json").read_text())
    assert job_file["status"] == "interrupted"
    job = Registry().get(job_file["job_id"])
    assert job.status == "interrupted" and "SIGTERM" in job.reason
    assert [(a.kind, a.epoch, a.step) for a in job.artefacts] == [("checkpoint", 0, 3)]
