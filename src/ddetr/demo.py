"""``make demo`` / ``python -m ddetr.demo``: generate the synthetic dataset, train, evaluate and infer on CPU.

The spec it runs is ``configs/demo.yaml`` (a normal spec file: copy it to start your own experiment).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("ddetr.demo")

REPO_SPEC = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
PACKAGED_SPEC = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def demo_spec_path() -> Path:
    """The demo spec: the repository's configs/demo.yaml, else the copy inside the package."""
    return REPO_SPEC if REPO_SPEC.is_file() else PACKAGED_SPEC


def main(argv: list[str] | None = None) -> int:
    """Run the whole demo; returns a process exit code."""
    parser = argparse.ArgumentParser(prog="python -m ddetr.demo", description=__doc__)
    parser.add_argument("--results-dir", default="demo_output", help="where data and results go")
    parser.add_argument("overrides", nargs="*", help="spec overrides, e.g. train.num_epochs=5")
    args = parser.parse_args(argv)

    import ddetr
    from ddetr.cli import setup_logging
    from ddetr.data.synthetic import generate_synthetic_dataset
    from ddetr.errors import DdetrError

    setup_logging()
    start = time.monotonic()
    out = Path(args.results_dir).resolve()
    data_dir = out / "data"
    try:
        generate_synthetic_dataset(data_dir, seed=0)
        logger.info("Synthetic dataset ready in %s", data_dir)
        spec = ddetr.load_spec(demo_spec_path(), overrides=[f"results_dir={out}", *args.overrides])
        trained = ddetr.train(spec)
        checkpoint = trained.latest
        metrics = ddetr.evaluate(spec, evaluate__checkpoint=checkpoint)
        inferred = ddetr.inference(spec, inference__checkpoint=checkpoint)
    except DdetrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    minutes = (time.monotonic() - start) / 60
    val = trained.val_metrics
    print()
    print(f"Demo finished in {minutes:.1f} min.")
    print(
        f"  validation mAP50: {val.get('val_mAP50', float('nan')):.3f}  mAP: {val.get('val_mAP', float('nan')):.3f}"
    )
    print(f"  test mAP50:       {metrics.test_mAP50:.3f}  mAP: {metrics.test_mAP:.3f}")
    print(f"  checkpoint:       {checkpoint}")
    print(f"  pictures:         {inferred.images_annotated}")
    print(f"  metrics:          {metrics.metrics_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
