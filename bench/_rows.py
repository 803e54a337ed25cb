"""One table for ``make bench``: every script records its target rows here; ``run_all.py`` prints them together.

A row is one measure of ddetr against the peer measured in the same run (or a figure with an absolute target),
its ratio, its target and whether it passed. Scripts append rows as JSON lines to the file named by
``DDETR_BENCH_ROWS`` (set by ``run_all.py``); run alone, a script prints its own table and records nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "DDETR_BENCH_ROWS"


def record(
    measure: str,
    ddetr: float | None,
    peer: float | None,
    peer_name: str,
    target: float,
    ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Append one row (``ratio`` defaults to ddetr / peer; None values: not measured, the row fails)."""
    if ratio is None and ddetr is not None and peer:
        ratio = ddetr / peer
    row = {
        "measure": measure,
        "ddetr": ddetr,
        "peer": peer,
        "peer_name": peer_name,
        "ratio": ratio,
        "target": target,
        "ok": ratio is not None and ratio <= target,
        "note": note,
    }
    path = os.environ.get(ENV)
    if path:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
    return row


def read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as text: measure, ddetr, peer, ratio, target, pass/FAIL (and the note of a row not measured)."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    header = f"{'measure':<52} {'ddetr':>9} {'peer':>9} {'peer is':<14} {'ratio':>6} {'target':>7}  result"
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"{row['measure']:<52} {number(row['ddetr']):>9} {number(row['peer']):>9} {row['peer_name']:<14} "
            f"{ratio:>6} {'<=' + format(row['target'], 'g'):>7}  {'pass' if row['ok'] else 'FAIL'}"
            + (f"  ({row['note']})" if row["note"] else "")
        )
    passed = sum(row["ok"] for row in rows)
    lines.append(f"{passed} of {len(rows)} targets met")
    return lines
