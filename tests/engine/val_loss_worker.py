"""One rank of the validation-loss test (tests/engine/test_val_loss.py): run as a script, prints JSON.

``python val_loss_worker.py WORLD RANK PORT`` validates a seeded tiny model on synthetic batches for each
(num_images, batch_size) case in a gloo process group on 127.0.0.1:PORT, over this rank's padded shard with
batch_size per rank; rank 0 then leaves the group and validates every image in one process with batch_size
* WORLD (the reference). Prints ``{"ddp": {"<num_images>/<batch_size>": val_loss}, "single": {...}}``
(``single`` on rank 0 only).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import torch

CASES = ((5, 1), (7, 2))  # 5 images, batch 1: rank 1's last batch is only a repeat; 7, batch 2: half a batch


def _samples(num_images: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(11)
    out = []
    for index in range(num_images):
        boxes = torch.rand(1 + index % 3, 4, generator=gen) * 0.4 + torch.tensor([0.3, 0.3, 0.1, 0.1])
        labels = torch.randint(1, 4, (len(boxes),), generator=gen)
        target = {
            "boxes": boxes,
            "labels": labels,
            "image_id": torch.tensor(index),
            "orig_size": torch.tensor([64, 64]),
        }
        out.append((torch.rand(3, 64, 64, generator=gen), target))
    return out


def main(world: int, rank: int, port: int) -> None:
    from ddetr.engine.datamodule import val_sampler
    from ddetr.engine.module import DetectionModule
    from ddetr.model.detector import DeformableDETR
    from ddetr.spec.load import load_spec
    from ddetr.spec.sections import ModelSection

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
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
    model = DeformableDETR.from_config(section, 4).eval()
    module = DetectionModule(model, load_spec(None, []))

    def validate(rank: int, world: int, per_rank: int) -> dict[str, float | None]:
        found = {}
        for num_images, batch in CASES:
            samples = _samples(num_images)
            sampler = val_sampler(num_images, rank, world)
            module._trainer = SimpleNamespace(  # what the module reads of its Trainer
                world_size=world, val_dataloaders=SimpleNamespace(sampler=sampler)
            )
            module._val_losses, module._val_seen = [], 0
            order = list(sampler)
            size = batch * per_rank
            with torch.no_grad():
                for start in range(0, len(order), size):
                    chosen = [samples[i] for i in order[start : start + size]]
                    images = torch.stack([image for image, _ in chosen])
                    mask = torch.zeros(images.shape[0], 64, 64, dtype=torch.bool)
                    module.validation_step((images, mask, [t for _, t in chosen]), start // size)
            found[f"{num_images}/{batch}"] = module._val_loss()
        return found

    result = {"ddp": validate(rank, world, 1)}
    torch.distributed.destroy_process_group()
    if rank == 0:
        result["single"] = validate(0, 1, world)
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
