"""encryption_key on the deployment side: encrypted ONNX exports, quantized models and the TensorRT plan."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf.message import DecodeError

from ddetr.artefacts.onnx_file import read_card
from ddetr.crypto import MAGIC, is_encrypted
from ddetr.deploy.onnx_export import export_onnx
from ddetr.errors import CheckpointError
from ddetr.runtime import load_predictor
from ddetr.runtime.onnx_backend import OnnxPredictor
from ddetr.spec.load import load_spec
from ddetr.tasks import export, gen_trt_engine, quantize

KEY = "deploy-key"


@pytest.fixture(scope="module")
def encrypted_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported as ``tiny_onnx`` is (96x64, dynamic batch), but encrypted with KEY."""
    out = tmp_path_factory.mktemp("enc_onnx") / "tiny.onnx"
    return export_onnx(tiny_checkpoint, out, input_size=(96, 64), batch_size=-1, encryption_key=KEY).onnx_file


def test_encrypted_export_is_not_onnx_on_disk(encrypted_onnx: Path, tiny_onnx: Path) -> None:
    assert encrypted_onnx.read_bytes().startswith(MAGIC)
    with pytest.raises(DecodeError):
        onnx.load(str(encrypted_onnx))
    assert read_card(encrypted_onnx, KEY) == read_card(tiny_onnx)
    assert read_card(encrypted_onnx, KEY).encrypted and not read_card(tiny_onnx).encrypted
    assert [p.name for p in encrypted_onnx.parent.iterdir()] == ["tiny.onnx"]  # no plain temporary left


def test_encrypted_export_runs_like_the_plain_one(encrypted_onnx: Path, tiny_onnx: Path) -> None:
    images = torch.randn(2, 3, 64, 96)
    logits, boxes = OnnxPredictor(encrypted_onnx, encryption_key=KEY)(images)
    plain_logits, plain_boxes = OnnxPredictor(tiny_onnx)(images)
    torch.testing.assert_close(logits, plain_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(boxes, plain_boxes, atol=1e-6, rtol=0)
    # the file-type dispatch passes the key through too
    torch.testing.assert_close(load_predictor(str(encrypted_onnx), encryption_key=KEY)(images)[0], logits)


def test_encrypted_export_needs_the_key(encrypted_onnx: Path) -> None:
    with pytest.raises(CheckpointError, match="is encrypted; set encryption_key"):
        read_card(encrypted_onnx)
    with pytest.raises(CheckpointError, match="is encrypted"):
        load_predictor(str(encrypted_onnx))
    with pytest.raises(CheckpointError, match="does not match") as info:
        OnnxPredictor(encrypted_onnx, encryption_key="not-it")
    assert "not-it" not in str(info.value) and KEY not in str(info.value)


def test_export_action_with_key_and_deepstream_files(
    spec_args: list[str], spec_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(
        None,
        [
            *spec_args,
            f"encryption_key={KEY}",
            f"export.checkpoint={spec_checkpoint}",
            "export.input_width=64",
            "export.input_height=48",
            "export.serialize_nvdsinfer=true",
        ],
    )
    with caplog.at_level(logging.INFO):
        result = export.run(spec)
    onnx_file = result.onnx_file
    assert is_encrypted(onnx_file) and read_card(onnx_file, KEY).input_size == (64, 48)
    out = onnx_file.parent
    # DeepStream's files stay plain text, with one warning that DeepStream needs a plain model
    assert (out / "labels.txt").read_text().splitlines()[1] == "circle"
    assert "onnx-file=model.onnx" in (out / "nvinfer_config.txt").read_text()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "DeepStream" in r.getMessage()]
    assert len(warnings) == 1
    assert KEY not in caplog.text
    for name in ("status.json", "experiment.yaml", "labels.txt", "nvinfer_config.txt"):
        assert KEY not in (out / name).read_text()


def test_quantize_encrypted_onnx_writes_encrypted_int8(
    spec_args: list[str], encrypted_onnx: Path, tiny_data: dict
) -> None:
    train = tiny_data["train"]
    spec = load_spec(
        None,
        [
            *spec_args,
            f"encryption_key={KEY}",
            f"quantize.model_path={encrypted_onnx}",
            "quantize.backend=onnxruntime",
            "quantize.mode=static_ptq",
            "quantize.backend_kwargs={num_calibration_images: 4}",
            f"dataset.quant_calibration_data_sources={{image_dir: {train['image_dir']}}}",
        ],
    )
    report = quantize.run(spec)  # the report's before/after mAP reads both files with the key
    out = report.quantized_model
    assert is_encrypted(out) and report.mAP_after is not None
    assert read_card(out, KEY).quantization["backend"] == "onnxruntime"
    with pytest.raises(CheckpointError, match="is encrypted"):
        read_card(out)
    images = torch.randn(1, 3, 64, 96)
    q_boxes = OnnxPredictor(out, encryption_key=KEY)(images)[1]
    f_boxes = OnnxPredictor(encrypted_onnx, encryption_key=KEY)(images)[1]
    assert (q_boxes - f_boxes).abs().max() < 0.05
    # the decrypted copy the quantizer read from is gone
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_torchao_with_key_reads_and_writes_encrypted(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from ddetr.artefacts.checkpoint import load_checkpoint, save_checkpoint
    from ddetr.deploy.quantize_torchao import load_quantized_model, quantize_checkpoint_torchao

    source = tmp_path / "float.pth"
    plain = load_checkpoint(tiny_checkpoint)
    save_checkpoint(source, card=plain.card, state_dict=plain.state_dict, encryption_key=KEY)
    model, _ = quantize_checkpoint_torchao(source, tmp_path / "q.pth", encryption_key=KEY)
    assert is_encrypted(tmp_path / "q.pth")
    loaded, _ = load_quantized_model(tmp_path / "q.pth", KEY)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).pred_logits, model(images).pred_logits, atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="is encrypted"):
        load_quantized_model(tmp_path / "q.pth")


def test_gen_trt_engine_plan_reads_encrypted_onnx(spec_args: list[str], encrypted_onnx: Path) -> None:
    args = [
        *spec_args,
        f"gen_trt_engine.onnx_file={encrypted_onnx}",
        "gen_trt_engine.tensorrt.data_type=FP16",
    ]
    settings, card = gen_trt_engine.plan(load_spec(None, [*args, f"encryption_key={KEY}"]))
    assert settings.input_shape == (3, 64, 96) and card.num_queries == 10
    with pytest.raises(CheckpointError, match="is encrypted; set encryption_key"):
        gen_trt_engine.plan(load_spec(None, args))
