"""The repository stands on its own: docs link only files inside it, nothing reads outside it, a clone tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a markdown link or image: [text](target) / ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# built from pieces so that this file does not match its own check
OUTSIDE_MARKERS = ("../" + "shared", "DDETR_" + "SHARED")


def _tracked_files() -> list[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout.split("\0")[:-1]


def _relative_links(markdown: Path) -> list[str]:
    """The link targets of a markdown file that are paths (no URL scheme, no mail, no bare #anchor)."""
    targets = LINK.findall(markdown.read_text(encoding="utf-8"))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_link_pattern_finds_relative_targets(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '[a](docs/A.md) ![i](img/x.png "t") [u](https://x.org) [m](mailto:a@b) [h](#top) [b](../b.md#s)'
    )
    assert _relative_links(page) == ["docs/A.md", "img/x.png", "../b.md#s"]


@pytest.mark.parametrize("markdown", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(markdown: Path) -> None:
    for target in _relative_links(markdown):
        resolved = (markdown.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{markdown.name}: {target} points outside the repository"
        assert resolved.exists(), f"{markdown.name}: {target} does not exist"


def test_docs_link_the_spec_and_architecture() -> None:
    links = _relative_links(ROOT / "README.md")
    assert "docs/SPEC.md" in links and "docs/ARCHITECTURE.md" in links


def test_no_tracked_file_reads_outside_the_repository() -> None:
    offenders = []
    for name in _tracked_files():
        path = ROOT / name
        if name.endswith(".md") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        offenders += [f"{name}: {marker}" for marker in OUTSIDE_MARKERS if marker in text]
    assert not offenders, offenders


def test_assets_are_tracked_real_files() -> None:
    tracked = [name for name in _tracked_files() if name.startswith("tests/assets/")]
    assert "tests/assets/bccd/LICENSE" in tracked
    assert "tests/assets/coco_eval_ref/expected_bbox_stats.json" in tracked
    assert sum(name.startswith("tests/assets/bccd/images/") for name in tracked) == 364
    jpeg = ROOT / "tests/assets/bccd/images" / Path(next(n for n in tracked if n.endswith(".jpg"))).name
    assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, not a Git LFS pointer


def test_a_clone_collects_the_whole_suite(tmp_path: Path) -> None:
    clone = tmp_path / "ddetr"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != OUTSIDE_MARKERS[1]}  # no hint where data might be
    env["PYTHONPATH"] = str(clone / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = re.findall(r"(\d+)(?:/\d+)? tests? collected", proc.stdout)
    assert counts and int(counts[-1]) > 400, proc.stdout[-2000:]
