"""data/sources.py: folders, safe cached archive unpacking, remote (S3 via a local moto server) files."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddetr.data import sources
from ddetr.data.sources import resolve_file, resolve_image_dir
from ddetr.errors import DataError


@dataclass(frozen=True)
class _Link:
    """A tar entry that links to ``target``: a symbolic link, or a hard link with ``kind=tarfile.LNKTYPE``."""

    target: str
    kind: bytes = tarfile.SYMTYPE


def _make_tar(path: Path, entries: dict[str, bytes | _Link], mode: str = "w:gz") -> Path:
    """A tar archive of regular files (their bytes) and links, in the order given."""
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, _Link):
                info.type, info.linkname = data.kind, data.target
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_folder_is_returned_as_is(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    assert resolve_image_dir(str(tmp_path / "imgs"), tmp_path / "cache") == tmp_path / "imgs"


def test_missing_paths_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope_dir"):
        resolve_image_dir(str(tmp_path / "nope_dir"), tmp_path / "cache")
    with pytest.raises(DataError, match=r"nope\.json"):
        resolve_file(str(tmp_path / "nope.json"))


def test_non_archive_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "images.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not an archive"):
        resolve_image_dir(str(f), tmp_path / "cache")


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_tar_unpacked_once_and_single_top_folder_returned(tmp_path: Path, suffix: str, mode: str) -> None:
    arch = _make_tar(tmp_path / f"images{suffix}", {"images/a.jpg": b"A", "images/sub/b.jpg": b"B"}, mode)
    cache = tmp_path / "cache"
    out = resolve_image_dir(str(arch), cache)
    assert out.name == "images" and (out / "a.jpg").read_bytes() == b"A"
    assert (out / "sub" / "b.jpg").read_bytes() == b"B"
    # reused: a marker written into the cache survives a second resolve (no re-unpacking)
    (out / "marker").write_text("kept")
    assert resolve_image_dir(str(arch), cache) == out
    assert (out / "marker").read_text() == "kept"


def test_flat_archive_returns_cache_root(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "flat.tar.gz", {"a.jpg": b"A", "b.jpg": b"B"})
    out = resolve_image_dir(str(arch), tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg"]


def test_changed_archive_is_unpacked_again(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "x.tar.gz", {"images/a.jpg": b"old"})
    first = resolve_image_dir(str(arch), tmp_path / "cache")
    _make_tar(arch, {"images/a.jpg": b"new content"})
    os.utime(arch, ns=(1, 10**18))  # make sure the mtime differs
    second = resolve_image_dir(str(arch), tmp_path / "cache")
    assert first != second and (second / "a.jpg").read_bytes() == b"new content"


def test_env_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "envcache"))
    arch = _make_tar(tmp_path / "e.tar.gz", {"images/a.jpg": b"A"})
    out = resolve_image_dir(str(arch))
    assert str(out).startswith(str(tmp_path / "envcache" / "archives"))


def test_zip_unpacked(tmp_path: Path) -> None:
    arch = tmp_path / "images.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        zf.writestr("images/a.jpg", b"A")
        zf.writestr("images/b.jpg", b"B")
    out = resolve_image_dir(str(arch), tmp_path / "cache")
    assert out.name == "images" and (out / "b.jpg").read_bytes() == b"B"


def _assert_refused(arch: Path, cache: Path, entry: str) -> None:
    with pytest.raises(DataError) as err:
        resolve_image_dir(str(arch), cache)
    assert str(arch.name) in str(err.value) and entry in str(err.value)
    # nothing published, nothing written outside
    assert not (cache / "archives").exists() or not [
        p for p in (cache / "archives").iterdir() if not p.name.startswith(".tmp-")
    ]


def test_tar_dotdot_entry_refused(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "evil.tar.gz", {"images/a.jpg": b"A", "../escape.txt": b"E"})
    _assert_refused(arch, tmp_path / "cache", "../escape.txt")
    assert not (tmp_path / "cache" / "escape.txt").exists()
    assert not (tmp_path / "cache" / "archives" / "escape.txt").exists()


def test_tar_absolute_entry_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs_target.txt"
    arch = _make_tar(tmp_path / "abs.tar.gz", {str(target): b"E"})
    _assert_refused(arch, tmp_path / "cache", str(target).lstrip("/"))
    assert not target.exists()


def test_tar_symlink_out_refused(tmp_path: Path) -> None:
    arch = _make_tar(
        tmp_path / "link.tar.gz", {"images/a.jpg": b"A", "images/passwd": _Link("../../../../etc/passwd")}
    )
    _assert_refused(arch, tmp_path / "cache", "images/passwd")


def test_tar_absolute_symlink_and_hardlink_refused(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "abslink.tar", {"images/x": _Link("/etc/hostname")}, "w")
    _assert_refused(arch, tmp_path / "cache", "images/x")
    arch2 = _make_tar(tmp_path / "hard.tar", {"images/h": _Link("../outside", tarfile.LNKTYPE)}, "w")
    _assert_refused(arch2, tmp_path / "cache2", "images/h")


def test_tar_internal_symlink_allowed(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "ok.tar", {"images/a.jpg": b"A", "images/alias.jpg": _Link("a.jpg")}, "w")
    out = resolve_image_dir(str(arch), tmp_path / "cache")
    assert (out / "alias.jpg").read_bytes() == b"A"


def test_zip_dotdot_entry_refused(tmp_path: Path) -> None:
    arch = tmp_path / "evil.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        zf.writestr("images/a.jpg", b"A")
        zf.writestr("../../zip_escape.txt", b"E")
    _assert_refused(arch, tmp_path / "cache", "../../zip_escape.txt")


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    arch = tmp_path / "broken.tar.gz"
    arch.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"broken\.tar\.gz"):
        resolve_image_dir(str(arch), tmp_path / "cache")


def test_killed_unpack_leftover_is_not_reused(tmp_path: Path) -> None:
    arch = _make_tar(tmp_path / "k.tar.gz", {"images/a.jpg": b"A", "images/b.jpg": b"B"})
    cache = tmp_path / "cache"
    st = arch.resolve().stat()
    final = cache / "archives" / sources._key(arch.resolve(), st.st_size, st.st_mtime_ns)
    # a run killed mid-unpack leaves its temporary folder with a partial content
    stale = final.parent / f".tmp-{final.name}-dead"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "a.jpg").write_bytes(b"partial")
    out = resolve_image_dir(str(arch), cache)
    assert out == final / "images"
    assert (out / "a.jpg").read_bytes() == b"A" and (out / "b.jpg").read_bytes() == b"B"


def test_failed_unpack_leaves_no_final_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = _make_tar(tmp_path / "f.tar.gz", {"images/a.jpg": b"A"})
    cache = tmp_path / "cache"

    def boom(archive: Path, target: Path, *_: object) -> None:
        (target / "images").mkdir()
        (target / "images" / "half.jpg").write_bytes(b"h")
        raise KeyboardInterrupt  # the run is interrupted mid-unpack

    monkeypatch.setattr(sources, "_extract", boom)
    with pytest.raises(KeyboardInterrupt):
        resolve_image_dir(str(arch), cache)
    assert list((cache / "archives").iterdir()) == []
    monkeypatch.undo()
    out = resolve_image_dir(str(arch), cache)
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg"]


# ----------------------------------------------------------------------------- S3 on loopback (moto)


@pytest.fixture(scope="module")
def s3_endpoint():
    import moto.server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    import boto3

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="ddetr-test")
    return client


def test_s3_archive_and_json(tmp_path: Path, s3_bucket, s3_endpoint: str) -> None:
    arch = _make_tar(tmp_path / "images.tar.gz", {"images/a.jpg": b"A", "images/b.jpg": b"B"})
    s3_bucket.upload_file(str(arch), "ddetr-test", "data/images.tar.gz")
    s3_bucket.put_object(Bucket="ddetr-test", Key="data/train.json", Body=b'{"images": []}')
    cache = tmp_path / "cache"
    opts = {"endpoint_url": s3_endpoint}
    out = resolve_image_dir("s3://ddetr-test/data/images.tar.gz", cache, storage_options=opts)
    assert out.name == "images" and (out / "b.jpg").read_bytes() == b"B"
    js = resolve_file("s3://ddetr-test/data/train.json", cache, storage_options=opts)
    assert js.read_bytes() == b'{"images": []}' and str(js).startswith(str(cache))
    # a second resolve reuses the cached copy (no download, same path)
    assert resolve_file("s3://ddetr-test/data/train.json", cache, storage_options=opts) == js
    # the endpoint from the environment alone also works (what a user sets)
    assert resolve_file("s3://ddetr-test/data/train.json", tmp_path / "c2").read_bytes() == b'{"images": []}'


def test_s3_folder_and_missing_key(tmp_path: Path, s3_bucket, s3_endpoint: str) -> None:
    for name in ("x.jpg", "y.jpg"):
        s3_bucket.put_object(Bucket="ddetr-test", Key=f"folder/imgs/{name}", Body=name.encode())
    opts = {"endpoint_url": s3_endpoint}
    out = resolve_image_dir("s3://ddetr-test/folder/imgs", tmp_path / "cache", storage_options=opts)
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg", "y.jpg"]
    assert (out / "y.jpg").read_bytes() == b"y.jpg"
    with pytest.raises(DataError, match=r"s3://ddetr-test/nothing\.json"):
        resolve_file("s3://ddetr-test/nothing.json", tmp_path / "cache", storage_options=opts)
