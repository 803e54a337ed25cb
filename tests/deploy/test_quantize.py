"""quantize: ONNX Runtime static INT8, torchao weight-only, the plan's one-line errors, the action's report."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from ddetr.artefacts.onnx_file import read_card
from ddetr.data.calibration import calibration_batches, list_calibration_images
from ddetr.deploy.quantize import plan_quantization
from ddetr.deploy.quantize_onnx import QUANTIZED_OP_TYPES, quantize_onnx_static
from ddetr.errors import CheckpointError, SpecError, UnavailableError
from ddetr.runtime.onnx_backend import OnnxPredictor
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import quantize


def _calibration(tiny_data: dict, size: tuple[int, int]) -> object:
    paths = list_calibration_images(tiny_data["train"]["image_dir"], tiny_data["train"]["json_file"])
    return calibration_batches(
        paths,
        batch_size=2,
        num_batches=4,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=size,
    )


def test_static_int8_keeps_sampling_softmax_and_norms_float(
    tiny_onnx: Path, tiny_data: dict, tmp_path: Path
) -> None:
    out = tmp_path / "q.onnx"
    note = quantize_onnx_static(tiny_onnx, out, _calibration(tiny_data, (96, 64)))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    produced = {o for n in proto.graph.node for o in n.output}
    # dequantized activations (not weights/biases): what reads them computes on int8-rounded values
    dq_outputs = {
        n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in produced
    }
    consumers = {n.op_type for n in proto.graph.node if any(i in dq_outputs for i in n.input)}
    assert {"Conv", "MatMul"} <= consumers
    sensitive = {"GridSample", "Softmax", "LayerNormalization", "InstanceNormalization", "Sigmoid"}
    assert {"GridSample", "Softmax", "LayerNormalization"} <= {n.op_type for n in proto.graph.node}
    assert not consumers & sensitive
    by_name = [
        n for n in proto.graph.node if n.op_type in QUANTIZED_OP_TYPES and "sampling_offsets" in n.name
    ]
    assert by_name and not any(i in dq_outputs for n in by_name for i in n.input)
    assert note["excluded_nodes"] > 0
    card = read_card(out)
    assert card.quantization["backend"] == "onnxruntime" and card.class_names[1] == "circle"
    assert out.stat().st_size < 0.5 * tiny_onnx.stat().st_size
    images = next(iter(_calibration(tiny_data, (96, 64))))
    q_logits, q_boxes = OnnxPredictor(out)(torch.from_numpy(images))
    f_logits, f_boxes = OnnxPredictor(tiny_onnx)(torch.from_numpy(images))
    assert (q_boxes - f_boxes).abs().max() < 0.05  # close, but not bit-identical: it is quantized
    assert (q_logits - f_logits).abs().max() > 0


def test_torchao_checkpoint_loads_back(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from ddetr.deploy.quantize_torchao import load_quantized_model, quantize_checkpoint_torchao
    from ddetr.model.detector import build_model_from_checkpoint

    model, note = quantize_checkpoint_torchao(tiny_checkpoint, tmp_path / "q.pth", skip_names=["class_embed"])
    assert note["modules"] > 0
    loaded, info = load_quantized_model(tmp_path / "q.pth")
    float_model, _ = build_model_from_checkpoint(tiny_checkpoint)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b, f = model(images), loaded(images), float_model(images)
    torch.testing.assert_close(a.pred_logits, b.pred_logits, atol=0, rtol=0)
    assert 0 < (a.pred_boxes - f.pred_boxes).abs().max() < 0.05
    assert info.card.quantization["skip_names"] == ["class_embed"]
    assert type(loaded.class_embed[0].weight).__name__ != "Int8Tensor"
    assert type(loaded.bbox_embed[0].layers[0].weight).__name__ == "Int8Tensor"
    # evaluate/inference run it through the same Predictor as any checkpoint
    from ddetr.runtime import load_predictor

    logits, _ = load_predictor(str(tmp_path / "q.pth"))(images)
    torch.testing.assert_close(logits, a.pred_logits, atol=0, rtol=0)


def test_torchao_quantizes_a_backbone_trained_with_live_batch_norm(make_checkpoint, tmp_path: Path) -> None:
    """The demo recipe (model.freeze_backbone_bn=false) stores live batch-norm buffers; they quantize and load."""
    from ddetr.deploy.quantize_torchao import load_quantized_model, quantize_checkpoint_torchao

    checkpoint = make_checkpoint(freeze_backbone_bn=False)
    model, _ = quantize_checkpoint_torchao(checkpoint, tmp_path / "q.pth")
    loaded, _ = load_quantized_model(tmp_path / "q.pth")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).pred_logits, model(images).pred_logits, atol=0, rtol=0)


def _section(spec_args: list[str], *extra: str):
    return load_spec(None, [*spec_args, *extra])


def test_plan_errors(spec_args: list[str], spec_checkpoint: Path, tmp_path: Path) -> None:
    cal = load_spec(None, spec_args).dataset.quant_calibration_data_sources
    with pytest.raises(SpecError, match=r"quantize\.model_path"):
        spec = _section(spec_args)
        plan_quantization(spec.quantize, cal, tmp_path)
    spec = _section(spec_args, f"quantize.model_path={spec_checkpoint}", "quantize.backend=onnxruntime")
    with pytest.raises(SpecError, match="static_ptq"):
        plan_quantization(spec.quantize, cal, tmp_path)
    spec = _section(
        spec_args,
        f"quantize.model_path={spec_checkpoint}",
        "quantize.backend=onnxruntime",
        "quantize.mode=static_ptq",
    )
    with pytest.raises(SpecError, match=r"quant_calibration_data_sources\.image_dir"):
        plan_quantization(spec.quantize, spec.dataset.quant_calibration_data_sources, tmp_path)
    spec = _section(spec_args, f"quantize.model_path={tmp_path / 'none.pth'}")
    with pytest.raises(CheckpointError, match="does not exist"):
        plan_quantization(spec.quantize, cal, tmp_path)
    spec = _section(spec_args, f"quantize.model_path={spec_checkpoint}", "quantize.backend_kwargs={bogus: 1}")
    with pytest.raises(SpecError, match="bogus"):
        plan_quantization(spec.quantize, cal, tmp_path)


def test_modelopt_missing_is_unavailable(
    spec_args: list[str], spec_checkpoint: Path, tiny_data: dict, tmp_path: Path, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if nvidia-modelopt were not installed
    train = tiny_data["train"]
    for backend in ("modelopt.onnx", "modelopt.pytorch"):
        spec = _section(
            spec_args,
            f"quantize.model_path={spec_checkpoint}",
            f"quantize.backend={backend}",
            "quantize.mode=static_ptq",
            f"dataset.quant_calibration_data_sources={{image_dir: {train['image_dir']}}}",
        )
        with pytest.raises(UnavailableError, match="nvidia-modelopt") as info:
            plan_quantization(spec.quantize, spec.dataset.quant_calibration_data_sources, tmp_path)
        assert "\n" not in str(info.value) and "pip install" in str(info.value)
    assert not list(tmp_path.iterdir())  # the plan fails before any work


def test_torchao_missing_is_unavailable(
    spec_args: list[str], spec_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    monkeypatch.setitem(sys.modules, "torchao", None)
    spec = _section(spec_args, f"quantize.model_path={spec_checkpoint}")
    with pytest.raises(UnavailableError, match="pip install torchao"):
        plan_quantization(spec.quantize, spec.dataset.quant_calibration_data_sources, tmp_path)


def test_quantize_action_onnxruntime_report(
    spec_args: list[str], spec_checkpoint: Path, tiny_data: dict
) -> None:
    train = tiny_data["train"]
    spec = _section(
        spec_args,
        f"quantize.model_path={spec_checkpoint}",
        "quantize.backend=onnxruntime",
        "quantize.mode=static_ptq",
        "quantize.backend_kwargs={num_calibration_images: 8}",
        f"dataset.quant_calibration_data_sources={{image_dir: {train['image_dir']}, json_file: {train['json_file']}}}",
        "export.input_width=64",
        "export.input_height=64",
    )
    report = quantize.run(spec)
    out = Path(spec.results_dir) / "quantize"
    saved = json.loads((out / "quantize_report.json").read_text())
    assert report.report_json == out / "quantize_report.json"
    assert (
        saved["quantized_model"] == str(report.quantized_model) and saved["size_ratio"] == report.size_ratio
    )
    assert saved["mAP"] == {"before": report.mAP_before, "after": report.mAP_after}
    assert report.quantized_model.is_file() and report.quantized_model.name == "model_int8.onnx"
    assert report.float_model.name == "model_fp32.onnx"
    assert report.weights_bytes_after < report.weights_bytes_before
    assert report.mAP_before is not None and report.mAP_after is not None and report.eval_images == 8
    assert read_status(out / "status.json")[-1]["status"] == "SUCCESS"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_quantize_action_torchao_report(spec_args: list[str], spec_checkpoint: Path) -> None:
    spec = _section(spec_args, f"quantize.model_path={spec_checkpoint}")
    report = quantize.run(spec)
    assert report.backend == "torchao" and report.quantized_model.name == "model_int8_wo.pth"
    assert report.weights_bytes_after < report.weights_bytes_before
    assert 0.0 <= report.mAP_after <= 1.0


def test_report_sizes_count_weights_not_optimizer_state(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A training checkpoint's optimizer state is not model size: the report compares weights."""
    import io

    from ddetr.artefacts.checkpoint import load_checkpoint, save_checkpoint
    from ddetr.tasks.quantize import weights_bytes

    info = load_checkpoint(tiny_checkpoint)

    def moments() -> dict[str, torch.Tensor]:  # AdamW keeps two per weight
        return {k: torch.zeros_like(v) for k, v in info.state_dict.items() if v.is_floating_point()}

    training = save_checkpoint(
        tmp_path / "with_optimizer.pth",
        card=info.card,
        state_dict=info.state_dict,
        extra={"optimizer_states": [{"exp_avg": moments(), "exp_avg_sq": moments()}]},
    )
    buffer = io.BytesIO()
    torch.save(info.state_dict, buffer)
    assert weights_bytes(training) == weights_bytes(tiny_checkpoint) == buffer.tell()
    assert training.stat().st_size > 2 * weights_bytes(training)


def test_quantize_device_plan_reaches_calibration_and_evaluation(
    spec_args: list[str], spec_checkpoint: Path, monkeypatch, caplog
) -> None:
    """quantize.device: a GPU this machine lacks is one line before any work; an existing one reaches the
    back end and the before/after evaluation; without CUDA the CPU, with one notice."""
    import logging

    import torch

    import ddetr.deploy.quantize as quantize_module
    import ddetr.runtime
    from ddetr.runtime import devices

    monkeypatch.setattr(devices, "_noticed", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spec = _section(spec_args, f"quantize.model_path={spec_checkpoint}", "quantize.device=cuda:2")
    with pytest.raises(SpecError, match=r"^quantize\.device: GPU 2 does not exist \(this machine has 2 GPU"):
        quantize.run(spec)
    assert not (Path(spec.results_dir) / "quantize").exists()

    seen: list[tuple[str, str]] = []

    class Stop(Exception):
        pass

    def fake_quantize(plan, spec, device="cpu"):
        seen.append(("quantize", device))
        return {"output": str(plan.model_path), "float_model": str(plan.model_path), "quantization": {}}

    def fake_load(path, *, device="cpu", encryption_key=None):
        seen.append(("evaluate", device))
        raise Stop

    monkeypatch.setattr(quantize_module, "quantize", fake_quantize)
    monkeypatch.setattr(ddetr.runtime, "load_predictor", fake_load)
    with pytest.raises(Stop):
        quantize.run(_section(spec_args, f"quantize.model_path={spec_checkpoint}", "quantize.device=cuda:1"))
    assert seen == [("quantize", "cuda:1"), ("evaluate", "cuda:1")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"), pytest.raises(Stop):
        quantize.run(_section(spec_args, f"quantize.model_path={spec_checkpoint}", "quantize.device=cuda:1"))
    assert seen[2:] == [("quantize", "cpu"), ("evaluate", "cpu")]
    assert [r.getMessage() for r in caplog.records] == [
        "No GPU found: quantize.device=cuda:1 runs on the CPU."
    ]


def test_modelopt_onnx_calibration_providers() -> None:
    from ddetr.deploy.quantize_modelopt import calibration_eps

    assert calibration_eps(None) == ["cpu"]
    assert calibration_eps(["CPUExecutionProvider"]) == ["cpu"]
    assert calibration_eps(
        [
            ("TensorrtExecutionProvider", {"device_id": 1}),
            ("CUDAExecutionProvider", {"device_id": 1}),
            "CPUExecutionProvider",
        ]
    ) == ["trt", "cuda:1", "cpu"]
    assert calibration_eps([("CUDAExecutionProvider", {"device_id": 0})]) == ["cuda:0", "cpu"]
