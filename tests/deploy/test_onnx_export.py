"""ONNX export: checker, metadata, parity with PyTorch on real images, plugin mode, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asset_paths import BCCD
from ddetr.artefacts.onnx_file import read_card
from ddetr.deploy.onnx_export import export_onnx
from ddetr.deploy.trt_plugin import PLUGIN_INPUTS, PLUGIN_OP, with_plugin_attention
from ddetr.errors import CheckpointError, SpecError
from ddetr.model.detector import build_model_from_checkpoint
from ddetr.model.preprocess import preprocess_images


def bccd_val_images(count: int) -> list[Path]:
    data = json.loads((BCCD / "annotations" / "val.json").read_text())
    return [BCCD / "images" / im["file_name"] for im in data["images"][:count]]


def run_both(checkpoint: Path, onnx_file: Path, images: torch.Tensor) -> tuple[tuple, tuple]:
    model, _ = build_model_from_checkpoint(checkpoint)
    with torch.no_grad():
        out = model(images)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(["pred_logits", "pred_boxes"], {"inputs": images.numpy()})
    return (out.pred_logits.numpy(), out.pred_boxes.numpy()), (logits, boxes)


def test_export_passes_checker_and_carries_metadata(tiny_onnx: Path) -> None:
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["inputs"]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    assert {i.domain for i in proto.opset_import} == {""} and proto.opset_import[0].version == 17
    assert any(n.op_type == "GridSample" for n in proto.graph.node)
    card = read_card(tiny_onnx)
    assert card.class_names == ("", "circle", "square", "triangle") and card.num_classes == 4
    assert card.num_queries == 10 and card.num_select == 10
    assert card.input_size == (96, 64) and card.trt_plugin is False and card.batch_size is None
    assert card.mean == pytest.approx([0.485, 0.456, 0.406]) and card.model.hidden_dim == 32
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"


def test_parity_on_bccd_batch_1_and_3_from_one_dynamic_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Real images at a moderate size (320x240): ONNX Runtime == PyTorch within 1e-4."""
    onnx_file = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", input_size=(320, 240)).onnx_file
    paths = bccd_val_images(3)
    batch, mask, _ = preprocess_images(
        paths, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(320, 240)
    )
    assert batch.shape == (3, 3, 240, 320) and not mask.any()
    for images in (batch[:1], batch):
        (ref_logits, ref_boxes), (logits, boxes) = run_both(tiny_checkpoint, onnx_file, images)
        assert logits.shape == (images.shape[0], 10, 4) and boxes.shape == (images.shape[0], 10, 4)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_fixed_batch_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    onnx_file = export_onnx(
        tiny_checkpoint, tmp_path / "b2.onnx", input_size=(64, 64), batch_size=2
    ).onnx_file
    proto = onnx.load(str(onnx_file))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    images = torch.randn(2, 3, 64, 64)
    (ref_logits, _), (logits, _) = run_both(tiny_checkpoint, onnx_file, images)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


def test_plugin_mode_has_plugin_nodes_with_the_plugin_inputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    onnx_file = export_onnx(
        tiny_checkpoint, tmp_path / "trt.onnx", input_size=(96, 64), on_cpu=False
    ).onnx_file
    proto = onnx.load(str(onnx_file))
    onnx.checker.check_model(proto)
    plugins = [n for n in proto.graph.node if n.op_type == PLUGIN_OP]
    assert len(plugins) == 3  # 1 encoder self-attention + 2 decoder cross-attentions
    assert not any(n.op_type == "GridSample" for n in proto.graph.node)
    assert read_card(onnx_file).trt_plugin is True
    # spatial_shapes and level_start_index: int32 [[4, 6], [2, 3]] and [0, 24] at 96x64 (stages 2, 3: strides 16, 32)
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    node = plugins[0]
    assert len(node.input) == len(PLUGIN_INPUTS) == 5
    shapes, starts = constants[node.input[1]], constants[node.input[2]]
    assert shapes.dtype == np.int32 and shapes.tolist() == [[4, 6], [2, 3]]
    assert starts.dtype == np.int32 and starts.tolist() == [0, 24]


def test_plugin_module_equals_reference_in_pytorch(tiny_checkpoint: Path) -> None:
    model, _ = build_model_from_checkpoint(tiny_checkpoint)
    plugin_model = with_plugin_attention(model).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref, out = model(images), plugin_model(images)
    torch.testing.assert_close(out.pred_logits, ref.pred_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, atol=1e-6, rtol=0)


def test_opset_below_16_is_a_spec_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"opset_version: 15.*GridSample"):
        export_onnx(tiny_checkpoint, tmp_path / "x.onnx", opset_version=15)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_and_non_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_onnx(tmp_path / "nope.pth", tmp_path / "x.onnx")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        export_onnx(junk, tmp_path / "x.onnx")
    assert "\n" not in str(info.value) and "junk.pth" in str(info.value)


def test_existing_output_replaced_atomically(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    # a crash during the export leaves the old file untouched and no temporary file behind
    import ddetr.deploy.onnx_export as module

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(module.torch.onnx, "export", boom)
    with pytest.raises(RuntimeError):
        export_onnx(tiny_checkpoint, out, input_size=(64, 64))
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]
    monkeypatch.undo()
    export_onnx(tiny_checkpoint, out, input_size=(64, 64))
    assert read_card(out).input_size == (64, 64) and os.listdir(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize(
    "changes",
    [
        {"two_stage": True, "with_box_refine": True},
        {"num_feature_levels": 1, "return_interm_indices": [3], "with_box_refine": False},
        {"activation": "gelu", "position_embedding": "learned"},
        {"activation": "mish"},
        {"activation": "gelu_new", "dec_dim_feedforward": 48},
        {"activation": "prelu"},
        {"activation": "xielu", "two_stage": True},
    ],
    ids=[
        "two_stage",
        "single_scale_no_refine",
        "gelu_learned_positions",
        "mish",
        "gelu_new_dec_ffn",
        "prelu",
        "xielu_two_stage",
    ],
)
def test_variants_export_with_parity(changes: dict, make_checkpoint, tmp_path: Path) -> None:
    ckpt = make_checkpoint(**changes)
    onnx_file = export_onnx(ckpt, tmp_path / "v.onnx", input_size=(64, 64)).onnx_file
    images = torch.randn(2, 3, 64, 64)
    (ref_logits, ref_boxes), (logits, boxes) = run_both(ckpt, onnx_file, images)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-4, rtol=0)
