"""Distributed training on CPU processes (gloo), end to end through ``python -m ddetr train``.

Lightning's launcher re-runs the command line in its child processes, so every run here is a subprocess.
The tests are slow (several processes on a shared CPU) and run in ``make test-slow``; run them one at a time.

Tolerances of the equivalence test (2 processes with batch b against 1 process with batch 2b, fp32, same
seed and images): the loss of each step agrees within ``LOSS_RTOL`` relative, every weight after each step
within ``WEIGHT_ATOL`` absolute; the two runs differ only in the order float sums are taken (DDP averages the two
ranks' gradients, one process sums all images at once).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.spec.load import load_spec
from ddetr.status import read_status

pytestmark = pytest.mark.slow

LOSS_RTOL = 1e-5  # measured: 7e-8
WEIGHT_ATOL = 5e-5  # measured: 3e-6
_LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "PL_GLOBAL_SEED",
)


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """16 training images and 7 validation images (odd: the validation shards are padded) at 64 px."""
    from ddetr.data.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("ddp_synthetic")
    return generate_synthetic_dataset(out, num_train=16, num_val=7, image_size=(64, 64), seed=3)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train(args: list[str], timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddetr", "train", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _deterministic(overrides: list[str]) -> list[str]:
    """The tiny experiment with augmentations that give the same image whatever the random draws: no flip,
    and a crop of the whole 64 px image (crop side drawn from [64, min(64, 65)])."""
    return [
        *overrides,
        "dataset.augmentation.horizontal_flip_prob=0.0",
        "dataset.augmentation.train_random_crop_min=64",
        "dataset.augmentation.train_random_crop_max=65",
        "model.num_queries=30",
        "model.num_select=30",
    ]


def _epoch_losses(train_dir: Path) -> list[float]:
    return [
        e["kpi"]["train_loss"]
        for e in read_status(train_dir / "status.json")
        if e.get("message", "").startswith("Train epoch")
    ]


def _val_kpis(train_dir: Path) -> list[dict]:
    return [e["kpi"] for e in read_status(train_dir / "status.json") if "val_mAP" in e.get("kpi", {})]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def _start_checkpoint(overrides: list[str], path: Path) -> Path:
    """A seeded initial model whose boxes start at half the image side (the default head starts at 12%), so
    that the untrained model already finds some of the large synthetic shapes: a mAP above zero to compare."""
    from ddetr.artefacts.card import ModelCard
    from ddetr.artefacts.checkpoint import save_checkpoint
    from ddetr.model.detector import DeformableDETR

    spec = load_spec(None, overrides)
    torch.manual_seed(7)
    model = DeformableDETR.from_config(spec.model, spec.dataset.num_classes)
    with torch.no_grad():
        for head in model.bbox_embed:
            head.layers[-1].bias[2:] = 0.0  # sigmoid(0) = 0.5
    return save_checkpoint(path, card=ModelCard.from_spec(spec), state_dict=model.state_dict())


def test_two_processes_equal_one_process_with_twice_the_batch(
    ddp_data: dict, tiny_overrides, tmp_path: Path
) -> None:
    """Same seed, same images per step: per-step losses and weights agree; the evaluation of the 2-process
    run (gathered from both ranks) equals the 1-process ``evaluate`` of its checkpoint."""
    from ddetr.tasks import evaluate

    start = _start_checkpoint(_deterministic(tiny_overrides(ddp_data, tmp_path)), tmp_path / "start.pth")
    runs = {}
    for processes, batch in ((2, 8), (1, 16)):  # 16 images: one optimizer step per epoch
        results = tmp_path / f"p{processes}"
        args = [
            *_deterministic(tiny_overrides(ddp_data, results)),
            f"train.pretrained_model_path={start}",
            f"train.num_processes={processes}",
            f"dataset.batch_size={batch}",
            "train.num_epochs=4",
        ]
        done = _train(args)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = results / "train"

    two, one = runs[2], runs[1]
    losses2, losses1 = _epoch_losses(two), _epoch_losses(one)
    assert len(losses2) == len(losses1) == 4
    print("per-step loss, 2 processes x 8:", losses2)
    print("per-step loss, 1 process x 16:", losses1)
    for step, (a, b) in enumerate(zip(losses2, losses1)):
        assert abs(a - b) <= LOSS_RTOL * abs(b), (step, a, b)
    worst = 0.0
    for epoch in range(4):
        name = f"model_epoch_{epoch:03d}_step_{epoch + 1:05d}.pth"
        w2, w1 = _weights(two / name), _weights(one / name)
        assert w2.keys() == w1.keys()
        diff = max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1)
        worst = max(worst, diff)
        assert diff <= WEIGHT_ATOL, (name, diff)
    print(f"largest weight difference after any step: {worst:.3g}")

    # the 2-process run's validation (7 images, shards padded to 4 + 4) equals one process evaluating it
    kpi = _val_kpis(two)[-1]
    latest = (two / "dd_model_latest.pth").resolve()
    spec = load_spec(
        None,
        [
            *_deterministic(tiny_overrides(ddp_data, tmp_path / "eval")),
            f"evaluate.checkpoint={latest}",
            "evaluate.batch_size=3",
        ],
        action="evaluate",
    )
    result = evaluate.run(spec)
    print(
        f"2-process val_mAP {kpi['val_mAP']:.6f} / mAP50 {kpi['val_mAP50']:.6f}; evaluate {result.test_mAP:.6f}"
    )
    assert result.images == 7
    assert kpi["val_mAP"] == pytest.approx(result.test_mAP, abs=1e-6)
    assert kpi["val_mAP50"] == pytest.approx(result.test_mAP50, abs=1e-6)
    assert kpi["val_mAP50"] > 0  # a comparison of something, not of two zeros
    assert _val_kpis(one)[-1]["val_mAP"] == pytest.approx(kpi["val_mAP"], abs=1e-3)
    # val_loss counts each of the 7 images once (rank 1's repeat of image 0 left out): the 1-process value
    val_loss2, val_loss1 = kpi["val_loss"], _val_kpis(one)[-1]["val_loss"]
    print(f"val_loss, 2 processes x 8: {val_loss2:.6f}; 1 process x 16: {val_loss1:.6f}")
    assert abs(val_loss2 - val_loss1) <= 10 * LOSS_RTOL * abs(val_loss1)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(x) for x in task.read_text().split()]
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _assert_single_writer(train_dir: Path) -> None:
    """Rank 0 alone wrote the run's files: one start line per run in status.json, one TensorBoard log."""
    events = read_status(train_dir / "status.json")
    started = [e for e in events if e["status"] == "STARTED"]
    finished = [e for e in events if e["status"] in ("SUCCESS", "FAILURE")]
    assert len(finished) == len(started), [e["status"] for e in events]
    assert len({e["step"] for e in events if e.get("message", "").startswith("Train epoch")}) == len(
        [e for e in events if e.get("message", "").startswith("Train epoch")]
    )  # no epoch line twice
    logs = list((train_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(logs) == len(started), logs
    assert not list(train_dir.glob("*.tmp*")) and (train_dir / "experiment.yaml").is_file()


def test_sigterm_to_rank_1_saves_once_every_rank_exits_and_resume_continues(
    ddp_data: dict, tiny_overrides, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    train_dir = results / "train"
    base = [
        *tiny_overrides(ddp_data, results),
        "train.num_processes=2",
        "dataset.batch_size=4",
    ]  # 2 steps/epoch
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddetr",
            "train",
            *base,
            "train.num_epochs=500",
            "train.validation_interval=1000",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(train_dir.glob("model_epoch_000_*.pth")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never wrote its first checkpoint"
            time.sleep(0.2)
        ranks = [c for c in _children(proc.pid) if "ddetr" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(ranks) == 1, ranks  # Lightning's launcher started rank 1 as a child of rank 0
        time.sleep(1.0)
        os.kill(ranks[0], signal.SIGTERM)  # rank 1 only: rank 0 learns it at the next step
        _, stderr = proc.communicate(timeout=300)
        deadline = time.monotonic() + 60
        while not _gone(ranks[0]):
            assert time.monotonic() < deadline, "rank 1 did not exit"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted: training interrupted by SIGTERM at step" in stderr

    events = read_status(train_dir / "status.json")
    failures = [e for e in events if e["status"] == "FAILURE"]
    assert len(failures) == 1 and "interrupted by SIGTERM" in failures[0]["message"]
    stopped_at = failures[0]["step"]
    saved = (train_dir / "dd_model_latest.pth").resolve()
    epoch = (stopped_at - 1) // 2
    assert saved.name == f"model_epoch_{epoch:03d}_step_{stopped_at:05d}.pth", (saved.name, stopped_at)
    assert load_checkpoint(saved).raw["global_step"] == stopped_at
    if stopped_at % 2:  # stopped mid-epoch: exactly one interrupt checkpoint beside the epoch checkpoints
        names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
        assert names.count(saved.name) == 1 and len(names) == stopped_at // 2 + 1, names
    _assert_single_writer(train_dir)

    final_epochs = epoch + 2
    done = _train([*base, f"train.num_epochs={final_epochs}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        load_checkpoint((train_dir / "dd_model_latest.pth").resolve()).raw["global_step"] == final_epochs * 2
    )
    assert (train_dir / "dd_model_latest.pth").resolve().name == (
        f"model_epoch_{final_epochs - 1:03d}_step_{final_epochs * 2:05d}.pth"
    )
    assert read_status(train_dir / "status.json")[-1]["status"] == "SUCCESS"
    _assert_single_writer(train_dir)


@pytest.mark.parametrize("launcher", ["environment", "torchrun"])
def test_two_nodes_on_loopback(ddp_data: dict, tiny_overrides, tmp_path: Path, launcher: str) -> None:
    """Two "nodes" (one process each) sharing one results folder, as a cluster launches them: by hand with
    MASTER_ADDR/MASTER_PORT/NODE_RANK (Lightning's environment) or by torchrun (its variables)."""
    results = tmp_path / "shared"
    args = [
        *tiny_overrides(ddp_data, results),
        "train.num_nodes=2",
        "train.num_processes=1",
        "dataset.batch_size=4",
        "train.num_epochs=2",
    ]
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        if launcher == "torchrun":
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={node}",
                "--nproc-per-node=1",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "ddetr",
                "train",
                *args,
            ]
            env = _env()
        else:
            command = [sys.executable, "-m", "ddetr", "train", *args]
            env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node))
        procs.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=900)[1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for node, (proc, err) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, (node, err[-3000:])
    train_dir = results / "train"
    # world size 2: 16 images / (4 * 2) = 2 steps per epoch
    latest = (train_dir / "dd_model_latest.pth").resolve()
    assert latest.name == "model_epoch_001_step_00004.pth"
    assert sorted(p.name for p in train_dir.glob("model_epoch_*.pth")) == [
        "model_epoch_000_step_00002.pth",
        "model_epoch_001_step_00004.pth",
    ]
    assert read_status(train_dir / "status.json")[-1]["status"] == "SUCCESS"
    _assert_single_writer(train_dir)
    assert "GLOBAL_RANK: 1" in outputs[1] or "GLOBAL_RANK: 1" in outputs[0]
