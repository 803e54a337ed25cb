"""``make demo`` / ``python -m ddetr.demo``: generate the synthetic dataset, train, evaluate and infer on CPU.

The spec it runs is ``configs/demo.yaml`` (a normal spec file: copy it to start your own experiment). The
dataset has three separate splits: training images, validation images (scored during training) and test
images that neither training nor validation sees; the demo reports the validation and test figures apart.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("ddetr.demo")

#: Images per split of the demo's synthetic dataset.
NUM_TRAIN, NUM_VAL, NUM_TEST = 200, 60, 100

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
    from ddetr.errors import DdetrError, Interrupted

    setup_logging()
    start = time.monotonic()
    try:
        # a results_dir= override wins over --results-dir (later overrides win): the data goes where the spec says
        spec = ddetr.load_spec(
            demo_spec_path(), overrides=[f"results_dir={Path(args.results_dir).resolve()}", *args.overrides]
        )
        out = Path(spec.results_dir).resolve()
        data_dir = out / "data"
        generate_synthetic_dataset(data_dir, num_train=NUM_TRAIN, num_val=NUM_VAL, num_test=NUM_TEST, seed=0)
        logger.info("Synthetic dataset ready in %s", data_dir)
        trained = ddetr.train(spec)
        checkpoint = trained.latest
        metrics = ddetr.evaluate(spec, evaluate__checkpoint=checkpoint)
        inferred = ddetr.inference(spec, inference__checkpoint=checkpoint)
    except DdetrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # SIGTERM or Ctrl-C: the step reached is saved; the same command resumes
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.monotonic() - start
    val = trained.val_metrics
    nan = float("nan")
    print()
    print(f"Demo finished in {seconds / 60:.1f} min ({seconds:.0f} s wall time, data generation included).")
    print(
        f"  validation ({NUM_VAL} images) mAP50: {val.get('val_mAP50', nan):.3f}  mAP: {val.get('val_mAP', nan):.3f}"
    )
    print(f"  test ({NUM_TEST} images)       mAP50: {metrics.test_mAP50:.3f}  mAP: {metrics.test_mAP:.3f}")
    print(f"  checkpoint: {checkpoint}")
    print(f"  pictures:   {inferred.images_annotated}")
    print(f"  metrics:    {metrics.metrics_json}")
    report = out / "train" / "report.html"
    if report.is_file():
        print(f"  report:     {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
