"""Every module of ddetr imports without loading an optional back end.

``make test`` collects every module of ``src/ddetr`` for its docstring examples (``--doctest-modules``); this
works on an install without the optional packages only while no module imports them at import time.
"""

from __future__ import annotations

import subprocess
import sys

# the extras' packages (s3, postgres, quantize, modelopt) and the NVIDIA runtime
OPTIONAL = (
    *("tensorrt", "pycuda", "modelopt", "torchao", "psycopg2", "s3fs"),
    *("onnx_graphsurgeon", "onnxslim", "onnxscript", "lief"),
)

_IMPORT_ALL = """
import importlib, pkgutil, sys
import ddetr
for info in pkgutil.walk_packages(ddetr.__path__, "ddetr."):
    if not info.name.endswith(".__main__"):  # runs the CLI; pytest's doctest collection skips it too
        importlib.import_module(info.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_importing_every_module_loads_no_optional_back_end() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert {"ddetr", "torch"} <= loaded  # the import really ran
    assert not loaded & set(OPTIONAL), sorted(loaded & set(OPTIONAL))
