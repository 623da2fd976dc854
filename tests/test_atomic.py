"""File integrity helpers: the one file hash, and atomic writes that leave the umask alone."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from gpt2repro import atomic


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert atomic.sha256_file(path, chunk_bytes=1024) == hashlib.sha256(data).hexdigest()
    assert atomic.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_writes_do_not_flip_the_umask_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the umask means setting it; doing that on every write races with other threads
    creating files, so it is read once per process."""
    atomic.public_mode()  # the one read (whenever it happened first)
    calls: list[int] = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    for i in range(3):
        atomic.write_text(tmp_path / f"f{i}.txt", "x")
    assert calls == []
    mode = stat.S_IMODE((tmp_path / "f0.txt").stat().st_mode)
    assert mode == atomic.public_mode()  # as open() would create it, not mkstemp's 0o600


def test_publish_dir_replaces_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "out"
    for version in ("old", "new"):
        tmp = tmp_path / f".out.tmp-{version}"
        tmp.mkdir()
        (tmp / "file.txt").write_text(version)
        if version == "old":
            (tmp / "only-old.txt").write_text("x")
        atomic.publish_dir(tmp, final)
        assert not tmp.exists()
    assert (final / "file.txt").read_text() == "new"
    assert not (final / "only-old.txt").exists()  # the old directory is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_a_failed_check_leaves_the_destination_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "data.txt"
    dest.write_text("old")

    def refuse(tmp: Path) -> None:
        assert tmp.read_text() == "new"  # the check sees the complete temporary file
        raise ValueError("bad download")

    with (
        pytest.raises(ValueError, match="bad download"),
        atomic.atomic_open(dest, "w", check=refuse) as f,
    ):
        f.write("new")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]
