"""Training memory with and without ``train.activation_checkpoint`` (gradient checkpointing of the transformer).

One training step (forward, matching, losses, backward) of ddetr's DeformableDETR at batch 2, 512x512, random
weights and targets, fp32, ``torch.set_num_threads(2)``, once with the encoder and decoder layers recomputed
in the backward pass and once without. Each setting runs in its own subprocess so that its peak resident
memory (``ru_maxrss``) is its own.

Measured per setting: the bytes of tensors autograd keeps for the backward pass (counted with
``torch.autograd.graph.saved_tensors_hooks`` during the forward pass: the memory checkpointing saves), the
process's peak RSS, the median step time, and on a GPU (``--device cuda``) ``torch.cuda.max_memory_allocated``.

Usage: ``python bench/train_memory.py [--repeats N] [--device cpu|cuda] [--small]`` (``--small``: a tiny
model, a quick check that the script runs). Other arguments (as ``bench/run_all.py`` passes) are ignored.
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

THREADS = 2
BATCH, SIZE = 2, 512
NUM_CLASSES = 91


def _section(small: bool):
    from ddetr.spec.sections import ModelSection

    if small:
        return ModelSection(
            backbone="resnet_18",
            hidden_dim=32,
            nheads=2,
            enc_layers=2,
            dec_layers=2,
            dim_feedforward=64,
            num_queries=20,
            num_select=20,
            num_feature_levels=2,
            return_interm_indices=[2, 3],
        )
    return ModelSection()  # ResNet-50, 4 levels, box refinement, 300 queries, 6 + 6 layers


def worker(recompute: bool, repeats: int, device: str, small: bool) -> dict[str, float]:
    """Runs in a subprocess: one setting's saved-tensor bytes, step time and peak memory."""
    import torch

    from ddetr.model.criterion import build_criterion
    from ddetr.model.detector import DeformableDETR

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    section = _section(small)
    size = 128 if small else SIZE
    model = DeformableDETR.from_config(section, NUM_CLASSES).to(device).train()
    model.transformer.set_activation_checkpoint(recompute)
    criterion = build_criterion(section, NUM_CLASSES)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, size, size, generator=generator).to(device)
    targets = []
    for _ in range(BATCH):
        centers = torch.rand(6, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(6, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(1, NUM_CLASSES, (6,), generator=generator)
        targets.append({"labels": labels.to(device), "boxes": torch.cat([centers, sizes], 1).to(device)})
    saved = {"bytes": 0}

    def pack(tensor):
        saved["bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    def step(count: bool = False) -> None:
        model.zero_grad(set_to_none=True)
        saved["bytes"] = 0
        if count:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                total = criterion.weighted_total(criterion(model(images), targets))
        else:
            total = criterion.weighted_total(criterion(model(images), targets))
        total.backward()

    step(count=True)  # warm-up, and the bytes kept for the backward pass
    result = {"saved_mb": saved["bytes"] / 2**20}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result["step_s"] = statistics.median(times)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_worker(recompute: bool, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", "on" if recompute else "off"]
    command += ["--repeats", str(args.repeats), "--device", args.device] + (["--small"] if args.small else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"train_memory worker ({'on' if recompute else 'off'}) failed:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (median)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--small", action="store_true", help="a tiny model: checks that the script runs")
    parser.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "on", max(1, args.repeats), args.device, args.small)))
        return 0
    load_before = os.getloadavg()[0]
    off, on = run_worker(False, args), run_worker(True, args)
    model = (
        "tiny model (--small)" if args.small else "ResNet-50, 4 levels, box refine, 300 queries, 6+6 layers"
    )
    print(f"train_memory: {model}; batch {BATCH}, fp32, {THREADS} threads, {args.device}")
    print(f"train_memory: load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    rows = [("tensors kept for backward (MB)", "saved_mb"), ("peak RSS of the process (MB)", "peak_rss_mb")]
    if "cuda_peak_mb" in off:
        rows.append(("CUDA peak allocated (MB)", "cuda_peak_mb"))
    rows.append(("train step (s)", "step_s"))
    header = f"{'measure':<32} {'without':>10} {'with':>10} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))
    for label, key in rows:
        print(f"{label:<32} {off[key]:>10.2f} {on[key]:>10.2f} {on[key] / off[key]:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
