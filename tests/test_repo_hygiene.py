"""The repository stands alone: no tracked file points outside it for its reference facts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A clone has no sibling `shared/` folder; the facts live in docs/reference.md.
OUTSIDE = re.compile(r"\.\./shared|REFERENCE\.md")
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()  # spells the pattern out


def tracked_files() -> list[str]:
    """Tracked paths, from git (the test needs a checkout, not an sdist)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode().split("\0") if p]


def test_no_tracked_file_cites_a_file_outside_the_repo() -> None:
    files = tracked_files()
    assert "docs/reference.md" in files
    hits = []
    for rel in files:
        if rel == THIS or rel.split("/")[0] == ".ci":
            continue
        path = REPO / rel
        if not path.is_file():  # deleted in the work tree but still in the index
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "cite docs/reference.md instead:\n" + "\n".join(hits)
