"""Checks behind bench/gpu_check.sh, one subcommand each; the last line printed is the PASS/FAIL detail.

``python bench/_gpu_check.py cuda | data DIR | loss_falls TRAIN_DIR | bench DIR | backend EVAL_DIR NAME
PROVIDER | same_map EVAL_DIR REF_EVAL_DIR POINTS | quantized QUANTIZE_DIR POINTS | evaluated EVAL_DIR | ddp
TRAIN_DIR REF_TRAIN_DIR``. Exit status 1 on failure.
(run_all.py skips files starting with "_": this is not a benchmark of its own.)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

SIZE, NUM_TRAIN, NUM_VAL, BATCH = 256, 600, 100, 8
TARGETS = {"infer_800": 1.0, "train_step": 1.0}  # ddetr / HF time on the GPU


def cuda() -> str:
    import torch

    assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
    return f"{torch.cuda.device_count()} GPU(s), {torch.cuda.get_device_name(0)}, torch {torch.__version__}"


def data(out: str) -> str:
    """The synthetic shapes dataset and a spec for a small model on it."""
    from ddetr.data.synthetic import generate_synthetic_dataset

    folder = Path(out)
    d = generate_synthetic_dataset(
        folder, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=(SIZE, SIZE), seed=0
    )
    train, val = d["train"], d["val"]
    spec = f"""
model: {{backbone: resnet_18, hidden_dim: 128, nheads: 4, enc_layers: 2, dec_layers: 2, dim_feedforward: 512,
        num_queries: 50, num_select: 50, num_feature_levels: 2, return_interm_indices: [2, 3]}}
dataset:
  num_classes: 4
  batch_size: {BATCH}
  workers: 4
  train_data_sources: [{{image_dir: {train["image_dir"]}, json_file: {train["json_file"]}}}]
  val_data_sources: [{{image_dir: {val["image_dir"]}, json_file: {val["json_file"]}}}]
  test_data_sources: {{image_dir: {val["image_dir"]}, json_file: {val["json_file"]}}}
  augmentation: {{scales: [{SIZE}], train_random_resize: [{SIZE}], train_random_crop_min: {SIZE // 2},
                 train_random_crop_max: {SIZE}, random_resize_max_size: {SIZE}, test_random_resize: {SIZE}}}
train: {{optim: {{lr: 0.0004, lr_backbone: 0.00004, lr_steps: [100]}}, seed: 1}}
export: {{input_width: {SIZE}, input_height: {SIZE}}}
gen_trt_engine: {{tensorrt: {{min_batch_size: 1, opt_batch_size: {BATCH}, max_batch_size: {BATCH}}}}}
"""
    (folder / "spec.yaml").write_text(spec)
    (folder / "images").mkdir(exist_ok=True)
    link = folder / "images" / "train"
    if not link.exists():
        link.symlink_to(Path(train["image_dir"]).resolve())
    return f"{NUM_TRAIN} + {NUM_VAL} images at {SIZE} px, spec {folder / 'spec.yaml'}"


def _events(train_dir: str) -> list[dict]:
    from ddetr.status import read_status

    return read_status(Path(train_dir) / "status.json")


def loss_falls(train_dir: str) -> str:
    losses = [e["kpi"]["train_loss"] for e in _events(train_dir) if "train_loss" in e.get("kpi", {})]
    assert len(losses) >= 2 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < 0.8 * losses[0], f"train_loss {losses[0]:.3f} -> {losses[-1]:.3f} (not 20% lower)"
    return f"train_loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _metrics(eval_dir: str) -> dict:
    return json.loads((Path(eval_dir) / "metrics.json").read_text())


def backend(eval_dir: str, name: str, provider: str) -> str:
    metrics = _metrics(eval_dir)
    assert metrics["backend"] == name, metrics["backend"]
    import onnxruntime as ort

    assert any(provider in p for p in ort.get_available_providers()), ort.get_available_providers()
    return f"{name} with {provider}: mAP {100 * metrics['test_mAP']:.2f}"


def same_map(eval_dir: str, reference_dir: str, points: str) -> str:
    got, ref = 100 * _metrics(eval_dir)["test_mAP"], 100 * _metrics(reference_dir)["test_mAP"]
    assert ref > 1.0, f"reference mAP {ref:.2f}: the model learned nothing, nothing to compare"
    assert abs(got - ref) <= float(points), f"mAP {got:.2f} vs ONNX Runtime {ref:.2f} (> {points} points)"
    return f"mAP {got:.2f} vs ONNX Runtime {ref:.2f} (within {points} points)"


def quantized(quantize_dir: str, points: str) -> str:
    """quantize ran on the GPU and the quantized model's mAP is within ``points`` of the float model's."""
    report = json.loads((Path(quantize_dir) / "quantize_report.json").read_text())
    assert report["device"].startswith("cuda"), f"quantize ran on {report['device']}"
    before, after = 100 * report["mAP"]["before"], 100 * report["mAP"]["after"]
    assert before > 1.0, f"float mAP {before:.2f}: the model learned nothing, nothing to compare"
    assert abs(after - before) <= float(points), f"mAP {before:.2f} -> {after:.2f} (> {points} points)"
    return f"{report['backend']} on {report['device']}: mAP {before:.2f} -> {after:.2f}"


def evaluated(eval_dir: str) -> str:
    """An evaluation finished with a finite mAP (the checkpoint loaded)."""
    mAP = 100 * _metrics(eval_dir)["test_mAP"]
    assert math.isfinite(mAP), mAP
    return f"checkpoint evaluated: mAP {mAP:.2f}"


def ddp(train_dir: str, reference_dir: str) -> str:
    events = _events(train_dir)
    assert events[-1]["status"] == "SUCCESS", events[-1]
    steps = next(e["step"] for e in events if e.get("message", "").startswith("Train epoch 0"))
    single = next(
        e["step"] for e in _events(reference_dir) if e.get("message", "").startswith("Train epoch 0")
    )
    assert steps == math.ceil((NUM_TRAIN // 2) / BATCH) and single == math.ceil(NUM_TRAIN / BATCH), (
        steps,
        single,
    )
    return f"2 GPUs: {steps} steps per epoch (1 GPU: {single})"


def bench(out: str) -> str:
    """ddetr against Hugging Face on the GPU, same random weights: inference 800x800, one training step."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import transformers

    import model_cpu  # the CPU benchmark's model and weights
    from ddetr.model.criterion import build_criterion
    from ddetr.model.detector import build_model_from_checkpoint

    folder, checkpoint = model_cpu.prepare(Path(out))
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 800, 800, generator=generator).to(device)
    batch = torch.randn(2, 3, 512, 512, generator=generator).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in model_cpu._targets(generator)]
    ours, loaded = build_model_from_checkpoint(checkpoint)
    ours = ours.to(device)
    criterion = build_criterion(loaded.card.model, loaded.card.num_classes)
    hf = transformers.DeformableDetrForObjectDetection.from_pretrained(folder).to(device)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    def timed(step, repeats: int = 20) -> float:
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    def train_ours() -> None:
        ours.zero_grad(set_to_none=True)
        criterion.weighted_total(criterion(ours(batch), targets)).backward()

    def train_hf() -> None:
        hf.zero_grad(set_to_none=True)
        hf(pixel_values=batch, labels=labels).loss.backward()

    ours.eval(), hf.eval()
    with torch.inference_mode():
        with_ours = ours(image)
        with_hf = hf(pixel_values=image)
        diff = (with_ours.pred_boxes - with_hf.pred_boxes).abs().max().item()
        infer = timed(lambda: ours(image)) / timed(lambda: hf(pixel_values=image))
    ours.train(), hf.train()
    train = timed(train_ours, 10) / timed(train_hf, 10)
    line = f"ddetr/HF time: inference 800x800 {infer:.2f}, train step {train:.2f}; boxes max diff {diff:.1e}"
    assert diff < 1e-3, line
    assert infer <= TARGETS["infer_800"] and train <= TARGETS["train_step"], line
    return line


def main() -> int:
    command, args = sys.argv[1], sys.argv[2:]
    try:
        print(globals()[command](*args))
    except AssertionError as exc:
        print(f"{command}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
