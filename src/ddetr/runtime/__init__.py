"""Predictors: one interface over PyTorch checkpoints, ONNX Runtime and TensorRT engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddetr.errors import CheckpointError
from ddetr.runtime.base import ModelInfo, Predictor

__all__ = ["ModelInfo", "Predictor", "load_predictor"]

ENGINE_SUFFIXES = (".engine", ".trt", ".plan")


def load_predictor(
    path: str, *, spec_model: Any | None = None, device: str = "cpu", encryption_key: str | None = None
) -> Predictor:
    """A Predictor for a ``.pth`` checkpoint, an ``.onnx`` file or a TensorRT engine, chosen by the file.

    ``encryption_key`` decrypts a file written with one (plain files ignore it).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file {path} does not exist (or is not a file).")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        from ddetr.runtime.onnx_backend import OnnxPredictor

        return OnnxPredictor(path, encryption_key=encryption_key)
    if suffix in ENGINE_SUFFIXES:
        from ddetr.runtime.tensorrt_backend import TensorRTPredictor

        return TensorRTPredictor(path, encryption_key=encryption_key)
    from ddetr.runtime.torch_backend import TorchPredictor

    return TorchPredictor(path, spec_model=spec_model, device=device, encryption_key=encryption_key)
