"""A stand-in for ``ddetr train`` used by the fast AutoML tests: writes the status.json a real run writes.

The metric is a smooth function of train.optim.lr (best near 3e-4) and grows with the epoch, so the tests know
which trials are better. ``FAKE_EPOCH_SECONDS`` sets the time per epoch (default 0.05).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    spec = yaml.safe_load(Path(argv[argv.index("-e") + 1]).read_text())
    train_dir = Path(spec["results_dir"]) / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    status = train_dir / "status.json"
    lr = spec["train"]["optim"]["lr"]
    epochs = spec["train"]["num_epochs"]
    per_epoch = float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    quality = max(0.0, 0.6 - 0.15 * abs(math.log10(lr) - math.log10(3e-4)))
    with status.open("a") as fh:
        # whether the encryption key reached the trial through its environment (the key itself is not written)
        got_key = bool(os.environ.get("DDETR_ENCRYPTION_KEY"))
        started = {"status": "STARTED", "message": "Starting training.", "epoch": 0, "got_key": got_key}
        fh.write(json.dumps(started) + "\n")
    for epoch in range(epochs):
        time.sleep(per_epoch)
        ckpt = train_dir / f"model_epoch_{epoch:03d}_step_{epoch + 1:05d}.pth"
        ckpt.write_bytes(b"fake")
        link = train_dir / "dd_model_latest.pth"
        link.unlink(missing_ok=True)
        link.symlink_to(ckpt.name)
        value = quality * (epoch + 1) / epochs
        kpi = {"val_mAP": value, "val_mAP50": min(1.0, 1.5 * value), "val_loss": 5.0 - 3.0 * value}
        event = {
            "status": "RUNNING",
            "message": f"Validation after epoch {epoch}.",
            "epoch": epoch,
            "kpi": kpi,
        }
        with status.open("a") as fh:
            fh.write(json.dumps(event) + "\n")
    with status.open("a") as fh:
        fh.write(json.dumps({"status": "SUCCESS", "message": "Training finished.", "kpi": kpi}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
