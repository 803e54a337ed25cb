"""Device plans of evaluate/inference/export with CUDA absent and (mocked) present; CUDA OOM as one line."""

from __future__ import annotations

import logging

import pytest
import torch

from ddetr.errors import DeviceMemoryError, SpecError
from ddetr.runtime import devices
from ddetr.runtime.devices import (
    calibration_providers,
    explain_oom,
    export_device,
    onnx_providers,
    quantize_device,
    run_device,
    trt_build_gpu,
)


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_noticed", set())


def test_run_device_without_cuda_is_the_cpu_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert run_device(1, [0], cuda_available=False) == "cpu"
        assert run_device(2, [1], cuda_available=False) == "cpu"
    assert [r.getMessage() for r in caplog.records] == ["No GPU found: running on the CPU."]


def test_run_device_with_cuda_takes_the_first_gpu_id(caplog: pytest.LogCaptureFixture) -> None:
    assert run_device(1, [2], cuda_available=True, device_count=4) == "cuda:2"
    assert run_device(1, [], cuda_available=True, device_count=1) == "cuda:0"
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert run_device(2, [1, 0], cuda_available=True, device_count=2) == "cuda:1"
        assert run_device(2, [1, 0], cuda_available=True, device_count=2) == "cuda:1"
    assert [r.getMessage() for r in caplog.records] == [
        "Running on one GPU (cuda:1); num_gpus=2 is used by training only."
    ]


def test_several_gpu_ids_run_on_the_first_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert run_device(1, [3, 1], cuda_available=True, device_count=4) == "cuda:3"
        assert run_device(1, [3, 1], cuda_available=True, device_count=4) == "cuda:3"
    assert [r.getMessage() for r in caplog.records] == [
        "Running on one GPU (cuda:3), the first of gpu_ids [3, 1]; the others are used by training only."
    ]


def test_a_gpu_id_beyond_the_machine_is_one_line() -> None:
    with pytest.raises(SpecError) as info:
        run_device(1, [2, 0], cuda_available=True, device_count=2, field="evaluate.gpu_ids")
    assert str(info.value) == (
        "evaluate.gpu_ids: GPU 2 does not exist (this machine has 2 GPU(s), ids 0 to 1); set evaluate.gpu_ids to "
        "one of them"
    )
    assert run_device(1, [7], cuda_available=False, device_count=0) == "cpu"  # not checked on the CPU


def test_run_device_follows_torch_when_not_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert run_device(1, [1]) == "cuda:1"
    with pytest.raises(SpecError, match="GPU 2 does not exist"):
        run_device(1, [2])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device(1, [1]) == "cpu"


def test_onnx_providers_prefer_tensorrt_then_cuda_then_cpu(caplog: pytest.LogCaptureFixture) -> None:
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cuda:1", every) == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert onnx_providers("cuda:0", every[1:]) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert onnx_providers("cpu", every) == ["CPUExecutionProvider"]
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert onnx_providers("cuda:0", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        assert onnx_providers("cuda:0", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert len(caplog.records) == 1 and "onnxruntime-gpu" in caplog.records[0].getMessage()


def test_onnx_providers_ask_the_installed_onnxruntime() -> None:
    import onnxruntime as ort

    providers = onnx_providers("cuda:0")
    assert providers[-1] == "CPUExecutionProvider"
    assert all(p[0] in ort.get_available_providers() for p in providers[:-1])


def test_export_device() -> None:
    assert export_device(on_cpu=False, gpu_id=3, cuda_available=True, device_count=4) == "cuda:3"
    assert export_device(on_cpu=True, gpu_id=3, cuda_available=True, device_count=1) == "cpu"
    assert export_device(on_cpu=False, gpu_id=3, cuda_available=False) == "cpu"
    with pytest.raises(SpecError, match=r"^export\.gpu_id: GPU 3 does not exist"):
        export_device(on_cpu=False, gpu_id=3, cuda_available=True, device_count=1)


def test_quantize_device_without_cuda_is_the_cpu_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert quantize_device("cuda", cuda_available=False) == "cpu"
        assert quantize_device("cuda:1", cuda_available=False) == "cpu"
        assert quantize_device("trt", cuda_available=False) == "cpu"
        assert quantize_device("cpu", cuda_available=False) == "cpu"
    assert [r.getMessage() for r in caplog.records] == ["No GPU found: quantize.device=cuda runs on the CPU."]


def test_quantize_device_with_cuda(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ddetr.runtime.devices"):
        assert quantize_device("cuda", cuda_available=True, device_count=1) == "cuda:0"
        assert quantize_device("cuda:2", cuda_available=True, device_count=3) == "cuda:2"
        assert quantize_device("trt", cuda_available=True, device_count=1) == "cuda:0"
        assert quantize_device("cpu", cuda_available=True, device_count=1) == "cpu"
    assert caplog.records == []
    with pytest.raises(SpecError) as info:
        quantize_device("cuda:2", cuda_available=True, device_count=2)
    assert str(info.value).startswith("quantize.device: GPU 2 does not exist (this machine has 2 GPU(s)")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch asked when not told
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert quantize_device("cuda:1") == "cuda:1"


def test_calibration_providers_leave_tensorrt_out_unless_asked() -> None:
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert calibration_providers("cuda:1", available=every) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert calibration_providers("cuda:0", tensorrt=True, available=every)[0] == (
        "TensorrtExecutionProvider",
        {"device_id": 0},
    )
    assert calibration_providers("cpu", tensorrt=True, available=every) == ["CPUExecutionProvider"]


def test_trt_build_gpu() -> None:
    assert trt_build_gpu(1, device_count=2) == 1
    with pytest.raises(
        SpecError, match=r"^gen_trt_engine\.gpu_id: GPU 2 does not exist \(this machine has 1 GPU"
    ):
        trt_build_gpu(2, device_count=1)


def test_cuda_out_of_memory_is_one_line_naming_the_batch_size() -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.8 GiB total)")
    with pytest.raises(DeviceMemoryError) as info:
        with explain_oom("evaluate.batch_size", 8):
            raise oom
    message = str(info.value)
    assert (
        message
        == "CUDA out of memory at batch size 8: lower evaluate.batch_size (e.g. evaluate.batch_size=4)"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(
        DeviceMemoryError, match=r"^CUDA out of memory at batch size 2: lower dataset\.batch_size"
    ):
        with explain_oom("dataset.batch_size", 2):
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: Failed to allocate memory"
            )
    with pytest.raises(ValueError, match="unrelated"):  # anything else passes through
        with explain_oom("dataset.batch_size", 2):
            raise ValueError("unrelated")


def test_evaluate_and_inference_open_their_model_on_the_planned_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """open_predictor hands load_predictor the device of the section's num_gpus/gpu_ids."""
    import ddetr.runtime
    from ddetr.spec.load import load_spec
    from ddetr.tasks.common import open_predictor

    seen: list[str] = []

    class Stop(Exception):
        pass

    def fake_load(path, *, device="cpu", encryption_key=None):
        seen.append(device)
        raise Stop

    monkeypatch.setattr(ddetr.runtime, "load_predictor", fake_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for action in ("evaluate", "inference"):
        spec = load_spec(None, [f"{action}.checkpoint={tmp_path / 'm.pth'}", f"{action}.gpu_ids=[1]"])
        with pytest.raises(Stop):
            open_predictor(spec, action)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Stop):
        open_predictor(load_spec(None, [f"evaluate.checkpoint={tmp_path / 'm.pth'}"]), "evaluate")
    assert seen == ["cuda:1", "cuda:1", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = load_spec(None, [f"inference.checkpoint={tmp_path / 'm.pth'}", "inference.gpu_ids=[2]"])
    with pytest.raises(SpecError, match=r"^inference\.gpu_ids: GPU 2 does not exist"):
        open_predictor(spec, "inference")
    assert len(seen) == 3  # refused before the model is opened
