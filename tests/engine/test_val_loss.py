"""val_loss counts each validation image once under DDP: the padding repeats are left out.

The 2-process gloo test takes 30 s or more on two busy cores, so it runs with the slow tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import SequentialSampler

from ddetr.engine.datamodule import shard_real_count, train_sampler, val_sampler
from ddetr.engine.module import combine_batch_losses

WORKER = Path(__file__).with_name("val_loss_worker.py")
SOURCE = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("num_images", [1, 2, 5, 7, 8, 9])
def test_shard_real_count_marks_exactly_the_padding(num_images: int, world: int) -> None:
    shards = [list(val_sampler(num_images, rank, world)) for rank in range(world)]
    counts = [shard_real_count(val_sampler(num_images, rank, world)) for rank in range(world)]
    own = [i for shard, count in zip(shards, counts) for i in shard[:count]]
    assert sorted(own) == list(range(num_images))  # every image once
    repeats = [i for shard, count in zip(shards, counts) for i in shard[count:]]
    assert len(repeats) == len(shards[0]) * world - num_images


def test_shard_real_count_of_other_samplers() -> None:
    sampler = train_sampler(7, 1, 2, seed=3)  # drop_last: no repeats, every sample its own
    assert shard_real_count(sampler) == len(list(sampler)) == 3
    assert shard_real_count(SequentialSampler(range(4))) is None
    assert shard_real_count(None) is None


def test_combine_batch_losses_weighs_by_counted_images() -> None:
    assert combine_batch_losses([2.0, 5.0], [3, 1]) == pytest.approx((6 + 5) / 4)
    assert combine_batch_losses([2.0, 9.0], [2, 0]) == 2.0  # a batch of repeats only adds nothing
    assert combine_batch_losses([1.0], [0]) is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(world: int) -> list[dict[str, dict[str, float]]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(world), str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    found = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


class _Trainer:
    """What DetectionModule reads of its Trainer in validation: one process, this rank's loader."""

    def __init__(self, sampler) -> None:
        self.world_size = 1
        self.val_dataloaders = type("Loader", (), {"sampler": sampler})()


def test_a_rank_leaves_its_padding_repeat_out_of_the_loss() -> None:
    """Rank 1 of 2 with 7 images and batch 2: shard [1, 3, 5, 0]; its last batch counts image 5 only (the
    loss of that image alone) and a batch of repeats only counts nothing."""
    import torch

    from ddetr.engine.module import DetectionModule
    from ddetr.model.detector import DeformableDETR
    from ddetr.spec.load import load_spec
    from ddetr.spec.sections import ModelSection

    torch.manual_seed(0)
    section = ModelSection(
        backbone="resnet_18",
        hidden_dim=32,
        nheads=2,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        num_queries=10,
        num_select=10,
        num_feature_levels=2,
        return_interm_indices=[2, 3],
        dropout_ratio=0.0,
    )
    module = DetectionModule(DeformableDETR.from_config(section, 4).eval(), load_spec(None, []))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=gen)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]), "labels": torch.tensor([label])} for label in (1, 2)
    ]
    with torch.no_grad():
        alone = module.criterion.weighted_total(
            module.criterion(module.model(images[:1], mask[:1]), targets[:1])
        )
        whole = module.criterion.weighted_total(module.criterion(module.model(images, mask), targets))

        module._trainer = _Trainer(val_sampler(7, 1, 2))  # 4 samples, the last a repeat
        module._val_losses, module._val_seen = [], 2  # the first batch (2 own images) is done
        module.validation_step((images, mask, targets), 1)
        assert module._val_losses[-1][1] == 1
        assert module._val_losses[-1][0] == pytest.approx(float(alone), rel=1e-5)
        assert module._val_losses[-1][0] != pytest.approx(float(whole), rel=1e-3)

        module._trainer = _Trainer(val_sampler(5, 1, 2))  # shard [1, 3, 0]: the last sample a repeat
        module._val_losses, module._val_seen = [], 2
        module.validation_step((images[:1], mask[:1], targets[:1]), 2)
        assert module._val_losses == [(0.0, 0)]

        module._trainer = None  # no Trainer (and any sampler but a distributed one): every image counts
        module._val_losses, module._val_seen = [], 0
        module.validation_step((images, mask, targets), 0)
        assert module._val_losses[0] == (pytest.approx(float(whole), rel=1e-5), 2)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_val_loss_of_one_process_with_twice_the_batch() -> None:
    """2 processes on loopback (shards padded with repeats) vs 1 process, batch 2b: the same val_loss."""
    ranks = _run(2)
    ddp, single = ranks[0]["ddp"], ranks[0]["single"]
    assert ranks[1]["ddp"] == ddp  # every rank reports the same number
    print("2 ranks:", ddp, "1 process:", single)
    for case, expected in single.items():
        assert ddp[case] == pytest.approx(expected, rel=1e-5), (case, ddp[case], expected)
