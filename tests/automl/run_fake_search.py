"""Runs a search with the fake trainer in its own process (the tests kill it, or run two at once).

Usage: python run_fake_search.py SPEC.yaml [key=value ...]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ddetr.automl.search import run_search
from ddetr.spec.load import load_spec

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    spec = load_spec(sys.argv[1], sys.argv[2:])
    fake = [sys.executable, str(Path(__file__).with_name("fake_train.py"))]
    automl_dir = Path(spec.results_dir) / "automl"
    run_search(spec, automl_dir, train_command=fake, poll_interval=0.1, heartbeat_interval=1, grace_period=3)
