"""Where the CPU training step's time went: glibc's freed memory and dropout's mask (docs/performance.md).

1. The demo's model (``configs/demo.yaml``: ResNet-18 to stride 16, 3 levels, 1+3 layers, batch 8 at 128x128,
   fp32, 2 threads) trains with and without :func:`ddetr.runtime.allocator.keep_freed_memory`, each setting in its
   own process (the setting is process-wide), alternating: page faults per step and the median step time.
2. Dropout at p=0.1 on the (2, 5440, 1024) feed-forward activations of a ResNet-50 encoder layer at 512 px:
   ``torch.nn.Dropout`` against :class:`ddetr.model.dropout.Dropout`, forward and backward (median of repeats).

Usage: ``python bench/cpu_step.py [--repeats N]``. Other arguments (as ``bench/run_all.py`` passes) are ignored.
``--worker on|off [--batch B] [--steps N]`` runs one setting and prints its figures as JSON (the allocator test
runs it with a small batch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
SIZE = 128
REPO = Path(__file__).resolve().parents[1]


def worker(tune: bool, batch: int, steps: int) -> dict:
    """One process: the demo model's training steps; faults per step and the median step time."""
    import torch
    import yaml

    from ddetr.model.criterion import build_criterion
    from ddetr.model.detector import DeformableDETR
    from ddetr.runtime.allocator import keep_freed_memory
    from ddetr.spec.sections import ModelSection

    tuned = keep_freed_memory() if tune else False
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    section = ModelSection(**yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"])
    model = DeformableDETR.from_config(section, 4).train()
    model.transformer.set_activation_checkpoint(False)
    criterion = build_criterion(section, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.rand(2, 4, generator=generator) * 0.4 + 0.2}
        for _ in range(batch)
    ]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = criterion(model(images), targets)
        criterion.weighted_total(losses).backward()
        optimizer.step()

    for _ in range(2):  # warm-up
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
    return {"tuned": tuned, "faults": faults, "step_s": statistics.median(times)}


def run_worker(tune: bool, batch: int, steps: int) -> dict:
    command = [sys.executable, __file__, "--worker", "on" if tune else "off"]
    command += ["--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def dropout_ms(repeats: int) -> dict[str, tuple[float, float]]:
    """(forward ms, forward+backward ms) of each dropout, median of ``repeats``."""
    import torch
    from torch import nn

    from ddetr.model.dropout import Dropout

    torch.set_num_threads(THREADS)
    x = torch.randn(2, 5440, 1024, requires_grad=True)
    grad = torch.ones(2, 5440, 1024)
    out: dict[str, tuple[float, float]] = {}
    for name, layer in (("torch nn.Dropout", nn.Dropout(0.1)), ("ddetr Dropout", Dropout(0.1))):
        layer.train()
        forward, both = [], []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            y = layer(x)
            middle = time.perf_counter()
            y.backward(grad)
            end = time.perf_counter()
            forward.append(middle - start)
            both.append(end - start)
        out[name] = (1000 * statistics.median(forward[1:]), 1000 * statistics.median(both[1:]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds / dropout repeats")
    parser.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "on", args.batch, args.steps)))
        return 0
    load_before = os.getloadavg()[0]
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(max(1, args.repeats)):
        for tune in (False, True):
            runs[tune].append(run_worker(tune, args.batch, args.steps))
    drop = dropout_ms(max(3, 2 * args.repeats))
    print(
        f"cpu_step: load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        f"cores; demo model, batch {args.batch} at {SIZE}x{SIZE}, fp32, {THREADS} threads, {args.steps} steps "
        f"per process, {max(1, args.repeats)} alternating rounds (medians)"
    )
    header = f"{'measure':<36} {'default':>10} {'kept':>10} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))
    for label, key in (("page faults per training step", "faults"), ("training step (s)", "step_s")):
        off = statistics.median(r[key] for r in runs[False])
        on = statistics.median(r[key] for r in runs[True])
        print(f"{label:<36} {off:>10.3f} {on:>10.3f} {on / off:>7.2f}")
    print("dropout p=0.1 on (2, 5440, 1024):        forward ms   forward+backward ms")
    for name, (forward, both) in drop.items():
        print(f"  {name:<36} {forward:>10.1f} {both:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
