"""A stand-in for ``ddetr evaluate`` used by the fast AutoML tests: writes the metrics.json a real run writes.

Its test mAP favours a different learning rate (best near 1e-5) than fake_train.py's validation mAP (best
near 3e-4), so a test can tell which of the two a search ranked its trials by. ``FAKE_EVALUATE_FAIL=1`` makes
it exit with an error.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_EVALUATE_FAIL") == "1":
        sys.stderr.write("error: evaluation failed on purpose\n")
        return 2
    spec = yaml.safe_load(Path(argv[argv.index("-e") + 1]).read_text())
    overrides = dict(a.split("=", 1) for a in argv if "=" in a)
    checkpoint = overrides["evaluate.checkpoint"]
    assert Path(checkpoint).is_file(), checkpoint
    assert spec["dataset"]["test_data_sources"]["json_file"], "no test data in the trial's spec"
    lr = spec["train"]["optim"]["lr"]
    value = max(0.0, 0.5 - 0.1 * abs(math.log10(lr) - math.log10(1e-5)))
    out = Path(spec["results_dir"]) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"model": checkpoint, "test_mAP": value, "test_mAP50": min(1.0, 1.5 * value)}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
