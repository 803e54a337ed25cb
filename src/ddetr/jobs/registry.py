"""The job registry: every action run, its artefacts and KPIs, in one SQL database shared by processes.

An SQLite file by default (``~/.ddetr/jobs.db``; ``DDETR_JOBS_DB`` or the spec's ``jobs_db`` name another file
or any SQLAlchemy URL, e.g. ``postgresql://...`` for a team). SQLite runs in WAL mode with a busy timeout and
every write is one short transaction, so several processes (a training, an evaluation, AutoML trials) record
at once. A running job records its pid, host and a heartbeat; a job whose process is gone (dead pid on this
host, or a heartbeat older than :data:`STALE_AFTER`) is reported as ``lost``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddetr.errors import DdetrError

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
    "Artefact",
    "Job",
    "JobError",
    "Registry",
    "db_url",
    "file_sha256",
    "pid_alive",
]

DB_ENV = "DDETR_JOBS_DB"
DEFAULT_DB = Path("~/.ddetr/jobs.db")
HEARTBEAT_INTERVAL = 30.0  # seconds between a running job's heartbeats
BUSY_TIMEOUT = 30.0  # seconds an SQLite writer waits for another process's lock before giving up
STALE_AFTER = 300.0  # seconds without a heartbeat after which a running job is taken as lost
STATUSES = ("running", "success", "failure", "interrupted", "lost")
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # lower case, no i/l/o/u: easy to read and type
_ID_LENGTH = 8


class JobError(DdetrError, ValueError):
    """A job id, a parent's artefact or the registry itself cannot be used (one line)."""


def db_url(value: str | os.PathLike[str] | None = None) -> str:
    """The registry's SQLAlchemy URL: ``value`` if given, else ``$DDETR_JOBS_DB``, else ``~/.ddetr/jobs.db``.

    A value without ``://`` is a file path and becomes an ``sqlite:///`` URL of its absolute path.
    """
    text = str(value).strip() if value is not None else ""
    if not text:
        text = os.environ.get(DB_ENV, "").strip()
    if not text:
        text = str(DEFAULT_DB)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def pid_alive(pid: Any) -> bool:
    """True when process ``pid`` exists on this host (a process of another user counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Artefact:
    """One file a job produced.

    Attributes:
        path: absolute path of the file.
        kind: ``checkpoint``, ``onnx``, ``quantized``, ``engine``, ``metrics``, ``detections``, ``report``, ...
        epoch: the training epoch it comes from (0-based), when known.
        step: the optimizer step it comes from, when known.
        size: bytes.
        sha256: hex digest of its bytes.
        kpis: its own KPIs (``val_mAP``, ``val_mAP50``, ``val_loss`` of a checkpoint).
    """

    path: str
    kind: str
    epoch: int | None = None
    step: int | None = None
    size: int | None = None
    sha256: str = ""
    kpis: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One recorded action run (see :class:`Registry`)."""

    id: str
    action: str
    status: str
    reason: str = ""
    parent_id: str = ""
    started: float = 0.0
    ended: float | None = None
    heartbeat: float | None = None
    host: str = ""
    pid: int | None = None
    results_dir: str = ""
    spec: str = ""
    spec_hash: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    kpis: dict[str, Any] = field(default_factory=dict)
    artefacts: list[Artefact] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything recorded, as plain JSON-able values."""
        return asdict(self)


def _lost(job: Job, now: float) -> bool:
    if job.status != "running":
        return False
    if job.host == socket.gethostname() and job.pid is not None and not pid_alive(job.pid):
        return True
    beat = job.heartbeat if job.heartbeat is not None else job.started
    return now - beat > STALE_AFTER


_EPOCH_STEP = re.compile(r"model_epoch_(\d+)_step_(\d+)")


def epoch_step_of(path: str | Path) -> tuple[int | None, int | None]:
    """``(epoch, step)`` from a ``model_epoch_<E>_step_<S>`` name anywhere in ``path``'s file name."""
    match = _EPOCH_STEP.search(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


class Registry:
    """The jobs database (tables ``ddetr_jobs`` and ``ddetr_artefacts``, created on first use).

    Args:
        url: an SQLAlchemy URL or a file path (see :func:`db_url`); ``None``: the default.
        create: create the database file's folder and the tables when missing.

    Raises:
        JobError: the database cannot be opened (unreachable, not a database, no permission).
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        from sqlalchemy import create_engine, event
        from sqlalchemy.exc import SQLAlchemyError

        self.url = db_url(url)
        sqlite = self.url.startswith("sqlite")
        if sqlite and create:
            database = self.url.split(":///", 1)[-1]
            if (
                database
                and database != ":memory:"
                and not database.startswith("file:")
                and "?" not in database
            ):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise JobError(
                        f"job registry {self.shown}: cannot create its folder ({exc.strerror})"
                    ) from None
        args = {"timeout": BUSY_TIMEOUT} if sqlite else {}
        try:
            self.engine = create_engine(self.url, connect_args=args, poolclass=_null_pool())
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise JobError(f"job registry {self.shown}: cannot open it ({_brief(exc)})") from None
        if sqlite:

            @event.listens_for(self.engine, "connect")
            def _pragmas(connection: Any, _record: Any) -> None:
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                except Exception:  # read-only file or folder: reading still works in its own mode
                    pass
                cursor.close()

        self._tables()
        if create:
            try:
                self.metadata.create_all(self.engine)
            except SQLAlchemyError as exc:
                raise JobError(f"job registry {self.shown}: cannot use it ({_brief(exc)})") from None

    @property
    def shown(self) -> str:
        """The URL without its password."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return self.url

    def _tables(self) -> None:
        from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

        self.metadata = MetaData()
        self.jobs = Table(
            "ddetr_jobs",
            self.metadata,
            Column("id", String(32), primary_key=True),
            Column("action", String(32), nullable=False),
            Column("status", String(16), nullable=False),
            Column("reason", Text, default=""),
            Column("parent_id", String(32), default="", index=True),
            Column("started", Float, nullable=False),
            Column("ended", Float),
            Column("heartbeat", Float),
            Column("host", String(255), default=""),
            Column("pid", Integer),
            Column("results_dir", Text, default=""),
            Column("spec", Text, default=""),
            Column("spec_hash", String(64), default=""),
            Column("inputs", Text, default="{}"),
            Column("kpis", Text, default="{}"),
        )
        self.artefacts = Table(
            "ddetr_artefacts",
            self.metadata,
            Column("rowid", Integer, primary_key=True, autoincrement=True),
            Column("job_id", String(32), nullable=False, index=True),
            Column("path", Text, nullable=False),
            Column("kind", String(32), nullable=False),
            Column("epoch", Integer),
            Column("step", Integer),
            Column("size", Integer),
            Column("sha256", String(64), default=""),
            Column("mtime_ns", Integer),
            Column("kpis", Text, default="{}"),
        )

    # -- writing -------------------------------------------------------------------------------------------

    def start(
        self,
        action: str,
        *,
        results_dir: str = "",
        parent_id: str = "",
        spec: str = "",
        inputs: dict[str, Any] | None = None,
    ) -> str:
        """Record a running job of this process; returns its new id."""
        from sqlalchemy.exc import IntegrityError

        now = time.time()
        row = {
            "action": action,
            "status": "running",
            "reason": "",
            "parent_id": parent_id or "",
            "started": now,
            "heartbeat": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "results_dir": results_dir,
            "spec": spec,
            "spec_hash": hashlib.sha256(spec.encode("utf-8")).hexdigest() if spec else "",
            "inputs": json.dumps(inputs or {}),
            "kpis": "{}",
        }
        for _ in range(10):
            job_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.jobs.insert().values(id=job_id, **row))
                return job_id
            except IntegrityError:
                continue
        raise JobError(f"job registry {self.shown}: could not find a free job id")  # pragma: no cover

    def beat(self, job_id: str) -> None:
        """Refresh a running job's heartbeat."""
        with self.engine.begin() as conn:
            conn.execute(self.jobs.update().where(self.jobs.c.id == job_id).values(heartbeat=time.time()))

    def finish(self, job_id: str, status: str, reason: str = "", kpis: dict[str, Any] | None = None) -> None:
        """Close a job with its final status (``success``, ``failure``, ``interrupted``) and KPIs."""
        values: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "ended": time.time(),
            "heartbeat": time.time(),
        }
        if kpis is not None:
            values["kpis"] = json.dumps(kpis)
        with self.engine.begin() as conn:
            conn.execute(self.jobs.update().where(self.jobs.c.id == job_id).values(**values))

    def add_artefacts(self, job_id: str, artefacts: Iterable[Artefact]) -> list[Artefact]:
        """Record files of a job (size and SHA-256 measured here; a file already hashed unchanged is reused).

        Files that do not exist are left out. Returns what was recorded.
        """
        rows = []
        recorded = []
        for item in artefacts:
            path = Path(item.path)
            try:
                stat = path.stat()
            except OSError:
                continue
            item.path = str(path.resolve())
            item.size = stat.st_size
            item.sha256 = item.sha256 or self._known_hash(item.path, stat.st_size, stat.st_mtime_ns) or ""
            if not item.sha256 and path.is_file():
                item.sha256 = file_sha256(path)
            if item.epoch is None and item.step is None:
                item.epoch, item.step = epoch_step_of(path)
            rows.append(
                {
                    "job_id": job_id,
                    "path": item.path,
                    "kind": item.kind,
                    "epoch": item.epoch,
                    "step": item.step,
                    "size": item.size,
                    "sha256": item.sha256,
                    "mtime_ns": stat.st_mtime_ns,
                    "kpis": json.dumps(item.kpis),
                }
            )
            recorded.append(item)
        if rows:
            with self.engine.begin() as conn:
                conn.execute(
                    self.artefacts.delete()
                    .where(self.artefacts.c.job_id == job_id)
                    .where(self.artefacts.c.path.in_([r["path"] for r in rows]))
                )
                conn.execute(self.artefacts.insert(), rows)
        return recorded

    def _known_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        from sqlalchemy import select

        a = self.artefacts.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(a.sha256).where(a.path == path, a.size == size, a.mtime_ns == mtime_ns).limit(1)
            ).first()
        return row[0] if row and row[0] else None

    def mark_lost(self, job_id: str) -> None:
        """Record that a running job's process is gone."""
        with self.engine.begin() as conn:
            conn.execute(
                self.jobs.update()
                .where(self.jobs.c.id == job_id, self.jobs.c.status == "running")
                .values(status="lost", reason="its process is gone (no heartbeat, or dead pid)")
            )

    # -- reading -------------------------------------------------------------------------------------------

    def _job(self, row: Any, artefacts: Sequence[Any] = ()) -> Job:
        job = Job(
            id=row.id,
            action=row.action,
            status=row.status,
            reason=row.reason or "",
            parent_id=row.parent_id or "",
            started=row.started,
            ended=row.ended,
            heartbeat=row.heartbeat,
            host=row.host or "",
            pid=row.pid,
            results_dir=row.results_dir or "",
            spec=row.spec or "",
            spec_hash=row.spec_hash or "",
            inputs=json.loads(row.inputs or "{}"),
            kpis=json.loads(row.kpis or "{}"),
            artefacts=[
                Artefact(
                    path=a.path,
                    kind=a.kind,
                    epoch=a.epoch,
                    step=a.step,
                    size=a.size,
                    sha256=a.sha256 or "",
                    kpis=json.loads(a.kpis or "{}"),
                )
                for a in artefacts
            ],
        )
        if _lost(job, time.time()):
            job.status = "lost"
            job.reason = job.reason or "its process is gone (no heartbeat, or dead pid)"
        return job

    def ids(self) -> list[str]:
        """Every job id, newest first."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(self.jobs.c.id).order_by(self.jobs.c.started.desc()))]

    def resolve_id(self, text: str) -> str:
        """The full id of ``text`` (an id or a unique prefix of one).

        Raises:
            JobError: no such job (one line with the closest ids) or an ambiguous prefix.
        """
        wanted = text.strip().lower()
        ids = self.ids()
        if wanted in ids:
            return wanted
        prefixed = [i for i in ids if wanted and i.startswith(wanted)]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise JobError(
                f"job id {text!r} is ambiguous: it starts {', '.join(prefixed[:5])}; give more characters"
            )
        close = difflib.get_close_matches(wanted, ids, n=3, cutoff=0.3)
        hint = f"; closest: {', '.join(close)}" if close else ("; the registry is empty" if not ids else "")
        raise JobError(f"no job {text!r} in the job registry {self.shown}{hint} (see ddetr jobs list)")

    def get(self, job_id: str) -> Job:
        """One job with its artefacts (``job_id`` may be a unique prefix).

        Raises:
            JobError: no such job.
        """
        from sqlalchemy import select

        full = self.resolve_id(job_id)
        with self.engine.connect() as conn:
            row = conn.execute(select(self.jobs).where(self.jobs.c.id == full)).one()
            arts = conn.execute(
                select(self.artefacts)
                .where(self.artefacts.c.job_id == full)
                .order_by(self.artefacts.c.step, self.artefacts.c.rowid)
            ).all()
        return self._job(row, arts)

    def list(
        self,
        *,
        action: str | None = None,
        status: str | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, newest first, without their artefacts (``status`` ``lost`` included as seen now)."""
        from sqlalchemy import select

        query = select(self.jobs).order_by(self.jobs.c.started.desc())
        if action:
            query = query.where(self.jobs.c.action == action)
        if parent_id is not None:
            query = query.where(self.jobs.c.parent_id == parent_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        jobs = [self._job(r) for r in rows]
        if status:
            jobs = [j for j in jobs if j.status == status]
        return jobs[:limit] if limit else jobs

    def children(self, job_id: str) -> list[Job]:
        """The jobs whose parent is ``job_id``, oldest first, with their artefacts."""
        found = self.list(parent_id=job_id)
        return [self.get(j.id) for j in reversed(found)]


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool  # one connection per transaction: nothing held open between short writes


def _brief(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split())[:200]
