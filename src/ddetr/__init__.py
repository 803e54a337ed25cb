"""ddetr: Deformable DETR object detection — train, evaluate, infer, export, quantize.

The public Python API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from ddetr._version import __version__

__all__ = ["DeformableDETR", "__version__"]


def __getattr__(name: str):  # lazy, so that `import ddetr` stays cheap for the CLI
    if name == "DeformableDETR":
        from ddetr.model.detector import DeformableDETR

        return DeformableDETR
    raise AttributeError(f"module 'ddetr' has no attribute {name!r}")
