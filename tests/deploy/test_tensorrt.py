"""gen_trt_engine without a GPU: spec -> builder settings, the calibration stream, the one-line unavailability error."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.engine_file import read_sidecar, write_sidecar
from ddetr.data.coco import CocoDetection
from ddetr.data.transforms import build_transforms
from ddetr.deploy.tensorrt import build_settings, calibration_stream, parse_layers_precision
from ddetr.errors import CheckpointError, DataError, SpecError, UnavailableError
from ddetr.runtime.trt import require_tensorrt
from ddetr.spec.load import load_spec
from ddetr.spec.sections import ModelSection
from ddetr.status import read_status
from ddetr.tasks import gen_trt_engine

META = ModelCard(ModelSection(), 4, input_size=(96, 64))  # an exported model card: fixed size, dynamic batch


def _spec(spec_args: list[str], *extra: str):
    return load_spec(None, [*spec_args, *extra])


def test_settings_from_spec(spec_args: list[str], tmp_path: Path) -> None:
    spec = _spec(
        spec_args,
        "gen_trt_engine.tensorrt.data_type=fp16",
        "gen_trt_engine.tensorrt.workspace_size=512",
        "gen_trt_engine.tensorrt.min_batch_size=1",
        "gen_trt_engine.tensorrt.opt_batch_size=2",
        "gen_trt_engine.tensorrt.max_batch_size=4",
        "gen_trt_engine.tensorrt.layers_precision=['/model/class_embed.1/MatMul:fp32', 'Softmax:fp32']",
        f"gen_trt_engine.timing_cache={tmp_path / 'cache.bin'}",
    )
    settings = build_settings(spec.gen_trt_engine, "m.onnx", "m.engine", META)
    assert settings.data_type == "FP16" and settings.workspace_bytes == 512 * 2**20
    assert settings.profile() == ((1, 3, 64, 96), (2, 3, 64, 96), (4, 3, 64, 96))
    assert settings.layers_precision == [("/model/class_embed.1/MatMul", "fp32"), ("Softmax", "fp32")]
    assert settings.timing_cache.endswith("cache.bin") and settings.calibration is None
    fixed = build_settings(_spec(spec_args, "gen_trt_engine.batch_size=3").gen_trt_engine, "m", "e", META)
    assert (fixed.min_batch, fixed.opt_batch, fixed.max_batch) == (3, 3, 3)


def test_settings_errors(spec_args: list[str]) -> None:
    bad_order = _spec(
        spec_args, "gen_trt_engine.tensorrt.min_batch_size=4", "gen_trt_engine.tensorrt.max_batch_size=2"
    )
    with pytest.raises(SpecError, match="min_batch_size <= opt_batch_size <= max_batch_size"):
        build_settings(bad_order.gen_trt_engine, "m", "e", META)
    with pytest.raises(SpecError, match="fixed batch size 2"):
        build_settings(_spec(spec_args).gen_trt_engine, "m", "e", META.evolve(batch_size=2))
    with pytest.raises(SpecError, match="cal_image_dir"):
        build_settings(
            _spec(spec_args, "gen_trt_engine.tensorrt.data_type=INT8").gen_trt_engine, "m", "e", META
        )
    for entry in ("no_colon", "layer:fp64", ":fp32"):
        with pytest.raises(SpecError, match="layers_precision"):
            parse_layers_precision([entry])


def test_calibration_stream_equals_evaluation_preprocessing(spec_args: list[str], tiny_data: dict) -> None:
    folder = tiny_data["val"]["image_dir"]
    spec = _spec(
        spec_args,
        "gen_trt_engine.tensorrt.data_type=INT8",
        f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{folder}]",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=3",
        "gen_trt_engine.tensorrt.calibration.cal_batches=2",
    )
    settings = build_settings(spec.gen_trt_engine, "m", "e", META)
    batches = list(calibration_stream(settings, META))
    assert len(batches) == 2 and all(b.shape == (3, 3, 64, 96) and b.dtype == np.float32 for b in batches)
    # the reference: the validation transform evaluate uses at the model's fixed size, image by image
    transforms = build_transforms(
        False,
        scales=[64],
        train_random_resize=[64],
        train_random_crop_min=1,
        train_random_crop_max=2,
        random_resize_max_size=96,
        horizontal_flip_prob=0.0,
        test_random_resize=64,
        input_mean=META.mean,
        input_std=META.std,
        input_size=(96, 64),
    )
    dataset = CocoDetection([(folder, tiny_data["val"]["json_file"])], 4, transforms, train=False)
    by_name = {Path(r["path"]).name: i for i, r in enumerate(dataset.records)}
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == ".jpg")
    for index, path in enumerate(files[:6]):
        expected, _ = dataset[by_name[path.name]]
        torch.testing.assert_close(
            torch.from_numpy(batches[index // 3][index % 3]), expected, atol=1e-6, rtol=0
        )


def test_too_few_calibration_images(spec_args: list[str], tiny_data: dict) -> None:
    spec = _spec(
        spec_args,
        "gen_trt_engine.tensorrt.data_type=INT8",
        f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{tiny_data['val']['image_dir']}]",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=4",
        "gen_trt_engine.tensorrt.calibration.cal_batches=3",
    )
    settings = build_settings(spec.gen_trt_engine, "m", "e", META)
    with pytest.raises(DataError, match="4 x 3 = 12 images needed, 8 found"):
        calibration_stream(settings, META)


def test_require_tensorrt_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(
        UnavailableError, match="needs TensorRT, which is not installed: pip install tensorrt"
    ) as info:
        require_tensorrt()
    assert "\n" not in str(info.value)
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnavailableError, match="needs an NVIDIA GPU"):
        require_tensorrt()


def test_gen_trt_engine_action_without_tensorrt(
    spec_args: list[str], tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    spec = _spec(spec_args, f"gen_trt_engine.onnx_file={tiny_onnx}")
    with pytest.raises(UnavailableError, match="TensorRT"):
        gen_trt_engine.run(spec)
    events = read_status(Path(spec.results_dir) / "gen_trt_engine" / "status.json")
    assert events[-1]["status"] == "FAILURE" and "TensorRT" in events[-1]["message"]
    # spec problems come first, before TensorRT is looked for
    with pytest.raises(SpecError, match=r"gen_trt_engine\.onnx_file"):
        gen_trt_engine.run(_spec(spec_args))


def _tensorrt_and_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    # TensorRT "installed" and `count` CUDA devices: only the device plan runs, never TensorRT itself
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_gen_trt_engine_builds_on_gpu_id(
    spec_args: list[str], tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddetr.deploy.tensorrt as tensorrt_module

    calls: list[int] = []

    def fake_build(settings, card, encryption_key=None, gpu=0):
        calls.append(gpu)
        Path(settings.engine_file).write_bytes(b"engine")
        return Path(settings.engine_file)

    monkeypatch.setattr(tensorrt_module, "build_engine", fake_build)
    _tensorrt_and_gpus(monkeypatch, 2)
    result = gen_trt_engine.run(
        _spec(spec_args, f"gen_trt_engine.onnx_file={tiny_onnx}", "gen_trt_engine.gpu_id=1")
    )
    assert calls == [1] and result.trt_engine.read_bytes() == b"engine"
    spec = _spec(spec_args, f"gen_trt_engine.onnx_file={tiny_onnx}", "gen_trt_engine.gpu_id=2")
    with pytest.raises(SpecError) as info:
        gen_trt_engine.run(spec)
    assert str(info.value).startswith(
        "gen_trt_engine.gpu_id: GPU 2 does not exist (this machine has 2 GPU(s)"
    )
    assert calls == [1]  # refused before any build
    events = read_status(Path(spec.results_dir) / "gen_trt_engine" / "status.json")
    assert events[-1]["status"] == "FAILURE" and "gen_trt_engine.gpu_id" in events[-1]["message"]


def test_build_engine_makes_gpu_id_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT builds on the current CUDA device: build_engine enters ``torch.cuda.device(gpu)`` first."""
    import contextlib

    import ddetr.deploy.tensorrt as tensorrt_module

    events: list[str] = []

    @contextlib.contextmanager
    def fake_device(index):
        events.append(f"enter {index}")
        try:
            yield
        finally:
            events.append(f"exit {index}")

    class Stop(Exception):
        pass

    def fake_build(trt, settings, card, encryption_key, gpu):
        events.append(f"build on {gpu}")
        raise Stop

    monkeypatch.setattr(tensorrt_module, "require_tensorrt", lambda: object())
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(tensorrt_module, "_build", fake_build)
    settings = tensorrt_module.TrtBuildSettings("m.onnx", "m.engine", "FP32", 1, (3, 64, 96), 1, 1, 1)
    with pytest.raises(Stop):
        tensorrt_module.build_engine(settings, META, gpu=3)
    assert events == ["enter 3", "build on 3", "exit 3"]


def test_engine_without_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"m\.engine\.json"):
        read_sidecar(engine)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a JSON file"):
        read_sidecar(engine)


def test_sidecar_round_trip_and_legacy_layout(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    card = META.evolve(class_names=("", "a"), batch_size=2)
    write_sidecar(engine, card, {"max_batch": 2, "data_type": "FP16"})
    sidecar = read_sidecar(engine)
    assert sidecar.card == card and sidecar.max_batch == 2 and sidecar.tensorrt["data_type"] == "FP16"
    # engines built before model cards: the ONNX file's flat metadata plus the build settings
    legacy = {"num_classes": 4, "class_names": ["", "a"], "num_queries": 300, "input_size": [96, 64]}
    legacy |= {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "batch_size": -1, "trt_plugin": True}
    legacy |= {"model": ModelSection().model_dump(), "tensorrt": {"max_batch": 3}}
    (tmp_path / "m.engine.json").write_text(json.dumps(legacy))
    old = read_sidecar(engine)
    assert old.card.input_size == (96, 64) and old.card.mean == (0.5, 0.5, 0.5) and old.card.trt_plugin
    assert old.card.class_names == ("", "a") and old.max_batch == 3 and old.card.batch_size is None
