"""One rank of the FSDP checkpoint test (tests/engine/test_fsdp_checkpoint.py): run as a script.

``python fsdp_worker.py RANK PORT OUT`` (world size 2, gloo on 127.0.0.1:PORT) wraps a seeded tiny
:class:`DetectionModule` in torch's FSDP the way Lightning's FSDP strategy does on GPUs (the module itself
the root unit, the strategy's own keyword arguments), here on the CPU, since Lightning refuses CPU FSDP but
torch runs it over gloo. Rank 0 writes ``OUT/sharded_names.json`` (the names of the wrapped, sharded
parameters), ``OUT/reference.pth`` (the unwrapped model's weights) and ``OUT/fsdp.pth``: a checkpoint as
Lightning's FSDP strategy saves it with ``state_dict_type="full"`` (the state dict taken in Lightning's
full-state-dict context, plus ddetr's card entry).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(rank: int, port: int, out: Path) -> None:
    from lightning.fabric.strategies.fsdp import _get_full_state_dict_context
    from torch.distributed.fsdp import FullyShardedDataParallel

    from ddetr.artefacts.card import ModelCard
    from ddetr.artefacts.checkpoint import LIGHTNING_KEY, lightning_entry
    from ddetr.engine.module import DetectionModule
    from ddetr.engine.trainer import build_strategy, plan_devices
    from ddetr.model.detector import DeformableDETR
    from ddetr.spec.load import load_spec

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    spec = load_spec(
        None,
        [
            "model.backbone=resnet_18",
            "model.hidden_dim=32",
            "model.nheads=2",
            "model.enc_layers=1",
            "model.dec_layers=2",
            "model.dim_feedforward=64",
            "model.num_queries=10",
            "model.num_select=10",
            "model.num_feature_levels=2",
            "model.return_interm_indices=[2,3]",
            "dataset.num_classes=4",
            "train.num_gpus=2",
            "train.distributed_strategy=fsdp",
        ],
    )
    strategy = build_strategy(plan_devices(spec.train, cuda_available=True))
    assert strategy._state_dict_type == "full"
    torch.manual_seed(0)
    model = DeformableDETR.from_config(spec.model, spec.dataset.num_classes)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    module = DetectionModule(model, spec)
    wrapped = FullyShardedDataParallel(module, device_id=torch.device("cpu"), **strategy.kwargs)
    names = [name for name, _ in wrapped.named_parameters()]
    with _get_full_state_dict_context(wrapped, world_size=2):
        state_dict = wrapped.state_dict()
    if rank == 0:
        (out / "sharded_names.json").write_text(json.dumps(names))
        torch.save(reference, out / "reference.pth")
        checkpoint = {
            "state_dict": state_dict,
            LIGHTNING_KEY: lightning_entry(ModelCard.from_spec(spec), spec.model_dump(mode="json")),
        }
        torch.save(checkpoint, out / "fsdp.pth")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
