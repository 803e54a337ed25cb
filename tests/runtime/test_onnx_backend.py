"""OnnxPredictor: the model card from the metadata, parity with the checkpoint, evaluate/inference on an .onnx file."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import save_checkpoint
from ddetr.deploy.onnx_export import export_onnx
from ddetr.errors import CheckpointError, DataError, UnavailableError
from ddetr.model.detector import DeformableDETR
from ddetr.runtime import load_predictor
from ddetr.runtime.onnx_backend import OnnxPredictor
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import evaluate, inference


@pytest.fixture(scope="module")
def exported(tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, onnx file at 64x64 dynamic batch) of a random-init model of the tiny spec."""
    folder = tmp_path_factory.mktemp("onnx_backend")
    spec = load_spec(None, tiny_overrides(tiny_data, folder / "results"))
    torch.manual_seed(0)
    model = DeformableDETR.from_config(spec.model, 4)
    ckpt = save_checkpoint(
        folder / "model.pth",
        card=ModelCard.from_spec(spec, ["", "circle", "square", "triangle"]),
        state_dict=model.state_dict(),
        spec=spec.model_dump(),
    )
    return ckpt, export_onnx(ckpt, folder / "model.onnx", input_size=(64, 64)).onnx_file


def test_card_from_metadata_and_parity_with_torch(exported: tuple[Path, Path]) -> None:
    ckpt, onnx_file = exported
    predictor = load_predictor(str(onnx_file))
    assert isinstance(predictor, OnnxPredictor) and predictor.backend == "onnxruntime"
    card = predictor.card
    assert card.class_names == ("", "circle", "square", "triangle") and card.num_classes == 4
    assert card.input_size == (64, 64) and card.num_queries == 10
    torch_predictor = load_predictor(str(ckpt))
    images = torch.randn(3, 3, 64, 64)
    logits, boxes = predictor(images)
    ref_logits, ref_boxes = torch_predictor(images)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_wrong_size_input_is_a_data_error(exported: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match="64x64"):
        OnnxPredictor(exported[1])(torch.randn(1, 3, 32, 48))


def test_fixed_batch_file_runs_any_batch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, dynamic = exported
    fixed = export_onnx(ckpt, tmp_path / "b2.onnx", input_size=(64, 64), batch_size=2).onnx_file
    predictor = OnnxPredictor(fixed)
    assert predictor.fixed_batch == 2
    images = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(predictor(images)[0], OnnxPredictor(dynamic)(images)[0], atol=1e-4, rtol=0)


def test_not_a_ddetr_onnx_file(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match="not a ddetr ONNX model") as info:
        load_predictor(str(path))
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(CheckpointError):
        load_predictor(str(garbage))


def test_plugin_file_is_unavailable_in_onnxruntime(exported: tuple[Path, Path], tmp_path: Path) -> None:
    plugin = export_onnx(exported[0], tmp_path / "trt.onnx", input_size=(64, 64), on_cpu=False).onnx_file
    with pytest.raises(UnavailableError, match="on_cpu=true"):
        OnnxPredictor(plugin)


def test_evaluate_and_inference_on_onnx(
    exported: tuple[Path, Path], tiny_data: dict, tiny_overrides, tmp_path: Path, caplog
) -> None:
    _, onnx_file = exported
    args = tiny_overrides(tiny_data, tmp_path / "results")
    # no classmap and a different spec size: the file's names and its fixed size are used, with one warning
    args = [a for a in args if not a.startswith("dataset.infer_data_sources")]
    args.append(f"dataset.infer_data_sources={{image_dir: [{tiny_data['val']['image_dir']}]}}")
    spec = load_spec(
        None,
        [
            *args,
            f"evaluate.trt_engine={onnx_file}",
            f"inference.trt_engine={onnx_file}",
            "inference.conf_threshold=0.0",
            "evaluate.input_width=96",
            "evaluate.input_height=80",
        ],
    )
    with caplog.at_level("WARNING"):
        result = evaluate.run(spec)
    assert result.backend == "onnxruntime" and result.images == 8
    assert caplog.text.count("exported for 64x64") == 1
    out = inference.run(spec)
    labels = sorted((Path(spec.results_dir) / "inference" / "labels").glob("*.txt"))
    assert out.images == 8 and len(labels) == 8
    first = labels[0].read_text().split()
    assert first[0] in {"circle", "square", "triangle"}
    assert read_status(Path(spec.results_dir) / "inference" / "status.json")[-1]["status"] == "SUCCESS"
    dets = json.loads((Path(spec.results_dir) / "evaluate" / "detections.json").read_text())
    assert dets and all(1 <= d["category_id"] <= 3 or d["category_id"] == 0 for d in dets)
