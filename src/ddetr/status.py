"""``status.json``: one JSON object per line describing an action's progress (TAO's format).

Each line has ``date``, ``time``, ``status`` (STARTED | RUNNING | SUCCESS | FAILURE | SKIPPED),
``verbosity`` and ``message``, and where it applies ``epoch``, ``max_epoch``, ``step``, ``max_step``,
``time_per_epoch``, ``eta`` and ``kpi`` (a mapping of metric name to number). Every line is flushed as
it is written, so a tool tailing the file never sees half a line of a live run.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = ["STATUSES", "StatusLogger", "read_status"]

Status = Literal["STARTED", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED"]
Verbosity = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
STATUSES: tuple[str, ...] = ("STARTED", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED")
_OPTIONAL = ("epoch", "max_epoch", "step", "max_step", "time_per_epoch", "eta")


def _number(value: Any) -> Any:
    """A plain JSON number from a Python/NumPy/torch scalar; non-finite floats become null."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _duration(value: Any) -> Any:
    """Seconds (a number or a ``timedelta``) as TAO's ``H:MM:SS.ffffff`` text; strings pass through."""
    if isinstance(value, _dt.timedelta):
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(_dt.timedelta(seconds=float(value)))
    return value


class StatusLogger:
    """Appends status events to ``status.json`` (JSON Lines).

    Args:
        path: The file; its folder is created if needed. Lines are appended, so a resumed run continues it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     StatusLogger(Path(folder) / "status.json").write("STARTED", "Starting training.")["status"]
        'STARTED'
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(
        self,
        status: Status,
        message: str = "",
        *,
        verbosity: Verbosity = "INFO",
        kpi: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Append one event.

        Args:
            status: STARTED, RUNNING, SUCCESS, FAILURE or SKIPPED.
            message: One line for a human.
            verbosity: DEBUG, INFO, WARNING or ERROR.
            kpi: Metric name -> number (``val_mAP``, ``val_mAP50``, ``val_loss``, ``test_mAP``, ``train_loss``).
            **fields: Any of ``epoch``, ``max_epoch``, ``step``, ``max_step`` (integers), ``time_per_epoch``
                and ``eta`` (seconds or ``timedelta``, written as ``H:MM:SS``), or other extra keys.

        Returns:
            The event as written.

        Raises:
            ValueError: an unknown status.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        now = _dt.datetime.now()
        event: dict[str, Any] = {
            "date": f"{now.month}/{now.day}/{now.year}",
            "time": now.strftime("%H:%M:%S"),
            "status": status,
            "verbosity": verbosity,
            "message": message,
        }
        for key in _OPTIONAL:
            if fields.get(key) is not None:
                value = fields.pop(key)
                event[key] = _duration(value) if key in ("time_per_epoch", "eta") else _number(value)
        for key, value in fields.items():
            if value is not None:
                event[key] = _number(value)
        if kpi:
            event["kpi"] = {str(k): _number(v) for k, v in kpi.items()}
        line = json.dumps(event, ensure_ascii=False)
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
        return event

    def started(self, message: str, **fields: Any) -> dict[str, Any]:
        """Append a STARTED event."""
        return self.write("STARTED", message, **fields)

    def running(self, message: str = "", **fields: Any) -> dict[str, Any]:
        """Append a RUNNING event (progress, KPIs)."""
        return self.write("RUNNING", message, **fields)

    def success(self, message: str, **fields: Any) -> dict[str, Any]:
        """Append a SUCCESS event."""
        return self.write("SUCCESS", message, **fields)

    def failure(self, message: str, **fields: Any) -> dict[str, Any]:
        """Append a FAILURE event (verbosity ERROR unless given)."""
        fields.setdefault("verbosity", "ERROR")
        return self.write("FAILURE", message, **fields)

    def skipped(self, message: str, **fields: Any) -> dict[str, Any]:
        """Append a SKIPPED event."""
        return self.write("SKIPPED", message, **fields)

    @contextmanager
    def action(self, message: str, **fields: Any) -> Iterator[StatusLogger]:
        """Frame an action's work: a STARTED event now, a FAILURE event if the block raises.

        The block writes its own SUCCESS (with its message and KPIs). An interrupt (Ctrl-C, SystemExit) is not
        an ``Exception`` and is left to whoever handles it.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     log = StatusLogger(Path(folder) / "status.json")
            ...     with log.action("Exporting."):
            ...         _ = log.success("Exported.")
            ...     [event["status"] for event in read_status(log.path)]
            ['STARTED', 'SUCCESS']
        """
        self.started(message, **fields)
        try:
            yield self
        except Exception as exc:
            self.failure(f"{type(exc).__name__}: {exc}")
            raise


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_status(path: str | Path) -> list[dict[str, Any]]:
    """Read a status.json written by ddetr or by TAO.

    KPI values written as strings (TAO wrote mAPs as ``"0.41"``) are returned as floats. A line that is not
    valid JSON (e.g. the last line of a killed process) is skipped with a warning.

    Returns:
        The events in file order; an empty list if the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        return []
    events: list[dict[str, Any]] = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logger.warning(f"{p}: line {number} is not valid JSON; skipped")
            continue
        if not isinstance(event, dict):
            logger.warning(f"{p}: line {number} is not a JSON object; skipped")
            continue
        kpi = event.get("kpi")
        if isinstance(kpi, dict):
            event["kpi"] = {k: _as_number(v) for k, v in kpi.items()}
        events.append(event)
    return events
