"""ddetr: Deformable DETR object detection — train, evaluate, infer, export, quantize.

The public Python API is what this module exports; everything else is internal. One function per action
(:mod:`ddetr.api`), each returning its result dataclass (:mod:`ddetr.tasks.results`)::

    import ddetr

    result = ddetr.train("spec.yaml", train__num_epochs=20)
    metrics = ddetr.evaluate("spec.yaml", evaluate__checkpoint=result.latest)
"""

from __future__ import annotations

from ddetr._version import __version__

_API = (
    "automl_search",
    "check_dataset",
    "convert",
    "default_specs",
    "evaluate",
    "export",
    "gen_trt_engine",
    "import_weights",
    "inference",
    "load_spec",
    "quantize",
    "report",
    "skill",
    "train",
)

__all__ = ["DeformableDETR", "Spec", "__version__", *_API]


def __getattr__(name: str):  # lazy, so that `import ddetr` stays cheap for the CLI
    if name == "DeformableDETR":
        from ddetr.model.detector import DeformableDETR

        return DeformableDETR
    if name == "Spec":
        from ddetr.spec.sections import Spec

        return Spec
    if name in _API:
        from ddetr import api

        return getattr(api, name)
    raise AttributeError(f"module 'ddetr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
