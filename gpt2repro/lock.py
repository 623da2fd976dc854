"""One job per directory: an exclusive advisory lock on a run directory (or a data directory).

Rank 0 of a training run holds `RUN_DIR/.gpt2repro.lock` from before its first write there until
it exits; data prep holds one in its output directory. A second job on the same directory refuses
in one line naming the holder (host, PID, start time, which the holder writes into the file) and
how to go on.

The lock is `flock(2)` on the open file, so it belongs to the process: when the holder dies, by
a crash or `kill -9`, the kernel drops it and the next job takes it over (a lock file left behind
never blocks). On NFS (Linux 2.6.12 and later) `flock` is carried out as a whole-file byte-range
lock by the server (NLM for NFSv3, the protocol itself for NFSv4), so jobs on different nodes see
each other; a filesystem without lock support (Lustre mounted without `-o flock`, some FUSE and
object-store mounts) answers ENOLCK/EOPNOTSUPP/ENOSYS: then the run goes on with a warning, since
a lock cannot be had there at all (docs/training.md "One job per run directory").
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from types import TracebackType

from gpt2repro.errors import UserError

LOCK_NAME = ".gpt2repro.lock"
# How long a second job keeps trying before it refuses: long enough for a holder that is exiting
# (its lock goes with its last process) to be gone, short next to any real run.
GRACE_S = 3.0
# flock's answers on a filesystem that has no locks (NFS without a lock manager, Lustre without
# -o flock, FUSE): a warning, not a refusal; nothing else can be done there.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def check_dir_path(path: Path, flag: str) -> None:
    """Refuse, naming `flag`, a directory path that cannot be one: the path or one of its parents
    is a regular file, a symbolic-link loop, a link whose target does not exist, or cannot be
    looked at (permissions). A path that does not exist yet is fine (it will be made)."""
    full = path.absolute()
    for i in range(1, len(full.parts) + 1):
        p = Path(*full.parts[:i])
        # the path itself, or "X is not writable: it lies under P, which ..." for a parent
        head = (
            f"{flag} {path}" if p == full else f"{flag} {path} is not writable: it lies under {p},"
        )
        verb = "is" if p == full else "which is"
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                st = os.stat(p)  # what the link points at
        except FileNotFoundError:
            if not p.is_symlink():
                return  # made by acquire
            target = os.readlink(p)
            raise UserError(
                f"{head} {verb} a link that points to {target}, which does not exist; "
                f"mount or create {target}, or set {flag} to another path"
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(
                    f"{head} {verb} a symbolic link loop; point the link at a directory or "
                    f"set {flag} to another path"
                ) from None
            raise UserError(
                f"{flag} {path} cannot be used ({p}: {e.strerror}); fix the permissions or set "
                f"{flag} to another path"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(
                f"{head} {verb} a file, not a directory; set {flag} to a directory path"
            )


def _holder_text() -> str:
    """What the lock file records about its holder: host, PID, start time (one JSON line)."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})


def _describe_holder(text: str) -> tuple[str, str]:
    """(who holds it, how to stop it) from the lock file's text, in words for a message."""
    try:
        h = json.loads(text)
        host, pid, started = h["host"], int(h["pid"]), h["started"]
    except (ValueError, KeyError, TypeError):
        return "another process (it has not written its details yet)", "stop that job"
    return f"PID {pid} on host {host}, started {started}", f"stop PID {pid} on {host}"


class DirLock:
    """The exclusive lock of `directory` (made if missing); `flag` names it in messages.

    `acquire` takes it or refuses; `release` (also at interpreter exit, if forgotten after an
    error) removes the lock file and any directory `acquire` made that is still empty.
    """

    def __init__(self, directory: str | os.PathLike, flag: str, grace_s: float = GRACE_S) -> None:
        self.directory = Path(directory)
        self.flag = flag
        self.grace_s = grace_s  # seconds to keep trying while another process holds it
        self.path = self.directory / LOCK_NAME
        self.fd: int | None = None
        self.made: list[Path] = []  # directories acquire created, outermost first

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> DirLock:
        """Take the lock, or raise UserError naming its holder; returns self."""
        check_dir_path(self.directory, self.flag)
        self._make_directory()
        give_up = time.monotonic() + self.grace_s
        while True:  # again if the holder removed the file between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                self.release()
                raise self._not_writable(e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                os.close(fd)
                if e.errno in NO_LOCKS:
                    self._unlink_if_empty()
                    print(
                        f"warning: cannot lock {self.path} ({e.strerror}): this filesystem has "
                        "no locks, so nothing stops a second job from using the same "
                        f"{self.flag} (docs/training.md, 'One job per run directory')",
                        file=sys.stderr,
                        flush=True,
                    )
                    atexit.register(self.release)
                    return self
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    self.release()
                    raise self._not_writable(e) from None
                if time.monotonic() < give_up:
                    time.sleep(0.1)
                    continue
                self.release()
                who, stop = _describe_holder(text)
                raise UserError(
                    f"{self.flag} {self.directory} is in use by another job: {who} (lock file "
                    f"{self.path}); wait for it to finish, {stop}, or use another {self.flag}"
                ) from None
            if self._same_file(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
        self.fd = fd
        atexit.register(self.release)
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it), then unlock; idempotent."""
        atexit.unregister(self.release)
        if self.fd is not None:
            try:
                if self._same_file(self.fd):
                    self.path.unlink()
            except OSError:  # gone or unwritable: the unlock below is what matters
                pass
            os.close(self.fd)  # drops the flock
            self.fd = None
        for d in reversed(self.made):  # only what acquire made, and only while empty
            try:
                d.rmdir()
            except OSError:
                break
        self.made = []

    def _make_directory(self) -> None:
        missing = []
        p = self.directory.absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # made by another job at the same moment: not ours to remove
            except OSError as e:
                self.release()
                raise self._not_writable(e) from None
            self.made.append(d)

    def _same_file(self, fd: int) -> bool:
        """Is `fd` still the file at self.path? (A releasing holder may have unlinked it.)"""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)

    def _unlink_if_empty(self) -> None:
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()
        except OSError:
            pass

    def _not_writable(self, e: OSError) -> UserError:
        return UserError(
            f"{self.flag} {self.directory} is not writable ({e.strerror}); fix its permissions "
            f"or set {self.flag} to a writable path"
        )
