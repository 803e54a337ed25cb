"""Distributed training without launching processes: device plans, strategies, samplers, cluster variables."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from ddetr.engine.datamodule import train_sampler, val_sampler
from ddetr.engine.module import estimated_steps, merge_rank_detections
from ddetr.engine.trainer import build_strategy, plan_devices
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.tasks.lock import is_secondary_rank

_CLUSTER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NODELIST",
    "SLURM_JOB_NAME",
    "SLURM_JOB_ID",
)


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    from lightning_utilities.core.rank_zero import rank_zero_only

    for name in _CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # a Trainer built for global rank 1 sets Lightning's process-wide rank: later tests of this process must
    # see rank 0 again (else their loggers hand out dummy experiments)
    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    return monkeypatch


def _train(*overrides: str):
    return load_spec(None, list(overrides)).train


def test_num_processes_plans_ddp_over_gloo_on_the_cpu() -> None:
    plan = plan_devices(_train("train.num_processes=2", "train.num_nodes=2"), cuda_available=False)
    assert (plan.accelerator, plan.devices, plan.num_nodes) == ("cpu", 2, 2)
    assert (plan.strategy, plan.backend, plan.world_size, plan.distributed) == ("ddp", "gloo", 4, True)
    strategy = build_strategy(plan)
    assert type(strategy).__name__ == "DDPStrategy" and strategy.process_group_backend == "gloo"


def test_one_cpu_process_is_not_distributed() -> None:
    plan = plan_devices(_train(), cuda_available=False)
    assert (plan.devices, plan.world_size, plan.strategy, plan.backend) == (1, 1, "auto", None)
    assert build_strategy(plan) == "auto"


def test_num_gpus_without_a_gpu_names_num_processes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plan = plan_devices(_train("train.num_gpus=4"), cuda_available=False)
    assert plan.world_size == 1
    assert "train.num_gpus=4 ignored" in caplog.text and "train.num_processes" in caplog.text


def test_gpus_use_nccl_and_num_processes_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plan = plan_devices(
            _train("train.num_gpus=2", "train.gpu_ids=[2,3]", "train.num_processes=4"), cuda_available=True
        )
    assert (plan.accelerator, plan.devices, plan.backend, plan.world_size) == ("gpu", [2, 3], "nccl", 2)
    assert "train.num_processes=4 ignored" in caplog.text
    assert build_strategy(plan).process_group_backend == "nccl"


def test_fsdp_plans_on_gpus_and_is_one_line_on_cpus() -> None:
    gpu = plan_devices(_train("train.num_gpus=2", "train.distributed_strategy=fsdp"), cuda_available=True)
    strategy = build_strategy(gpu)
    assert type(strategy).__name__ == "FSDPStrategy" and strategy.process_group_backend == "nccl"
    assert strategy._state_dict_type == "full"  # one consolidated .pth, read like any ddetr checkpoint
    with pytest.raises(SpecError, match=r"^train.distributed_strategy: fsdp needs GPUs"):
        plan_devices(_train("train.num_processes=2", "train.distributed_strategy=fsdp"), cuda_available=False)
    # one CPU process: the strategy field has nothing to distribute
    assert plan_devices(_train("train.distributed_strategy=fsdp"), cuda_available=False).strategy == "auto"


def test_world_size_and_the_dataset_size_rule() -> None:
    train = _train("train.num_processes=3", "train.num_gpus=2", "train.num_nodes=2")
    assert train.world_size(cuda_available=False) == 6 and train.world_size(cuda_available=True) == 4


@pytest.mark.parametrize(("num_images", "world", "batch"), [(16, 2, 2), (11, 2, 3), (10, 3, 2), (7, 1, 4)])
def test_ranks_together_take_the_single_process_batches(num_images: int, world: int, batch: int) -> None:
    """Global step k of W ranks with batch b takes the same images as one process with batch W*b."""
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            sampler = train_sampler(num_images, rank, world, seed=5)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        single = train_sampler(num_images, 0, 1, seed=5)
        single.set_epoch(epoch)
        order = list(single)
        kept = (num_images // world) * world
        assert sorted(i for s in shards for i in s) == sorted(order[:kept])  # each image at most once
        steps = math.ceil(len(shards[0]) / batch)
        assert steps == estimated_steps(num_images, batch, world)
        for step in range(steps):
            together = sorted(i for s in shards for i in s[step * batch : (step + 1) * batch])
            assert together == sorted(
                order[step * world * batch : (step + 1) * world * batch][: len(together)]
            )
    first, second = (train_sampler(num_images, 0, world, seed=5) for _ in range(2))
    second.set_epoch(1)
    assert list(first) != list(second)  # a new permutation each epoch


def test_validation_shards_cover_every_image_once_after_merging() -> None:
    num_images, world = 7, 3
    shards = [list(val_sampler(num_images, rank, world)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of batches
    parts = [[{"image_id": 100 + i, "score": float(r)} for i in shard] for r, shard in enumerate(shards)]
    merged = merge_rank_detections(parts)
    assert sorted(d["image_id"] for d in merged) == [100 + i for i in range(num_images)]
    assert all(d["score"] == (d["image_id"] - 100) % world for d in merged)  # from the first rank holding it


def test_secondary_rank_from_each_launcher(clean_env: pytest.MonkeyPatch) -> None:
    assert not is_secondary_rank()
    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK"):
        clean_env.setenv(name, "1")
        assert is_secondary_rank(), name
        clean_env.setenv(name, "0")
    assert not is_secondary_rank()
    clean_env.setenv("SLURM_PROCID", "1")  # a single-task job step is never multi-process
    assert not is_secondary_rank()
    clean_env.setenv("SLURM_NTASKS", "2")
    assert is_secondary_rank()


@pytest.mark.parametrize(
    ("variables", "environment"),
    [
        (
            {
                "RANK": "1",
                "LOCAL_RANK": "0",
                "GROUP_RANK": "1",
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "1",
                "TORCHELASTIC_RUN_ID": "ddetr",
            },
            "TorchElasticEnvironment",
        ),
        (
            {
                "SLURM_NTASKS": "2",
                "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": "1",
                "SLURM_NODELIST": "node[1-2]",
                "SLURM_JOB_NAME": "train",
                "SLURM_JOB_ID": "42",
            },
            "SLURMEnvironment",
        ),
        ({"NODE_RANK": "1"}, "LightningEnvironment"),
    ],
)
def test_cluster_variables_reach_lightning(
    clean_env: pytest.MonkeyPatch, variables: dict[str, str], environment: str
) -> None:
    """torchrun's, srun's and hand-set variables give node 1 of 2 its global rank through the plan."""
    import lightning.pytorch as pl

    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29555")
    for name, value in variables.items():
        clean_env.setenv(name, value)
    plan = plan_devices(_train("train.num_nodes=2"), cuda_available=False)
    assert plan.world_size == 2 and plan.backend == "gloo"
    trainer = pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=build_strategy(plan),
        logger=False,
        enable_checkpointing=False,
    )
    env = trainer.strategy.cluster_environment
    assert type(env).__name__ == environment
    assert (trainer.global_rank, trainer.world_size, env.node_rank()) == (1, 2, 1)
    assert (env.main_address, env.main_port) == ("127.0.0.1", 29555)
    assert is_secondary_rank()
    assert torch.distributed.is_available()


def test_lightning_refuses_fsdp_on_cpu_processes() -> None:
    """Why fsdp is a SpecError on the CPU: Lightning's FSDP strategy needs a GPU accelerator."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(Exception, match="requires a GPU accelerator"):
        pl.Trainer(
            accelerator="cpu", devices=2, strategy=FSDPStrategy(process_group_backend="gloo"), logger=False
        )


def test_a_secondary_rank_writes_nothing_into_the_results_folder(
    clean_env: pytest.MonkeyPatch, tmp_path
) -> None:
    """Lightning's launcher re-runs the command in each child with LOCAL_RANK set: the child neither locks
    the folder nor writes experiment.yaml (the first process does both)."""
    from ddetr.tasks.common import prepare_results_dir
    from ddetr.tasks.lock import LOCK_NAME

    spec = load_spec(None, [f"results_dir={tmp_path}"])
    clean_env.setenv("LOCAL_RANK", "1")
    folder = prepare_results_dir(spec, "train")
    assert folder == tmp_path / "train" and list(folder.iterdir()) == []
    clean_env.setenv("LOCAL_RANK", "0")
    prepare_results_dir(spec, "train")
    assert {p.name for p in folder.iterdir()} == {"experiment.yaml", LOCK_NAME}
