"""What ``ddetr jobs list|show|tree|best`` prints: plain-text tables and trees, and their JSON forms."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ddetr.jobs.lineage import candidates, choose
from ddetr.jobs.registry import Artefact, Job, JobError, Registry

__all__ = ["best", "kpi_text", "list_table", "show_text", "tree", "tree_lines"]

_SHOWN_KPIS = (
    "best_val_mAP",
    "val_mAP",
    "test_mAP",
    "test_mAP50",
    "quantized_mAP",
    "float_mAP",
    "best_val_mAP50",
    "trials",
    "images",
    "data_type",
)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def kpi_text(job: Job, limit: int = 3) -> str:
    """The job's main KPIs, ``name=value`` separated by spaces (at most ``limit``)."""
    shown = [f"{k}={_value(job.kpis[k])}" for k in _SHOWN_KPIS if k in job.kpis]
    if job.action == "automl":
        shown += [
            f"{k}={_value(v)}" for k, v in job.kpis.items() if k.startswith("best_") and k not in _SHOWN_KPIS
        ]
    return " ".join(shown[:limit])


def list_table(jobs: list[Job]) -> str:
    """A fixed-width table: id, action, status, parent, KPIs, age."""
    now = time.time()
    rows = [("ID", "ACTION", "STATUS", "PARENT", "AGE", "KPIS")]
    rows += [(j.id, j.action, j.status, j.parent_id or "-", _age(now - j.started), kpi_text(j)) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows
    ).rstrip()


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)  # pragma: no cover


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def show_text(job: Job) -> str:
    """Everything recorded about a job, artefacts with their checksums (the spec itself only by its hash)."""
    lines = [
        f"job        {job.id}",
        f"action     {job.action}",
        f"status     {job.status}" + (f" ({job.reason})" if job.reason else ""),
        f"parent     {job.parent_id or '-'}",
        f"started    {_when(job.started)}",
        f"ended      {_when(job.ended)}",
        f"host/pid   {job.host} / {job.pid}",
        f"results    {job.results_dir}",
        f"spec hash  {job.spec_hash[:16] or '-'} (the spec is in --json; encryption_key left out)",
    ]
    for key, value in job.inputs.items():
        lines.append(f"input      {key}: {value}")
    for key, value in job.kpis.items():
        lines.append(f"kpi        {key}: {_value(value)}")
    for art in job.artefacts:
        where = []
        if art.epoch is not None:
            where.append(f"epoch {art.epoch}")
        if art.step is not None:
            where.append(f"step {art.step}")
        kpis = " ".join(f"{k}={_value(v)}" for k, v in art.kpis.items())
        facts = ", ".join([*where, _size(art.size)])
        lines.append(
            f"artefact   {art.kind:<10} {art.path} ({facts}) sha256 {art.sha256[:16]} {kpis}".rstrip()
        )
    return "\n".join(lines)


def _root(registry: Registry, job: Job) -> Job:
    seen = {job.id}
    while job.parent_id:
        try:
            parent = registry.get(job.parent_id)
        except JobError:
            break
        if parent.id in seen:
            break
        seen.add(parent.id)
        job = parent
    return job


def tree(registry: Registry, job_id: str) -> dict[str, Any]:
    """The lineage of a job: its root ancestor and every descendant, as nested ``{"job", "children"}``."""
    start = registry.get(job_id)
    root = _root(registry, start)

    def node(job: Job, depth: int = 0) -> dict[str, Any]:
        kids = registry.children(job.id) if depth < 50 else []
        data = job.to_dict()
        data.pop("spec", None)
        return {"job": data, "selected": job.id == start.id, "children": [node(k, depth + 1) for k in kids]}

    return node(root)


def _models(arts: list[dict[str, Any]]) -> list[str]:
    return [Path(a["path"]).name for a in arts if a["kind"] in ("checkpoint", "onnx", "quantized", "engine")]


def tree_lines(data: dict[str, Any]) -> list[str]:
    """Text lines of :func:`tree`'s result: one line per job, what it took and what it made."""
    lines: list[str] = []

    def line(entry: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        job = entry["job"]
        made = _models(job["artefacts"])
        if len(made) > 2:
            made = [*made[:1], f"... {len(made) - 2} more ...", made[-1]]
        took = Path(str(job["inputs"].get("model", ""))).name
        kpis = kpi_text(Job(**{**job, "artefacts": []}))
        parts = [job["id"], job["action"], job["status"]]
        if took:
            parts.append(f"<- {took}")
        if made:
            parts.append(f"-> {', '.join(made)}")
        if kpis:
            parts.append(f"[{kpis}]")
        mark = " *" if entry["selected"] else ""
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + " ".join(parts) + mark)
        below = prefix + ("" if top else ("   " if last else "│  "))
        for i, child in enumerate(entry["children"]):
            line(child, below, i == len(entry["children"]) - 1, False)

    line(data, "", True, True)
    return lines


def best(registry: Registry, job_id: str, select: str = "best") -> tuple[Job, Artefact]:
    """The job's model artefact that ``select`` names (its best checkpoint by default).

    Raises:
        JobError: unknown job, or no model artefact.
    """
    job = registry.get(job_id)
    found = candidates(registry, job)
    kinds = ("checkpoint", "quantized", "onnx", "engine")
    return job, choose(job, found, kinds, select, "model file")
