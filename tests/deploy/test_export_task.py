"""``ddetr export`` action: output location, status.json, DeepStream files, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddetr.artefacts.onnx_file import read_card
from ddetr.errors import CheckpointError, SpecError
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import export


def test_export_action_writes_onnx_nvdsinfer_and_status(spec_args: list[str], spec_checkpoint: Path) -> None:
    spec = load_spec(
        None,
        [
            *spec_args,
            f"export.checkpoint={spec_checkpoint}",
            "export.on_cpu=true",
            "export.input_width=64",
            "export.input_height=48",
            "export.serialize_nvdsinfer=true",
        ],
    )
    result = export.run(spec)
    out = Path(spec.results_dir) / "export"
    assert result.onnx_file == out / "model.onnx" and result.input_size == (64, 48)
    assert result.labels_file == out / "labels.txt" and result.nvinfer_config is not None
    card = read_card(result.onnx_file)
    assert card.input_size == (64, 48) and card.class_names == ("", "circle", "square", "triangle")
    assert (out / "labels.txt").read_text().splitlines() == ["class_0", "circle", "square", "triangle"]
    config = (out / "nvinfer_config.txt").read_text()
    assert "onnx-file=model.onnx" in config and "infer-dims=3;48;64" in config
    assert "num-detected-classes=4" in config
    assert read_status(out / "status.json")[-1]["status"] == "SUCCESS"


def test_export_action_errors(spec_args: list[str], spec_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"export\.checkpoint"):
        export.run(load_spec(None, spec_args))
    with pytest.raises(CheckpointError, match="does not exist"):
        export.run(load_spec(None, [*spec_args, f"export.checkpoint={tmp_path / 'missing.pth'}"]))
    with pytest.raises(SpecError, match="opset_version: 13"):
        export.run(
            load_spec(None, [*spec_args, f"export.checkpoint={spec_checkpoint}", "export.opset_version=13"])
        )
    assert not (Path(load_spec(None, spec_args).results_dir) / "export" / "model.onnx").exists()


def test_plugin_export_warns_without_tensorrt(spec_args: list[str], spec_checkpoint: Path, caplog) -> None:
    spec = load_spec(
        None,
        [
            *spec_args,
            f"export.checkpoint={spec_checkpoint}",
            "export.input_width=64",
            "export.input_height=64",
        ],
    )
    assert spec.export.on_cpu is False  # TAO's default
    with caplog.at_level("WARNING"):
        result = export.run(spec)
    assert result.trt_plugin is True
    if not export.tensorrt_installed():
        assert "ONNX Runtime cannot run" in caplog.text


def test_export_onnx_file_left_missing_is_derived(
    spec_args: list[str], spec_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """TAO's template leaves ``onnx_file: ???``: the file is named after the checkpoint, in the results folder."""
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        None,
        [*spec_args, f"export.checkpoint={spec_checkpoint}", "export.onnx_file=???", "export.on_cpu=true"],
    )
    result = export.run(spec)
    assert result.onnx_file == Path(spec.results_dir) / "export" / "model.onnx" and result.onnx_file.is_file()
    assert not (tmp_path / "???").exists()
