"""The fast stand-in trainer (fake_train.py) run as a recorded ``train`` job, as ``ddetr train`` records itself."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import fake_train

from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks.common import prepare_results_dir
from ddetr.tasks.folders import best_checkpoint, checkpoint_records
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import TrainResult


@recorded("train")
def run(spec, argv: list[str]) -> TrainResult:
    train_dir = prepare_results_dir(spec, "train")
    code = fake_train.main(argv)
    if code:
        raise SystemExit(code)
    # the stand-in's status.json has no step numbers: its KPIs are matched to the checkpoints by epoch
    kpis = {
        e["epoch"]: e["kpi"] for e in read_status(train_dir / "status.json") if e.get("kpi") and "epoch" in e
    }
    records = tuple(
        replace(r, val_mAP=kpis[r.epoch]["val_mAP"], val_mAP50=kpis[r.epoch]["val_mAP50"])
        for r in checkpoint_records(train_dir)
    )
    return TrainResult(train_dir, records, None, best_checkpoint(records), len(records), len(records), 0.0)


if __name__ == "__main__":
    args = sys.argv[1:]
    run(load_spec(args[args.index("-e") + 1], action="train"), args)
