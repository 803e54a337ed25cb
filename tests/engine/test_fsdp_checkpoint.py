"""FSDP checkpoints are ordinary ddetr checkpoints: the full state dict carries no FSDP wrapper prefixes.

Lightning's FSDP strategy needs GPUs, but torch's FSDP runs on CPU processes over gloo: two such processes
wrap the module as the strategy ddetr builds would (:mod:`fsdp_worker`) and save what ``state_dict_type="full"``
saves; ddetr's checkpoint reader then reads it and the model gets the weights back unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("fsdp_worker.py")
SOURCE = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_a_full_fsdp_state_dict_loads_as_a_ddetr_checkpoint(tmp_path: Path) -> None:
    from ddetr.model.detector import build_model_from_checkpoint

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    sharded = json.loads((tmp_path / "sharded_names.json").read_text())
    assert sharded and all(name.startswith("_fsdp_wrapped_module.") for name in sharded)  # FSDP did wrap
    raw = torch.load(tmp_path / "fsdp.pth", weights_only=True)
    assert not [k for k in raw["state_dict"] if "_fsdp_wrapped_module" in k or "_flat_param" in k]

    model, loaded = build_model_from_checkpoint(tmp_path / "fsdp.pth")  # ddetr's reader, strict load
    reference = torch.load(tmp_path / "reference.pth", weights_only=True)
    assert loaded.state_dict.keys() == reference.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name
