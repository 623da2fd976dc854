"""The repository stands alone: no tracked file cites a file outside it (a sibling folder, a style
guide or reference notes that live elsewhere, a path on the developer's machine)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

OUTSIDE = re.compile(
    r"\.\./shared|\b(?:STYLE|REFERENCE)\.md"  # the facts a clone needs live in docs/reference.md
    r"|(?<![\w.~])/(?:work|root|home/[^/\s]+|Users/[^/\s]+)/"  # absolute paths to someone's machine
)
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()  # spells the patterns out


def test_no_tracked_file_cites_a_file_outside_the_repo() -> None:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [p for p in out.stdout.decode().split("\0") if p]
    assert "docs/reference.md" in files
    hits = []
    for rel in files:
        path = REPO / rel
        if rel == THIS or rel.startswith(".ci/") or not path.is_file():  # .ci: the CI's own files
            continue
        try:
            lines = enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        except UnicodeDecodeError:  # binary
            continue
        hits += [f"{rel}:{n}: {line.strip()}" for n, line in lines if OUTSIDE.search(line)]
    assert not hits, "cite a file inside the repository (docs/reference.md):\n" + "\n".join(hits)
