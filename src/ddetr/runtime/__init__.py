"""Predictors: one interface over PyTorch checkpoints, ONNX Runtime and TensorRT engines.

:func:`load_predictor` picks the back end by the file; every back end is a
:class:`ddetr.model.predict.Predictor` carrying the artefact's model card, run through the one
:func:`ddetr.model.predict.detect`.
"""

from __future__ import annotations

from pathlib import Path

from ddetr.errors import CheckpointError
from ddetr.model.predict import Predictor

__all__ = ["ENGINE_SUFFIXES", "Predictor", "load_predictor"]

ENGINE_SUFFIXES = (".engine", ".trt", ".plan")


def load_predictor(path: str | Path, *, device: str = "cpu", encryption_key: str | None = None) -> Predictor:
    """A Predictor for a ``.pth`` checkpoint, an ``.onnx`` file or a TensorRT engine, chosen by the file.

    Args:
        path: the artefact.
        device: ``"cpu"`` or ``"cuda[:N]"`` (see :func:`ddetr.runtime.devices.run_device`): the torch device of
            a checkpoint ("cuda" falls back to the CPU with a notice when no GPU exists), the GPU of an ONNX
            file's CUDA/TensorRT execution providers and of an engine.
        encryption_key: decrypts a file written with one (plain files ignore it).

    Raises:
        CheckpointError: no such file, or not a ddetr artefact. UnavailableError: its runtime is missing.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file {path} does not exist (or is not a file).")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        from ddetr.runtime.devices import onnx_providers
        from ddetr.runtime.onnx_backend import OnnxPredictor

        return OnnxPredictor(p, providers=onnx_providers(device), encryption_key=encryption_key)
    if suffix in ENGINE_SUFFIXES:
        from ddetr.runtime.tensorrt_backend import TensorRTPredictor

        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        return TensorRTPredictor(p, device=index, encryption_key=encryption_key)
    from ddetr.runtime.torch_backend import TorchPredictor

    return TorchPredictor(p, device=device, encryption_key=encryption_key)
