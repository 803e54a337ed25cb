"""dataset.archive_limits: archive bombs (size, entry count, ratio, lying headers) are refused, nothing cached."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from ddetr.data import sources
from ddetr.data.sources import resolve_image_dir, resolve_sources
from ddetr.errors import DataError
from ddetr.spec.sections import ArchiveLimitsSection, DataSource, Spec

MB = 1 << 20


def _zip_of_zeros(path: Path, size: int, name: str = "images/zeros.bin") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as dst:
            chunk = bytes(MB)
            for _ in range(size // MB):
                dst.write(chunk)
    return path


def _tgz_of_zeros(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("images/zeros.bin")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    return path


def _cache_entries(cache: Path) -> list[str]:
    """Everything left under ``<cache>/archives`` (final folders and temporary ones)."""
    root = cache / "archives"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _refused(arch: Path, cache: Path, limits: ArchiveLimitsSection, field: str) -> str:
    with pytest.raises(DataError) as err:
        resolve_image_dir(str(arch), cache, limits=limits)
    message = str(err.value)
    assert "\n" not in message
    assert arch.name in message and f"dataset.archive_limits.{field}" in message
    assert _cache_entries(cache) == []  # no partial cache, no temporary folder
    return message


def test_spec_fields_and_defaults() -> None:
    limits = Spec().dataset.archive_limits
    assert (limits.max_unpacked_bytes, limits.max_members, limits.max_ratio) == (
        200 * 10**9,
        10_000_000,
        200.0,
    )
    spec = Spec.model_validate({"dataset": {"archive_limits": {"max_unpacked_bytes": 1000, "max_ratio": 5}}})
    assert (
        spec.dataset.archive_limits.max_unpacked_bytes == 1000 and spec.dataset.archive_limits.max_ratio == 5
    )
    with pytest.raises(ValueError):
        Spec.model_validate({"dataset": {"archive_limits": {"max_ratio": float("inf")}}})
    with pytest.raises(ValueError):
        Spec.model_validate({"dataset": {"archive_limits": {"max_members": 0}}})


def test_documented_in_spec_md() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "SPEC.md").read_text()
    assert "archive_limits:" in text
    for name in ("max_unpacked_bytes", "max_members", "max_ratio"):
        assert name in text


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_bomb_over_size_limit_refused(tmp_path: Path, kind: str) -> None:
    make = _zip_of_zeros if kind == "zip" else _tgz_of_zeros
    arch = make(tmp_path / f"bomb.{'zip' if kind == 'zip' else 'tar.gz'}", 8 * MB)
    assert arch.stat().st_size < 64 * 1024  # highly compressible
    limits = ArchiveLimitsSection(max_unpacked_bytes=4 * MB, max_ratio=1e9)
    message = _refused(arch, tmp_path / "cache", limits, "max_unpacked_bytes")
    assert str(4 * MB) in message


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_bomb_over_ratio_refused_with_default_ratio(tmp_path: Path, kind: str) -> None:
    make = _zip_of_zeros if kind == "zip" else _tgz_of_zeros
    arch = make(tmp_path / f"bomb.{'zip' if kind == 'zip' else 'tar.gz'}", 8 * MB)
    message = _refused(arch, tmp_path / "cache", ArchiveLimitsSection(), "max_ratio")
    assert "ratio" in message


def test_ratio_limit_is_a_spec_field(tmp_path: Path) -> None:
    arch = _zip_of_zeros(tmp_path / "bomb.zip", 8 * MB)
    out = resolve_image_dir(str(arch), tmp_path / "cache", limits=ArchiveLimitsSection(max_ratio=1e6))
    assert (out / "zeros.bin").stat().st_size == 8 * MB


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_many_members_refused(tmp_path: Path, kind: str) -> None:
    arch = tmp_path / f"many.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(arch, "w") as zf:
            for i in range(200):
                zf.writestr(f"images/{i}.txt", b"")
    else:
        with tarfile.open(arch, "w") as tf:
            for i in range(200):
                tf.addfile(tarfile.TarInfo(f"images/{i}.txt"), io.BytesIO(b""))
    message = _refused(arch, tmp_path / "cache", ArchiveLimitsSection(max_members=100), "max_members")
    assert "100" in message
    out = resolve_image_dir(str(arch), tmp_path / "cache", limits=ArchiveLimitsSection(max_members=1000))
    assert len(list(out.iterdir())) == 200


def _lie_about_size(arch: Path, declared: int) -> None:
    """Rewrite the uncompressed size of the (only) entry in both its local header and the central directory."""
    data = bytearray(arch.read_bytes())
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, declared)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    arch.write_bytes(bytes(data))


def test_zip_whose_header_lies_about_its_size_refused(tmp_path: Path) -> None:
    arch = tmp_path / "liar.zip"
    with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/zeros.bin", bytes(8 * MB))
    _lie_about_size(arch, 1000)
    with zipfile.ZipFile(arch) as zf:
        assert sum(i.file_size for i in zf.infolist()) == 1000  # the declared size passes the limit
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        resolve_image_dir(str(arch), cache, limits=ArchiveLimitsSection(max_unpacked_bytes=MB, max_ratio=1e9))
    assert "\n" not in str(err.value) and arch.name in str(err.value)
    assert _cache_entries(cache) == []


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_bytes_counted_while_unpacking(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes that pass the declared check (as a lying header would) are still stopped while unpacking."""
    make = _zip_of_zeros if kind == "zip" else _tgz_of_zeros
    arch = make(tmp_path / f"bomb.{'zip' if kind == 'zip' else 'tar.gz'}", 8 * MB)
    monkeypatch.setattr(sources._Budget, "declared", lambda self, members, size: None)
    limits = ArchiveLimitsSection(max_unpacked_bytes=2 * MB, max_ratio=1e9)
    message = _refused(arch, tmp_path / "cache", limits, "max_unpacked_bytes")
    assert "unpacks at least" in message


def test_limits_reach_resolve_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))
    arch = _tgz_of_zeros(tmp_path / "bomb.tar.gz", 2 * MB)
    json_file = tmp_path / "a.json"
    json_file.write_text("{}")
    source = DataSource(image_dir=str(arch), json_file=str(json_file))
    with pytest.raises(DataError, match="max_unpacked_bytes"):
        resolve_sources([source], ArchiveLimitsSection(max_unpacked_bytes=MB, max_ratio=1e9))
    assert _cache_entries(tmp_path / "cache") == []
