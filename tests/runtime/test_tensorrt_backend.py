"""TensorRTPredictor on a machine without TensorRT or a GPU: a one-line UnavailableError from load_predictor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ddetr.errors import UnavailableError
from ddetr.runtime import load_predictor


@pytest.mark.parametrize("suffix", [".engine", ".trt", ".plan"])
def test_engine_files_need_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / f"model{suffix}"
    engine.write_bytes(b"\x00")
    with pytest.raises(UnavailableError, match="needs TensorRT") as info:
        load_predictor(str(engine))
    assert "\n" not in str(info.value)
