"""CPU benchmark: ddetr's DeformableDETR against Hugging Face transformers' DeformableDetrForObjectDetection.

Both run the same random weights (a ResNet-50, 4 feature levels, box refinement, 300 queries, built in
transformers with ``use_pretrained_backbone=False`` and imported into ddetr through ``import_weights``),
fp32, ``torch.set_num_threads(2)``. Each framework and phase runs in its own subprocess, so that peak
resident memory (``ru_maxrss``) is its own.

Measured: inference latency for one 640x640 and one 800x800 image; one training step (forward, matching,
losses, backward) at batch 2, 512x512; peak RSS of the inference and of the training process.
Targets (ddetr / HF): inference <= 0.35, train step <= 0.7, peak memory <= 0.7; the bf16 rows (<= 0.15 and
<= 0.4 of HF fp32) are recorded as not measured on a CPU without AMX or AVX512-BF16.

Usage: ``python bench/model_cpu.py [--repeats N] [--budget S] [--rounds R] [--strict]`` (``--strict``: exit 1
when a target is missed). The machine is shared: the load average is printed with the results, read ratios
with it in mind. ``--rounds R`` runs the HF and ddetr workers R times, alternating, and keeps each measure's
best round, so that a burst of load on the shared cores does not land on one framework only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _rows  # bench/_rows.py (the script's folder is on sys.path)

THREADS = 2
INFER_SIZES = (640, 800)
TRAIN_BATCH, TRAIN_SIZE = 2, 512
NUM_LABELS = 91
# issue 12's targets (ddetr / HF in the same run)
TARGETS = {"infer": 0.35, "train": 0.7, "memory": 0.7}


def hf_config():
    import transformers

    return transformers.DeformableDetrConfig(
        use_timm_backbone=True,
        backbone="resnet50",
        use_pretrained_backbone=False,
        num_feature_levels=4,
        with_box_refine=True,
        two_stage=False,
        num_queries=300,
        num_labels=NUM_LABELS,
        auxiliary_loss=True,  # as the original trains and as ddetr's aux_loss default
    )


def prepare(workdir: Path) -> tuple[Path, Path]:
    """Random HF weights -> a model folder, and the same weights imported as a ddetr checkpoint."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from ddetr import import_weights

    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(hf_config()).eval()
    folder = workdir / "hf"
    model.config.save_pretrained(folder)
    # every tensor written (as Hub checkpoints have them), tied copies included
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    checkpoint = import_weights("hf", folder, workdir / "ddetr.pth").output
    return folder, checkpoint


def _targets(generator) -> list[dict]:
    import torch

    targets = []
    for _ in range(TRAIN_BATCH):
        n = 6
        centers = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(1, NUM_LABELS, (n,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centers, sizes], 1)})
    return targets


def _median_seconds(step, repeats: int, budget_s: float) -> float:
    """Median time of ``step`` over ``repeats`` runs after one warm-up; stops early once ``budget_s`` is spent."""
    step()  # warm-up
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(framework: str, phase: str, source: Path, repeats: int, budget_s: float) -> dict:
    """Runs in a subprocess: load one framework's model and time one phase."""
    import torch

    torch.set_num_threads(THREADS)
    generator = torch.Generator().manual_seed(0)
    if framework == "ddetr":
        from ddetr.model.criterion import build_criterion
        from ddetr.model.detector import build_model_from_checkpoint
        from ddetr.runtime.allocator import keep_freed_memory

        keep_freed_memory()  # as ddetr's train, evaluate and inference do
        model, loaded = build_model_from_checkpoint(source)
        model.transformer.set_activation_checkpoint(False)  # train.activation_checkpoint: false, the fastest
        criterion = build_criterion(loaded.card.model, loaded.card.num_classes)

        def infer(images):
            return model(images)

        def train_step(images, targets):
            outputs = model(images)
            losses = criterion(outputs, targets)
            criterion.weighted_total(losses).backward()
    else:
        import transformers

        model = transformers.DeformableDetrForObjectDetection.from_pretrained(source)

        def infer(images):
            return model(pixel_values=images)

        def train_step(images, targets):
            labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
            model(pixel_values=images, labels=labels).loss.backward()

    result: dict[str, float] = {}
    if phase == "infer":
        model.eval()
        for size in INFER_SIZES:
            images = torch.randn(1, 3, size, size, generator=generator)
            with torch.inference_mode():
                result[f"infer_{size}"] = _median_seconds(
                    lambda images=images: infer(images), repeats, budget_s
                )
    else:
        model.train()
        images = torch.randn(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE, generator=generator)
        targets = _targets(generator)

        def step():
            model.zero_grad(set_to_none=True)
            train_step(images, targets)

        result["train_step"] = _median_seconds(step, repeats, budget_s)
    result[f"peak_rss_{phase}_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def run_worker(framework: str, phase: str, source: Path, repeats: int, budget_s: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, __file__, "--worker", framework, "--phase", phase, "--source", str(source)]
    command += ["--repeats", str(repeats), "--budget", str(budget_s)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{framework} {phase} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_has_bf16_matrix_units() -> bool:
    """AMX or AVX512-BF16 in /proc/cpuinfo: what the bf16 targets assume (without them bf16 is emulated)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def report(ddetr: dict, hf: dict) -> list[dict]:
    """Record each row (bench/_rows.py) and return them."""
    rows = [(f"inference fp32 {s}x{s}, 1 image (s)", f"infer_{s}", "infer") for s in INFER_SIZES]
    rows.append(
        (f"train step fp32, batch {TRAIN_BATCH} {TRAIN_SIZE}x{TRAIN_SIZE} (s)", "train_step", "train")
    )
    rows += [(f"peak RSS, {p} process (MB)", f"peak_rss_{p}_mb", "memory") for p in ("infer", "train")]
    recorded = []
    for label, key, kind in rows:
        if key not in ddetr or key not in hf:  # a phase not measured (--phases)
            continue
        recorded.append(_rows.record(label, ddetr[key], hf[key], "HF fp32", TARGETS[kind]))
    reason = (
        "not measured: this CPU has no AMX or AVX512-BF16, which the bf16 targets assume"
        if not cpu_has_bf16_matrix_units()
        else "not measured: the converted bf16 inference path is not built yet"
    )
    if f"infer_{INFER_SIZES[-1]}" in ddetr:
        recorded.append(
            _rows.record("inference bf16 800x800 vs HF fp32", None, None, "HF fp32", 0.15, note=reason)
        )
    if "train_step" in ddetr:
        recorded.append(
            _rows.record("train step bf16 autocast vs HF fp32", None, None, "HF fp32", 0.4, note=reason)
        )
    return recorded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=45.0,
        help="seconds of timed runs per measurement before stopping early",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating HF/ddetr worker rounds; the best round is kept"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--phases", nargs="+", choices=("infer", "train"), default=["infer", "train"], help="what to measure"
    )
    parser.add_argument("--worker", choices=("ddetr", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("infer", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.phase, args.source, args.repeats, args.budget)))
        return 0

    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ddetr-bench-") as tmp:
        folder, checkpoint = prepare(Path(tmp))
        results: dict[str, dict[str, float]] = {"ddetr": {}, "hf": {}}
        for phase in args.phases:
            for _ in range(max(1, args.rounds)):
                for framework, source in (("hf", folder), ("ddetr", checkpoint)):
                    measured = run_worker(framework, phase, source, args.repeats, args.budget)
                    for key, value in measured.items():
                        results[framework][key] = min(value, results[framework].get(key, value))
    print(
        f"model_cpu: load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"model_cpu: ResNet-50, 4 levels, box refine, 300 queries, {NUM_LABELS} classes; fp32, "
        f"{THREADS} threads, median of up to {args.repeats} runs ({args.budget:.0f} s budget each) after 1 warm-up, "
        f"best of {max(1, args.rounds)} alternating round(s)"
    )
    rows = report(results["ddetr"], results["hf"])
    print("\n".join(_rows.table(rows)))
    print(f"model_cpu: {time.perf_counter() - start:.0f} s")
    return 1 if args.strict and not all(row["ok"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
