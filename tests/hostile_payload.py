"""A pickle that would run code when unpickled: it creates a marker file (a stand-in for any command)."""

from __future__ import annotations

from pathlib import Path

import torch


class Payload:
    """Unpickling this object calls ``open(marker, "w")``, creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def save_malicious(path: Path, marker: Path, **tensors: torch.Tensor) -> Path:
    """``torch.save`` a checkpoint-looking dict whose unpickling would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(tensors), "epoch": 0, "hook": Payload(marker)}, path)
    return path
