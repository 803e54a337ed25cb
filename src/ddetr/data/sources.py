"""Data sources -> local paths: folders, archives (safe, cached unpacking) and remote URLs.

``image_dir`` in a spec may be a folder, an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) or a remote
URL of either (``s3://bucket/images.tar.gz``, any protocol fsspec knows). ``json_file`` may be local or
remote. Everything ends as a local path:

- archives are unpacked once into ``<cache>/archives/<key>`` where the key hashes the archive's path, size
  and modification time, and reused by later runs; unpacking goes to a temporary folder that is renamed
  into place, so a killed run never leaves a half-unpacked folder under the final name;
- entries that would land outside the target folder (``../``, absolute paths, links pointing out) are
  refused with a :class:`~ddetr.errors.DataError` naming the archive and the entry;
- an archive that would unpack to more than ``dataset.archive_limits`` allows (total bytes, number of
  entries, unpacked bytes / archive bytes) is refused with a one-line :class:`~ddetr.errors.DataError`
  naming the limit and the spec field that raises it: first on the sizes the archive declares, before
  anything is written, then on the bytes actually written, so a header that lies is caught as well;
- remote files and folders are copied into ``<cache>/remote/<key>`` (same temporary-then-rename rule).

The cache root is ``$DDETR_CACHE_DIR`` if set, else ``~/.cache/ddetr``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddetr.errors import DataError, DdetrError
from ddetr.spec.sections import ArchiveLimitsSection

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_IGNORED_TOP_ENTRIES = {"__MACOSX", ".DS_Store"}
_CHUNK = 1 << 20  # bytes copied at a time when unpacking a zip member


def default_cache_dir() -> Path:
    """The cache root: ``$DDETR_CACHE_DIR`` if set, else ``~/.cache/ddetr``."""
    env = os.environ.get("DDETR_CACHE_DIR", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddetr"


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than local files (``s3://...``, ``gs://...``, ``https://...``)."""
    if "://" not in path:
        return False
    return path.split("://", 1)[0].lower() not in ("file", "local")


def is_archive(path: str | Path) -> bool:
    """True when the name ends in one of :data:`ARCHIVE_SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _key(*parts: object) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:24]


def _publish(final: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a fresh temporary folder beside ``final`` and rename it into place (atomic on one filesystem).

    A temporary folder left by a killed run has a different name and is never taken for ``final``.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # not a lost race with another process: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _local_or_error(path: str, what: str) -> Path:
    p = Path(path.split("://", 1)[1] if "://" in path else path).expanduser()
    if not p.exists():
        raise DataError(f"{what} '{path}' does not exist.")
    return p


def _url_to_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a hard dependency
        raise DataError(f"Reading '{url}' needs fsspec: pip install fsspec.") from exc
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:  # fsspec drivers raise their own types (botocore, requests, ...)
        hint = " (for s3:// install s3fs: pip install 'ddetr[s3]')" if url.lower().startswith("s3") else ""
        raise DataError(f"Cannot open '{url}': {_driver_error(exc)}{hint}.") from None


def _driver_error(exc: BaseException) -> str:
    """A storage driver's exception as a few words on one line (its type when it has no message)."""
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, (ImportError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _remote_info(fs: Any, rpath: str, url: str) -> dict[str, Any]:
    try:
        return fs.info(rpath)
    except FileNotFoundError:
        raise DataError(f"Remote path '{url}' does not exist.") from None
    except Exception as exc:  # no credentials, refused connections, driver errors
        raise DataError(f"Cannot read remote path '{url}': {_driver_error(exc)}") from None


def _fetch_remote(url: str, cache_dir: Path, storage_options: dict[str, Any] | None) -> Path:
    """Copy a remote file or folder into the cache once; return the local copy.

    Raises:
        DataError: whatever fsspec or its driver refuses (unknown protocol, missing driver, no credentials,
            unreachable host, a path that does not exist), in one line.
    """
    try:
        return _copy_remote(url, cache_dir, storage_options)
    except DdetrError:
        raise
    except Exception as exc:  # drivers raise their own types while listing or copying
        raise DataError(f"Cannot copy remote path '{url}': {_driver_error(exc)}") from None


def _copy_remote(url: str, cache_dir: Path, storage_options: dict[str, Any] | None) -> Path:
    fs, rpath = _url_to_fs(url, storage_options)
    info = _remote_info(fs, rpath, url)
    name = posixpath.basename(rpath.rstrip("/")) or "data"
    if info.get("type") == "directory":
        listing = fs.find(rpath, detail=True)
        version = sorted(
            (k, v.get("size"), str(v.get("ETag", v.get("mtime", "")))) for k, v in listing.items()
        )
        final = cache_dir / "remote" / _key(url, version)

        def fill(tmp: Path) -> None:
            fs.get(rpath.rstrip("/") + "/", str(tmp / name) + "/", recursive=True)

        logger.info("Copying remote folder %s to %s", url, final)
        return _publish(final, fill) / name
    version = (
        info.get("size"),
        str(info.get("ETag", "")),
        str(info.get("LastModified", info.get("mtime", ""))),
    )
    final = cache_dir / "remote" / _key(url, *version)

    def fill_file(tmp: Path) -> None:
        fs.get_file(rpath, str(tmp / name))

    if not final.exists():
        logger.info("Copying %s to %s", url, final)
    return _publish(final, fill_file) / name


def resolve_file(
    path: str, cache_dir: Path | None = None, *, storage_options: dict[str, Any] | None = None
) -> Path:
    """A local or remote file -> a local path (remote files are copied into the cache once).

    Args:
        path: a local path or an fsspec URL (``s3://bucket/train.json``).
        cache_dir: cache root; default :func:`default_cache_dir`.
        storage_options: passed to fsspec for remote URLs (e.g. ``{"endpoint_url": ...}``); s3fs also
            reads the usual AWS environment variables (``AWS_ENDPOINT_URL``, credentials).

    Returns:
        The local file.

    Raises:
        DataError: the path does not exist or is a folder.
    """
    if not path:
        raise DataError("A file path is empty.")
    local = (
        _fetch_remote(path, Path(cache_dir) if cache_dir else default_cache_dir(), storage_options)
        if is_remote(path)
        else _local_or_error(path, "File")
    )
    if not local.is_file():
        raise DataError(f"'{path}' is not a file.")
    return local


def resolve_image_dir(
    image_dir: str,
    cache_dir: Path | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    limits: ArchiveLimitsSection | None = None,
) -> Path:
    """An image folder, archive or remote URL of either -> a local folder.

    Archives are unpacked once into ``<cache>/archives/<hash of path, size, mtime>`` and reused. When the
    archive holds a single top folder (``images/`` inside ``images.tar.gz``), that folder is returned.

    Args:
        image_dir: folder, ``.tar``/``.tar.gz``/``.tgz``/``.zip`` file, or an fsspec URL of either.
        cache_dir: cache root; default :func:`default_cache_dir` (``$DDETR_CACHE_DIR`` overrides).
        storage_options: passed to fsspec for remote URLs.
        limits: ``dataset.archive_limits``; None: the defaults.

    Returns:
        A local folder holding the images.

    Raises:
        DataError: missing path, unsupported file, or an unsafe, corrupt or too large archive.
    """
    if not image_dir:
        raise DataError("An image_dir is empty.")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    local = _fetch_remote(image_dir, cache, storage_options) if is_remote(image_dir) else None
    if local is None:
        local = _local_or_error(image_dir, "Image folder")
    if local.is_dir():
        return local
    if not is_archive(local):
        raise DataError(
            f"image_dir '{image_dir}' is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}) or a folder."
        )
    return unpack_archive(local, cache, limits)


def unpack_archive(
    archive: Path, cache_dir: Path | None = None, limits: ArchiveLimitsSection | None = None
) -> Path:
    """Unpack ``archive`` once into the cache (safely, atomically) and return its image folder.

    Args:
        archive: a ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` file.
        cache_dir: cache root; default :func:`default_cache_dir`.
        limits: ``dataset.archive_limits``; None: the defaults (200 GB, 10,000,000 entries, ratio 200).

    Raises:
        DataError: an entry would land outside the target, the archive exceeds a limit, or it cannot be
            read. Nothing is left in the cache then.
    """
    archive = Path(archive).resolve()
    st = archive.stat()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache / "archives" / _key(archive, st.st_size, st.st_mtime_ns)
    if not final.exists():
        logger.info("Unpacking %s to %s", archive, final)
        budget = _Budget(archive, st.st_size, limits or ArchiveLimitsSection())
        _publish(final, lambda tmp: _extract(archive, tmp, budget))
    return _single_top_folder(final)


def _single_top_folder(root: Path) -> Path:
    entries = [
        e for e in root.iterdir() if e.name not in _IGNORED_TOP_ENTRIES and not e.name.startswith("._")
    ]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


class _Budget:
    """What an archive may still unpack to: counts entries and bytes against ``dataset.archive_limits``.

    Used twice per archive: on the declared sizes before anything is written (:meth:`declared`), then on the
    bytes actually written (:meth:`add_member`, :meth:`add_bytes`).
    """

    def __init__(self, archive: Path, archive_bytes: int, limits: ArchiveLimitsSection) -> None:
        self.archive = archive
        self.archive_bytes = max(int(archive_bytes), 1)
        self.limits = limits
        self.members = 0
        self.bytes = 0

    def _refuse(self, what: str, limit: object, field: str) -> None:
        raise DataError(
            f"Archive '{self.archive}' {what}, over the limit of {limit} (dataset.archive_limits.{field}); "
            f"refusing to unpack it (raise dataset.archive_limits.{field} if the archive is trusted)."
        )

    def check(self, when: str) -> None:
        """Raise DataError when the counts so far exceed a limit; ``when`` is "declares" or "unpacks"."""
        lim = self.limits
        amount = "" if when == "declares" else "at least "
        if self.members > lim.max_members:
            self._refuse(f"{when} {amount}{self.members} entries", lim.max_members, "max_members")
        if self.bytes > lim.max_unpacked_bytes:
            self._refuse(f"{when} {amount}{self.bytes} bytes", lim.max_unpacked_bytes, "max_unpacked_bytes")
        ratio = self.bytes / self.archive_bytes
        if ratio > lim.max_ratio:
            self._refuse(
                f"{when} {amount}{self.bytes} bytes from a file of {self.archive_bytes} (ratio {ratio:.0f})",
                f"{lim.max_ratio:g}",
                "max_ratio",
            )

    def declared(self, members: int, size: int) -> None:
        """Check the entry count and total size the archive declares (then reset for the real unpacking)."""
        self.members, self.bytes = members, size
        self.check("declares")
        self.members = self.bytes = 0

    def add_member(self) -> None:
        self.members += 1
        self.check("unpacks")

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self.check("unpacks")


def _extract(archive: Path, target: Path, budget: _Budget) -> None:
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                infos = zf.infolist()
                budget.declared(len(infos), sum(max(i.file_size, 0) for i in infos))
                for info in infos:
                    _extract_zip_member(zf, info, target, budget)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = _tar_members(tf, archive, budget)
                tf.extractall(target, members=members, filter=_counting_filter(budget))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"Archive '{archive}' cannot be read: {' '.join(str(exc).split())}") from exc


def _tar_members(tf: tarfile.TarFile, archive: Path, budget: _Budget) -> list[tarfile.TarInfo]:
    """Every header, checked for safety and against the limits before anything is written."""
    members: list[tarfile.TarInfo] = []
    size = 0
    for m in tf:
        _check_tar_member(m, archive)
        members.append(m)
        size += max(m.size, 0) if m.isfile() else 0
        if len(members) > budget.limits.max_members or size > budget.limits.max_unpacked_bytes:
            break  # refused below without reading the rest of a bomb's headers
    budget.declared(len(members), size)
    return members


def _counting_filter(budget: _Budget) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's ``data`` filter that also counts each entry and its bytes just before it is written."""

    def accept(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        kept = tarfile.data_filter(member, dest)
        if kept is not None:
            budget.add_member()
            budget.add_bytes(max(kept.size, 0) if kept.isfile() else 0)
        return kept

    return accept


def _extract_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget) -> None:
    """Write one zip entry under ``target``, counting the bytes as they are decompressed."""
    budget.add_member()
    parts = [p for p in posixpath.normpath(info.filename.replace("\\", "/")).split("/") if p not in ("", ".")]
    if not parts:
        return
    path = target.joinpath(*parts)
    if info.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(path, "wb") as dst:
        while chunk := src.read(_CHUNK):
            budget.add_bytes(len(chunk))
            dst.write(chunk)


def _outside(name: str) -> bool:
    """True if the archive-relative POSIX path ``name`` is absolute or climbs out of the target."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    norm = posixpath.normpath(name)
    return norm == ".." or norm.startswith("../")


def _check_tar_member(m: tarfile.TarInfo, archive: Path) -> None:
    def refuse(why: str) -> None:
        raise DataError(f"Archive '{archive}' entry '{m.name}' {why}; refusing to unpack it.")

    if _outside(m.name):
        refuse("would be written outside the target folder")
    if m.issym():
        if m.linkname.startswith("/") or _outside(posixpath.join(posixpath.dirname(m.name), m.linkname)):
            refuse(f"is a symbolic link pointing outside the target folder ('{m.linkname}')")
    elif m.islnk():
        if _outside(m.linkname):
            refuse(f"is a hard link pointing outside the target folder ('{m.linkname}')")
    elif not (m.isfile() or m.isdir()):
        refuse("is a device, FIFO or other special file")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        if _outside(info.filename):
            raise DataError(
                f"Archive '{archive}' entry '{info.filename}' would be written outside the target folder; "
                "refusing to unpack it."
            )
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            link = zf.read(info).decode("utf-8", "replace")
            if link.startswith("/") or _outside(posixpath.join(posixpath.dirname(info.filename), link)):
                raise DataError(
                    f"Archive '{archive}' entry '{info.filename}' is a symbolic link pointing outside the "
                    f"target folder ('{link}'); refusing to unpack it."
                )


def resolve_sources(sources: Any, limits: ArchiveLimitsSection | None = None) -> list[tuple[str, str]]:
    """Spec data sources (one or a list of {image_dir, json_file}) -> local (image folder, json path) pairs.

    ``limits`` is ``dataset.archive_limits`` (None: the defaults).
    """
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    pairs = []
    for source in sources:
        image_dir, json_file = source.image_dir, source.json_file
        if not image_dir and not json_file:
            continue
        pairs.append((str(resolve_image_dir(image_dir, limits=limits)), str(resolve_file(json_file))))
    return pairs
