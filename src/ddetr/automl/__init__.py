"""Hyperparameter search (docs/automl.md).

The package shares its name with the API function, so it is callable: ``ddetr.automl(spec, **overrides)``
runs the search as :func:`ddetr.api.automl` does, whether or not this package was imported before.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """``ddetr.automl``: this package, and :func:`ddetr.api.automl` when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ddetr.api import automl

        return automl(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
