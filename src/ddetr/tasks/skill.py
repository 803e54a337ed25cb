"""``ddetr skill``: write the agent skill bundle (TAO skill-bank layout) into ``results_dir``.

The bundle (``SKILL.md``, ``schemas/<action>.schema.json``, ``schemas/manifest.json``,
``references/spec_template_<action>.yaml``, ``references/skill_info.yaml``) is generated from the spec models by
:mod:`ddetr.spec.skill`; the resolved spec and status.json of this action go to ``<results_dir>/skill/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ddetr.spec.sections import Spec
from ddetr.spec.skill import write_bundle
from ddetr.tasks.common import prepare_results_dir, status_logger
from ddetr.tasks.results import SkillResult

logger = logging.getLogger(__name__)


def run(spec: Spec) -> SkillResult:
    """Write the bundle under ``results_dir``.

    Returns:
        The folder and every file written.

    Raises:
        SpecError: results_dir is not set or not writable.
    """
    folder = prepare_results_dir(spec, "skill")
    status = status_logger(folder)
    status.started("Writing the skill bundle.")
    out_dir = Path(spec.results_dir).expanduser()
    written = tuple(write_bundle(out_dir))
    for path in written:
        logger.debug(f"wrote {path}")
    status.success(f"Wrote {len(written)} skill files to {out_dir}.")
    return SkillResult(folder=out_dir, files=written)
