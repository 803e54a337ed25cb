"""TensorRT at run time: importing it with a clear error when it (or a GPU) is missing, and its plugins.

Extra plugin libraries (a custom build of the attention plugin) are loaded from the ``DDETR_TRT_PLUGIN_LIBS``
environment variable (``os.pathsep``-separated paths); TensorRT's own ``MultiscaleDeformableAttnPlugin_TRT``
comes with libnvinfer_plugin, which is always initialised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ddetr.errors import UnavailableError

TENSORRT_INSTALL = "pip install tensorrt (TensorRT 10, with an NVIDIA GPU, driver and CUDA)"
PLUGIN_LIBS_ENV = "DDETR_TRT_PLUGIN_LIBS"


def require_tensorrt(action: str = "gen_trt_engine") -> Any:
    """Import ``tensorrt`` and check for a CUDA GPU.

    Raises:
        UnavailableError: one line naming what is missing (the package, or the GPU) and how to get it.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise UnavailableError(
            f"{action} needs TensorRT, which is not installed: {TENSORRT_INSTALL}. On a CPU, run the ONNX file "
            "with ONNX Runtime instead (export.on_cpu=true)."
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError(
            f"{action} needs an NVIDIA GPU (TensorRT {getattr(trt, '__version__', '?')} is installed but torch "
            "finds no CUDA device). On a CPU, run the ONNX file with ONNX Runtime instead."
        )
    return trt


def load_plugin_libraries(trt: Any, trt_logger: Any) -> list[str]:
    """Initialise libnvinfer_plugin and load the extra plugin libraries named in ``DDETR_TRT_PLUGIN_LIBS``."""
    import ctypes

    trt.init_libnvinfer_plugins(trt_logger, "")
    loaded = []
    for lib in filter(None, os.environ.get(PLUGIN_LIBS_ENV, "").split(os.pathsep)):
        if not Path(lib).is_file():
            raise UnavailableError(f"{PLUGIN_LIBS_ENV}: plugin library {lib} does not exist.")
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        loaded.append(lib)
    return loaded
