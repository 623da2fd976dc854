"""File integrity: atomic writes and content hashes.

Atomic writes: a file appears under its final name complete, or not at all. Write to a temporary
file in the same directory, flush and fsync it, rename it over the final name, then fsync the
directory so the rename survives a power cut. Used for shards, manifests, checkpoint metadata,
evaluation results and exports. `publish_dir` does the same for a directory (checkpoints,
exports). `sha256_file` is the one file hash (checkpoints, tokenizer files,
downloaded archives). `check_output_path` refuses, before any work, an output location that could
not be written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from gpt2repro.errors import UserError


@functools.cache
def _umask() -> int:
    """The process umask, read once: reading it means setting it, and flipping it on every write
    would race with any other thread creating files meanwhile."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def public_mode() -> int:
    """0o666 less the umask: what open() would give (mkstemp's temp files are 0o600)."""
    return 0o666 & ~_umask()


def public_dir_mode() -> int:
    """0o777 less the umask: what mkdir() would give (mkdtemp's directories are 0o700)."""
    return 0o777 & ~_umask()


def check_output_path(path: str | os.PathLike, flag: str, *, directory: bool) -> Path:
    """Refuse (UserError naming `flag`) an output path that the work at the end could not write:
    a file where a directory goes or the reverse, a path under a regular file, or a location
    whose directory does not take new files. Creates nothing: writability is probed with a
    temporary file in the nearest existing directory, removed at once. Returns the path.

    Called before the work (tokenizing, evaluating, exporting), so a bad path costs nothing.
    """
    path = Path(path).expanduser()
    kind = "directory" if directory else "file"
    if path.exists():
        if directory and not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a directory; pass a directory path")
        if not directory and path.is_dir():
            raise UserError(
                f"{flag} {path} is a directory; pass a file path (e.g. {path}/out.json)"
            )
    base = path if path.is_dir() else path.parent
    while not base.exists() and base != base.parent:  # the nearest existing ancestor
        base = base.parent
    if not base.is_dir():
        raise UserError(
            f"{flag} {path} lies under {base}, which is a file, not a directory; pass a {kind} "
            f"path outside it"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"{flag} {path} is not writable ({base}: {e.strerror}); fix the permissions or pass "
            f"another {kind} path"
        ) from None
    return path


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", check: Callable[[Path], object] | None = None
) -> Iterator[IO[Any]]:
    """`with atomic_open(p, "w") as f: ...` writes p atomically; on an exception p is untouched.

    `check`, if given, is called with the complete temporary file's path before the rename; an
    exception from it leaves `p` untouched too (e.g. validate a download before it lands).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, public_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the complete directory `tmp` to `final` (same filesystem), replacing an existing
    `final` so that at every moment one of them is whole: the old one is moved aside first and
    deleted only after the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False
) -> None:
    """`obj` as JSON and a newline, written atomically (the one JSON writer)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
