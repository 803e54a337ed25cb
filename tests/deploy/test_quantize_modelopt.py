"""quantize with NVIDIA ModelOpt on the CPU: layer rules, the modelopt.pytorch checkpoint (restore, predict,
export to Q/DQ ONNX) and the modelopt.onnx file, each calibrated on real images, and the action's report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from asset_paths import BCCD
from ddetr.data.calibration import calibration_batches
from ddetr.deploy.quantize_layers import module_path, onnx_nodes_to_exclude, parse_layers, select_layers
from ddetr.deploy.quantize_onnx import DEFAULT_KEEP_FLOAT
from ddetr.errors import CheckpointError, SpecError, UnavailableError
from ddetr.model.detector import DeformableDETR, build_model_from_checkpoint
from ddetr.model.quantized import bake_batch_norms
from ddetr.spec.load import load_spec
from ddetr.spec.sections import ModelSection
from ddetr.tasks import evaluate, inference, quantize


def _bccd_images(count: int) -> list[Path]:
    data = json.loads((BCCD / "annotations" / "train.json").read_text())
    return [BCCD / "images" / im["file_name"] for im in data["images"][:count]]


def _calibration(count: int = 4):
    """``make(mean, std)`` -> real BCCD images (640x480) resized as a 64-px evaluation resizes them."""

    def make(mean, std):
        return calibration_batches(
            _bccd_images(count),
            batch_size=1,
            num_batches=count,
            mean=mean,
            std=std,
            input_size=None,
            shortest_side=64,
            max_size=96,
        )

    return make


def _images(input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Two real BCCD images (2, 3, 64, 85) resized as a 64-px evaluation does, or to ``input_size`` (w, h)."""
    batches = calibration_batches(
        _bccd_images(2),
        batch_size=2,
        num_batches=1,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=input_size,
        shortest_side=64,
        max_size=96,
    )
    return torch.from_numpy(next(iter(batches)))


# ------------------------------------------------------------------ rules and batch-norm baking (no ModelOpt)


def test_layer_rules_select_conv_and_linear_by_class_and_path(tiny_section: ModelSection) -> None:
    model = DeformableDETR.from_config(tiny_section, 4).eval()
    everything = select_layers(model, parse_layers([], "static_ptq"), ())
    assert all(type(model.get_submodule(n)) in (nn.Conv2d, nn.Linear) for n in everything)
    assert "input_proj.0.0" in everything and "transformer.encoder.layers.0.linear1" in everything
    # nn.MultiheadAttention reads its output projection's weight itself: never quantized
    assert not [n for n in everything if "self_attn.out_proj" in n]
    assert set(everything.values()) == {(True, True)}
    assert set(select_layers(model, parse_layers([], "weight_only_ptq"), ()).values()) == {(True, False)}

    kept = select_layers(model, parse_layers([], "static_ptq"), DEFAULT_KEEP_FLOAT)
    assert not [n for n in kept if any(p in n for p in DEFAULT_KEEP_FLOAT)]
    assert len(kept) < len(everything)

    layers = [
        {"module_name": "Linear", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}},
        {"module_name": "transformer.decoder.*", "weights": {"dtype": "native"}},
    ]
    chosen = select_layers(model, parse_layers(layers, "static_ptq"), ["*.linear2"])
    assert chosen and all(type(model.get_submodule(n)) is nn.Linear for n in chosen)
    assert not [n for n in chosen if n.startswith("transformer.decoder.") or n.endswith("linear2")]
    assert "transformer.encoder.layers.0.linear1" in chosen


@pytest.mark.parametrize(
    ("layers", "mode", "match"),
    [
        ([{"module_name": "Linear", "weights": {"dtype": "fp8_e4m3fn"}}], "static_ptq", "int8 or native"),
        ([{"module_name": "Linear", "weights": {"dtype": "int4"}}], "static_ptq", "not a dtype"),
        ([{"weights": {"dtype": "int8"}}], "static_ptq", r"layers\[0\]: expected"),
        ([{"module_name": "*", "bits": 8}], "static_ptq", "unknown keys"),
        ([{"module_name": "*", "activations": {"dtype": "int8"}}], "weight_only_ptq", "static_ptq"),
    ],
)
def test_layer_rules_errors(layers: list, mode: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        parse_layers(layers, mode)
    assert "\n" not in str(info.value)


def test_bake_batch_norms_keeps_outputs(tiny_section: ModelSection) -> None:
    torch.manual_seed(0)
    model = DeformableDETR.from_config(tiny_section, 4).eval()
    for module in model.backbone.modules():  # non-trivial statistics, as a trained backbone has
        if hasattr(module, "running_var"):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_(0, 0.2)
            module.weight.data.uniform_(0.5, 1.5)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(images)
        baked = bake_batch_norms(model)
        after = model(images)
    assert baked == 20  # resnet_18: stem + 16 block convs + 3 downsamples
    assert {type(m).__name__ for m in model.backbone.modules() if isinstance(m, nn.Conv2d)} == {"Conv2d"}
    assert model.backbone.body.conv1.bias is not None
    torch.testing.assert_close(after.pred_logits, before.pred_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes, atol=1e-5, rtol=1e-4)


def test_onnx_exclusions_follow_rules(tiny_onnx: Path) -> None:
    proto = onnx.load(str(tiny_onnx))
    default = onnx_nodes_to_exclude(proto, parse_layers([], "static_ptq"), DEFAULT_KEEP_FLOAT)
    by_name = [n.name for n in proto.graph.node if n.op_type == "MatMul" and "class_embed" in n.name]
    assert by_name and set(by_name) <= set(default)
    assert module_path("/model/backbone/body/conv1/Conv") == "backbone.body.conv1"
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert not set(convs) & set(default)
    no_conv = onnx_nodes_to_exclude(
        proto,
        parse_layers(
            [{"module_name": "Linear", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}}],
            "static_ptq",
        ),
        (),
    )
    assert set(convs) <= set(no_conv)
    half = [{"module_name": "Conv2d", "weights": {"dtype": "int8"}}]
    with pytest.raises(SpecError, match="weights and inputs together"):
        onnx_nodes_to_exclude(proto, parse_layers(half, "static_ptq"), ())


# ------------------------------------------------------------------------------------- modelopt.pytorch


@pytest.fixture(scope="module")
def modelopt_static(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny checkpoint quantized by ModelOpt (static INT8) on 4 real images: (path, in-memory model, note)."""
    from ddetr.deploy.quantize_modelopt import quantize_checkpoint_modelopt

    out = tmp_path_factory.mktemp("modelopt") / "tiny_modelopt_int8.pth"
    model, note = quantize_checkpoint_modelopt(
        tiny_checkpoint,
        out,
        mode="static_ptq",
        rules=parse_layers([], "static_ptq"),
        keep_float=DEFAULT_KEEP_FLOAT,
        calibration=_calibration(4),
    )
    return out, model, note


def test_modelopt_pytorch_checkpoint_restores_exactly(modelopt_static, tiny_checkpoint: Path) -> None:
    path, model, note = modelopt_static
    assert note["backend"] == "modelopt.pytorch" and note["calibration_images"] == 4
    assert note["baked_batch_norms"] == 20 and note["int8_weights_stored"] == note["layers"] > 30
    loaded, info = build_model_from_checkpoint(path)
    float_model, _ = build_model_from_checkpoint(tiny_checkpoint)
    images = _images()
    with torch.no_grad():
        a, b, f = model(images), loaded(images), float_model(images)
    torch.testing.assert_close(b.pred_logits, a.pred_logits, atol=0, rtol=0)
    torch.testing.assert_close(b.pred_boxes, a.pred_boxes, atol=0, rtol=0)
    assert 0 < (a.pred_logits - f.pred_logits).abs().max() < 0.2  # quantized: close, not identical
    assert (a.pred_boxes - f.pred_boxes).abs().max() < 0.05
    # the backbone convolutions (baked batch norms) carry calibrated weight and input quantizers
    conv1 = loaded.backbone.body.conv1
    assert conv1.weight_quantizer.is_enabled and conv1.input_quantizer.is_enabled
    assert conv1.input_quantizer.amax is not None and conv1.input_quantizer.amax.numel() == 1
    assert not loaded.class_embed[0].weight_quantizer.is_enabled  # keep_float
    stored = info.raw["state_dict"]["backbone.body.conv1.weight"]
    assert stored.dtype == torch.int8 and path.stat().st_size < 0.4 * tiny_checkpoint.stat().st_size


def test_modelopt_pytorch_predictor_and_export(
    modelopt_static, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from ddetr.artefacts.onnx_file import read_card
    from ddetr.deploy.onnx_export import export_onnx
    from ddetr.runtime import load_predictor
    from ddetr.runtime.onnx_backend import OnnxPredictor

    path, model, _ = modelopt_static
    images = _images()
    logits, boxes = load_predictor(str(path))(images)  # what evaluate and inference run
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(logits, expected.pred_logits, atol=0, rtol=0)

    size = (images.shape[-1], images.shape[-2])
    q_onnx = export_onnx(path, tmp_path / "q.onnx", input_size=size, batch_size=-1).onnx_file
    f_onnx = export_onnx(tiny_checkpoint, tmp_path / "f.onnx", input_size=size, batch_size=-1).onnx_file
    proto = onnx.load(str(q_onnx))
    onnx.checker.check_model(proto)
    produced = {n.output[0]: n for n in proto.graph.node}
    conv_inputs = [produced.get(i) for n in proto.graph.node if n.op_type == "Conv" for i in n.input[:2]]
    assert all(p is not None and p.op_type == "DequantizeLinear" for p in conv_inputs)
    assert read_card(q_onnx).quantization["backend"] == "modelopt.pytorch"
    q_logits, q_boxes = OnnxPredictor(q_onnx)(images)
    f_logits, f_boxes = OnnxPredictor(f_onnx)(images)
    assert (q_boxes - boxes).abs().max() < 0.02  # ONNX Runtime's int8 kernels round a little differently
    assert (q_boxes - f_boxes).abs().max() < 0.05 and (q_logits - f_logits).abs().max() > 0


def test_modelopt_pytorch_weight_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from ddetr.deploy.quantize_modelopt import quantize_checkpoint_modelopt

    out = tmp_path / "wo.pth"
    model, note = quantize_checkpoint_modelopt(
        tiny_checkpoint,
        out,
        mode="weight_only_ptq",
        rules=parse_layers([], "weight_only_ptq"),
        keep_float=["class_embed"],
    )
    assert note["activations"] == "float" and note["calibration_images"] == 0
    loaded, _ = build_model_from_checkpoint(out)
    assert not loaded.backbone.body.conv1.input_quantizer.is_enabled
    assert loaded.bbox_embed[0].layers[0].weight_quantizer.is_enabled
    float_model, _ = build_model_from_checkpoint(tiny_checkpoint)
    images = _images()
    with torch.no_grad():
        a, b, f = model(images), loaded(images), float_model(images)
    torch.testing.assert_close(b.pred_logits, a.pred_logits, atol=0, rtol=0)
    assert 0 < (a.pred_boxes - f.pred_boxes).abs().max() < 0.05


def test_modelopt_checkpoint_without_modelopt_is_unavailable(modelopt_static, monkeypatch) -> None:
    path, _, _ = modelopt_static
    for name in [m for m in sys.modules if m == "modelopt" or m.startswith("modelopt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if nvidia-modelopt were not installed
    with pytest.raises(UnavailableError, match="nvidia-modelopt") as info:
        build_model_from_checkpoint(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)


def test_plan_checks_modelopt(
    spec_args: list[str], spec_checkpoint: Path, tiny_onnx: Path, tiny_data: dict, tmp_path: Path
) -> None:
    from ddetr.deploy.quantize import plan_quantization

    def plan(*extra: str):
        spec = _spec(spec_args, tiny_data, *extra)
        return plan_quantization(spec.quantize, spec.dataset.quant_calibration_data_sources, tmp_path)

    torch_ckpt = (f"quantize.model_path={spec_checkpoint}", "quantize.backend=modelopt.pytorch")
    static = plan(*torch_ckpt)
    assert static.needs_calibration and static.output.name == "model_modelopt_int8.pth"
    weight_only = plan(*torch_ckpt, "quantize.mode=weight_only_ptq")
    assert not weight_only.needs_calibration and weight_only.output.name == "model_modelopt_int8_wo.pth"
    onnx_plan = plan(f"quantize.model_path={tiny_onnx}", "quantize.backend=modelopt.onnx")
    assert onnx_plan.output.name == "tiny_modelopt_int8.onnx" and onnx_plan.rules[0].activations
    cases = [
        ((*torch_ckpt, "quantize.algorithm=entropy"), SpecError, "modelopt.onnx"),
        ((*torch_ckpt, "quantize.backend_kwargs={activation_type: int8}"), SpecError, "activation_type"),
        ((f"quantize.model_path={tiny_onnx}", "quantize.backend=modelopt.pytorch"), CheckpointError, ".pth"),
        (
            (
                f"quantize.model_path={tiny_onnx}",
                "quantize.backend=modelopt.onnx",
                "quantize.mode=weight_only_ptq",
            ),
            SpecError,
            "static_ptq",
        ),
        (
            (
                f"quantize.model_path={tiny_onnx}",
                "quantize.backend=modelopt.onnx",
                "quantize.algorithm=percentile",
            ),
            SpecError,
            "max, entropy",
        ),
        (
            (*torch_ckpt, "quantize.layers=[{module_name: Linear, weights: {dtype: fp8_e5m2}}]"),
            SpecError,
            "int8 or native",
        ),
        ((*torch_ckpt, "dataset.quant_calibration_data_sources.image_dir="), SpecError, "calibration"),
    ]
    for extra, error, match in cases:
        with pytest.raises(error, match=match) as info:
            plan(*extra)
        assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # plans write nothing


# ------------------------------------------------------------------------------------------- the action


def _spec(spec_args: list[str], tiny_data: dict, *extra: str):
    train = tiny_data["train"]
    return load_spec(
        None,
        [
            *spec_args,
            "quantize.mode=static_ptq",
            "quantize.backend_kwargs={num_calibration_images: 8}",
            f"dataset.quant_calibration_data_sources={{image_dir: {train['image_dir']}, json_file: {train['json_file']}}}",
            "export.input_width=64",
            "export.input_height=64",
            *extra,
        ],
    )


def test_quantize_action_modelopt_pytorch_then_evaluate_and_infer(
    spec_args: list[str],
    spec_checkpoint: Path,
    tiny_data: dict,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ddetr.runtime import devices

    monkeypatch.setattr(devices, "_noticed", set())
    spec = _spec(
        spec_args, tiny_data, f"quantize.model_path={spec_checkpoint}", "quantize.backend=modelopt.pytorch"
    )
    with caplog.at_level("INFO", logger="ddetr.runtime.devices"):
        report = quantize.run(spec)
    # TAO's default device, on a machine without a GPU: one notice
    assert [r.getMessage() for r in caplog.records if "quantize.device" in r.getMessage()] == [
        "No GPU found: quantize.device=cuda runs on the CPU."
    ]
    out = report.quantized_model
    assert out.name == "model_modelopt_int8.pth" and report.float_model == spec_checkpoint
    assert report.quantization["calibration_images"] == 8 and report.device == "cpu"
    assert report.weights_bytes_after < 0.5 * report.weights_bytes_before
    assert report.eval_images == 8
    assert all(0.0 <= v <= 1.0 for v in (report.mAP_before, report.mAP_after))
    written = json.loads(report.report_json.read_text())
    assert report.report_json == out.parent / "quantize_report.json"
    assert written["mAP"] == {"before": report.mAP_before, "after": report.mAP_after}
    assert written["size_bytes"] == {
        "before": report.weights_bytes_before,
        "after": report.weights_bytes_after,
    }

    args = [*spec_args, f"evaluate.checkpoint={out}", f"inference.checkpoint={out}"]
    metrics = evaluate.run(load_spec(None, args))
    assert metrics.test_mAP == pytest.approx(report.mAP_after, abs=1e-9)
    result = inference.run(load_spec(None, [*args, "inference.conf_threshold=0.0"]))
    assert result.images == 8 and result.detections > 0


def test_quantize_action_modelopt_onnx_report(
    spec_args: list[str], spec_checkpoint: Path, tiny_data: dict, tmp_path: Path
) -> None:
    from ddetr.artefacts.onnx_file import read_card
    from ddetr.deploy.quantize_onnx import quantize_onnx_static
    from ddetr.runtime.onnx_backend import OnnxPredictor

    spec = _spec(
        spec_args,
        tiny_data,
        f"quantize.model_path={spec_checkpoint}",
        "quantize.backend=modelopt.onnx",
        "quantize.algorithm=max",
    )
    report = quantize.run(spec)
    q_onnx, f_onnx = report.quantized_model, report.float_model
    assert q_onnx.name == "model_modelopt_int8.onnx" and f_onnx.name == "model_fp32.onnx"
    assert report.weights_bytes_after < 0.5 * report.weights_bytes_before
    assert report.mAP_before is not None and report.mAP_after is not None and report.eval_images == 8
    note = read_card(q_onnx).quantization
    assert note["backend"] == "modelopt.onnx" and note["calibrate_method"] == "max"
    proto = onnx.load(str(q_onnx))
    produced = {n.output[0]: n for n in proto.graph.node}
    fed = {
        n.name
        for n in proto.graph.node
        for i in n.input
        if getattr(produced.get(i), "op_type", "") == "DequantizeLinear"
    }
    kept = [n.name for n in proto.graph.node if n.op_type == "MatMul" and "class_embed" in n.name]
    assert kept and not set(kept) & fed  # keep_float honoured
    assert [n for n in fed if "/Conv" in n]  # convolutions run on int8-rounded inputs and weights
    images = _images((64, 64))
    q_logits, q_boxes = OnnxPredictor(q_onnx)(images)
    f_logits, f_boxes = OnnxPredictor(f_onnx)(images)
    assert (q_boxes - f_boxes).abs().max() < 0.05 and (q_logits - f_logits).abs().max() > 0
    # ModelOpt ran in a child process: ONNX Runtime's own quantizer still works in this one
    batches = iter([images[:1].numpy(), images[1:].numpy()])
    ort_note = quantize_onnx_static(f_onnx, tmp_path / "ort_int8.onnx", batches)
    assert ort_note["backend"] == "onnxruntime" and (tmp_path / "ort_int8.onnx").is_file()


def test_modelopt_onnx_with_key_is_never_plain_under_its_name(tiny_onnx: Path, tmp_path: Path) -> None:
    """The encrypted output is written in one atomic step: no plain file under its final name, no leftovers."""
    from ddetr.artefacts.onnx_file import read_card
    from ddetr.crypto import is_encrypted
    from ddetr.deploy.quantize_layers import parse_layers
    from ddetr.deploy.quantize_modelopt import quantize_onnx_modelopt
    from ddetr.runtime.onnx_backend import OnnxPredictor

    out = tmp_path / "q.onnx"
    images = _images((96, 64))
    note = quantize_onnx_modelopt(
        tiny_onnx,
        out,
        [images.numpy()],
        read_card(tiny_onnx),
        rules=parse_layers([], "static_ptq"),
        keep_float=list(DEFAULT_KEEP_FLOAT),
        encryption_key="s3cret",
    )
    assert note["backend"] == "modelopt.onnx"
    assert is_encrypted(out) and [p.name for p in tmp_path.iterdir()] == ["q.onnx"]
    with pytest.raises(CheckpointError, match="is encrypted"):
        OnnxPredictor(out)
    q_logits, _ = OnnxPredictor(out, encryption_key="s3cret")(images)
    f_logits, _ = OnnxPredictor(tiny_onnx)(images)
    assert q_logits.shape == f_logits.shape and 0 < (q_logits - f_logits).abs().max() < 1.0
