"""Checkpoint saves are atomic in their own folder: kills at random points never leave a truncated file.

Lightning's own writer (fsspec transaction) puts its temporary file in ``TMPDIR`` and copies it over the final
name when ``TMPDIR`` is on another file system; ddetr's CheckpointIO writes a temporary file beside the
final one, fsyncs it, renames it and fsyncs the folder, for plain and encrypted checkpoints alike.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ddetr import fileio
from ddetr.artefacts.checkpoint import load_torch_file
from ddetr.engine.callbacks import TaoCheckpoint
from ddetr.engine.checkpoint_io import EncryptedCheckpointIO
from ddetr.fileio import atomic_symlink

LATEST = "dd_model_latest.pth"


def _trainer() -> SimpleNamespace:
    """The part of a Trainer the checkpoint callback uses, for one process."""
    return SimpleNamespace(
        is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None, broadcast=lambda x: x)
    )


def _state(step: int, numel: int = 1000) -> dict:
    return {"state_dict": {"model.w": torch.full((numel,), float(step))}, "global_step": step}


@pytest.mark.parametrize("key", ["", "k3y"])
def test_save_never_goes_through_tmpdir(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TMPDIR unusable the save still works: nothing is written there, the temporary is beside the file."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    synced: list[Path] = []
    real_sync = fileio._fsync_dir
    monkeypatch.setattr(fileio, "_fsync_dir", lambda folder: (synced.append(Path(folder)), real_sync(folder)))
    path = tmp_path / "train" / "model_epoch_001_step_00010.pth"
    EncryptedCheckpointIO(key).save_checkpoint(_state(10), path)
    assert load_torch_file(path, encryption_key=key or None)["global_step"] == 10
    assert synced == [path.parent]  # the rename is made durable
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_latest_link_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real_sync = fileio._fsync_dir
    monkeypatch.setattr(fileio, "_fsync_dir", lambda folder: (synced.append(Path(folder)), real_sync(folder)))
    trainer = _trainer()
    for step in (1, 2):
        target = tmp_path / f"model_{step}.pth"
        EncryptedCheckpointIO("").save_checkpoint(_state(step), target)
        TaoCheckpoint._link_checkpoint(trainer, str(target), str(tmp_path / LATEST))
    link = tmp_path / LATEST
    assert os.readlink(link) == "model_2.pth" and load_torch_file(link)["global_step"] == 2
    assert synced.count(tmp_path) == 4  # two files, two links
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "model_1.pth", "model_2.pth"]


def test_atomic_symlink_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic_symlink("x", tmp_path / "missing-folder" / "link")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- kill tests


def _save_forever(folder: Path, numel: int, tmpdir: Path, ready: Any) -> None:
    """The child: resume from latest (it must load), then save and link checkpoints until killed."""
    os.environ["TMPDIR"] = str(tmpdir)
    tempfile.tempdir = None  # read TMPDIR again, as a fresh process would
    latest = folder / LATEST
    trainer = _trainer()
    callback = TaoCheckpoint(folder)
    callback.setup(trainer, None, "fit")  # as a resumed run does: removes the temporaries of killed runs
    orphans = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    step = int(load_torch_file(latest)["global_step"]) if latest.exists() else 0
    io = EncryptedCheckpointIO("")
    ready.send((step, orphans))
    while True:
        step += 1
        path = folder / f"model_epoch_000_step_{step:05d}.pth"
        io.save_checkpoint(
            {"state_dict": {"w": torch.full((numel,), float(step))}, "global_step": step}, path
        )
        TaoCheckpoint._link_checkpoint(trainer, str(path), str(latest))
        ready.send(step)
        for old in sorted(folder.glob("model_epoch_*.pth"))[:-3]:  # keep a few, as a long run would
            old.unlink()


def _check_folder(folder: Path) -> int:
    """Every file under a final name loads; latest resolves to the newest step. Returns that step."""
    steps = []
    for path in sorted(folder.glob("model_epoch_*.pth")):
        state = load_torch_file(path)
        assert int(path.stem.rsplit("_", 1)[1]) == state["global_step"]
        assert torch.equal(
            state["state_dict"]["w"], torch.full_like(state["state_dict"]["w"], state["global_step"])
        )
        steps.append(state["global_step"])
    latest = folder / LATEST
    if not latest.exists():
        assert not steps
        return 0
    step = int(load_torch_file(latest)["global_step"])
    assert step in steps
    return step


def _kill_runs(tmp_path: Path, seed: int, kills: int, numel: int, max_delay: float) -> list[int]:
    """``kills`` children (forked from a fork server: no import time), each killed by SIGKILL after a seeded random delay."""
    folder = tmp_path / "train"
    folder.mkdir()
    other_tmp = tmp_path / "other-tmpdir"
    other_tmp.mkdir()
    # a fork server that has imported what the child needs and run nothing: forking it is fast and safe
    # (forking this test process, which has run torch ops on several threads, can deadlock the child)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "ddetr.engine.callbacks", "ddetr.engine.checkpoint_io", __name__])
    rng = random.Random(seed)
    resumed = []
    for run in range(kills):
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_save_forever, args=(folder, numel, other_tmp, send), daemon=True)
        proc.start()
        try:
            assert receive.poll(60), f"the child failed to start or to resume (exit {proc.exitcode})"
            step, orphans = receive.recv()
            assert orphans == [], (
                "a restarted run left a killed run's temporary file in the checkpoint folder"
            )
            resumed.append(step)
            if run % 2:  # every other run saves once before its kill point: progress on a slow disk
                assert receive.poll(60), "the child saved nothing in 60 s"
            time.sleep(rng.uniform(0.0, max_delay))
            assert proc.is_alive(), f"the child stopped on its own (exit {proc.exitcode})"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.join()
            receive.close()
            send.close()
        assert _check_folder(folder) >= resumed[-1]
        assert list(other_tmp.iterdir()) == []  # nothing orphaned in TMPDIR
    return resumed


@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_killed_saves_leave_only_whole_checkpoints(tmp_path: Path) -> None:
    """Six SIGKILLs at seeded random points of 4 MB saves; each restart resumes from a valid checkpoint."""
    resumed = _kill_runs(tmp_path, seed=13, kills=6, numel=1_000_000, max_delay=0.5)
    assert resumed == sorted(resumed) and resumed[-1] > 0  # progress is kept across kills


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_killed_saves_many_points(tmp_path: Path) -> None:
    """The same with 40 kills of 40 MB saves, for a denser sample of kill points."""
    resumed = _kill_runs(tmp_path, seed=2026, kills=40, numel=10_000_000, max_delay=3.0)
    assert resumed == sorted(resumed)


def test_remove_stale_temps_keeps_live_processes_and_other_files(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    names = [
        f".model.pth.{dead}-0.tmp.pth",
        f".dd_model_latest.pth.{dead}-3.tmplink",
        f".model.pth.{os.getpid()}-1.tmp.pth",
        "model.pth",
        ".hidden",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = fileio.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
