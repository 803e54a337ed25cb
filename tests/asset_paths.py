"""Where the real data the tests use lives: ``tests/assets/`` inside the repository (see its README.md).

Test modules import these constants (``from asset_paths import BCCD``; ``tests/`` is on pytest's python path).
"""

from __future__ import annotations

from pathlib import Path

#: The folder holding every real data file of the tests.
ASSETS = Path(__file__).resolve().parent / "assets"
#: BCCD blood-cell detection in COCO json: ``annotations/{train,val,test}.json`` and ``images/*.jpg``.
BCCD = ASSETS / "bccd"
#: Ground truth, detections and the COCO API's summary numbers for checking a COCO bbox evaluator.
COCO_EVAL_REF = ASSETS / "coco_eval_ref"
#: State-dict keys and shapes of the original Deformable DETR release, one ``original_<variant>_keys.tsv`` each.
ORIGINAL_LAYOUTS = ASSETS / "original_layouts"
