"""``ddetr default_specs``: write a commented spec template for every action into ``results_dir``.

As in TAO, the templates go to ``<results_dir>/<action>.yaml``; the resolved spec and status.json of this
action go to ``<results_dir>/default_specs/``. Each template loads back to the default spec unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ddetr.fileio import atomic_write_text
from ddetr.spec.schema import ACTION_SECTIONS, template_yaml
from ddetr.spec.sections import Spec
from ddetr.tasks.common import prepare_results_dir, status_logger
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import DefaultSpecsResult

logger = logging.getLogger(__name__)

TEMPLATE_ACTIONS: tuple[str, ...] = tuple(ACTION_SECTIONS)


@recorded("default_specs")
def run(spec: Spec) -> DefaultSpecsResult:
    """Write ``<results_dir>/{train,evaluate,inference,export,quantize,gen_trt_engine,automl}.yaml``.

    Returns:
        The templates written, in action order.

    Raises:
        SpecError: results_dir is not set or not writable.
    """
    folder = prepare_results_dir(spec, "default_specs")
    status = status_logger(folder)
    status.started("Writing default spec templates.")
    out_dir = Path(spec.results_dir).expanduser()
    written: list[Path] = []
    for action in TEMPLATE_ACTIONS:
        path = out_dir / f"{action}.yaml"
        atomic_write_text(path, template_yaml(action))
        written.append(path)
    logger.info(f"wrote {len(written)} spec templates to {out_dir}")
    status.success(f"Wrote {len(written)} spec templates to {out_dir}.")
    return DefaultSpecsResult(specs=tuple(written))
