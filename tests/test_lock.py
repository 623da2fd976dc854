"""One job per run directory (gpt2repro.lock): a second holder is refused naming the first, a dead
holder never blocks, nothing is left behind; and end to end, a second train.py and a second
launch/restart_until_done.sh on a running run directory are refused without touching it."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_SHAPE, run_train

from gpt2repro import lock
from gpt2repro.data import write_shard
from gpt2repro.errors import UserError
from gpt2repro.lock import LOCK_NAME, DirLock, check_dir_path

# A process that takes the lock of argv[1], says so, and holds it until killed.
HOLDER = """
import sys, time
from gpt2repro.lock import DirLock
DirLock(sys.argv[1], "--run.dir").acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold(directory: Path) -> subprocess.Popen:
    """Another process holding `directory`'s lock (returns once it holds it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def test_a_second_job_is_refused_naming_the_holder_and_a_dead_one_never_blocks(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    try:
        before = sorted(p.name for p in run.iterdir())
        start = time.monotonic()
        with pytest.raises(UserError) as e:
            DirLock(run, "--run.dir", grace_s=0.5).acquire()
        assert time.monotonic() - start >= 0.5  # an exiting holder gets a moment
        msg = str(e.value)
        assert f"--run.dir {run} is in use by another job" in msg and "\n" not in msg
        assert f"PID {holder.pid} on host {socket.gethostname()}, started " in msg
        assert f"stop PID {holder.pid} on {socket.gethostname()}" in msg
        assert "wait for it to finish" in msg and "use another --run.dir" in msg
        assert sorted(p.name for p in run.iterdir()) == before == [LOCK_NAME]  # nothing added
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
    finally:
        holder.kill()
        holder.wait()
    # killed (SIGKILL: no clean-up ran): its lock file is still there but no longer holds
    assert (run / LOCK_NAME).exists()
    with DirLock(run, "--run.dir"):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()  # a clean release removes it
    assert run.is_dir()  # the directory was there before: kept


def test_release_removes_what_acquire_made_and_a_refusal_makes_nothing(tmp_path: Path) -> None:
    with DirLock(tmp_path / "a" / "b", "--out-dir") as held:
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file() and held.fd is not None
    assert list(tmp_path.iterdir()) == []  # the empty directories it made went with it
    # a directory that got files while held stays
    with DirLock(tmp_path / "r", "--run.dir"):
        (tmp_path / "r" / "metrics.jsonl").write_text("{}\n")
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.jsonl"]


def test_a_holder_releasing_between_open_and_flock_is_not_a_false_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder unlinks the lock file on release; a job that opened the old file just before
    must not believe it holds the lock (another job may have made a new file): it tries again."""
    real_flock = lock.fcntl.flock
    calls = []

    def flock_after_a_release(fd: int, op: int) -> None:
        if not calls:  # the first holder releases: unlink, and a third job makes a new file
            (tmp_path / LOCK_NAME).unlink()
            (tmp_path / LOCK_NAME).write_text("")
        calls.append(fd)
        real_flock(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock_after_a_release)
    held = DirLock(tmp_path, "--run.dir").acquire()
    assert len(calls) == 2  # the stale file's flock, then the new file's
    assert held.fd is not None
    assert os.fstat(held.fd).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    held.release()


def test_a_filesystem_without_locks_warns_once_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    held = DirLock(tmp_path / "run", "--run.dir").acquire()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: cannot lock ")
    assert "no locks" in err and "--run.dir" in err and "docs/training.md" in err
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    held.release()


def test_directory_paths_that_cannot_be_one_are_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "unmounted")
    cases = {
        tmp_path / "afile": "is a file, not a directory",
        tmp_path / "afile" / "run": f"it lies under {tmp_path / 'afile'}, which is a file",
        tmp_path / "loop": "is a symbolic link loop",
        tmp_path / "loop" / "run": "which is a symbolic link loop",
        tmp_path / "dangling": f"points to {tmp_path / 'unmounted'}, which does not exist",
        tmp_path / "dangling" / "run": f"points to {tmp_path / 'unmounted'}, which does not",
    }
    for path, needle in cases.items():
        with pytest.raises(UserError) as e:
            DirLock(path, "--run.dir").acquire()
        assert needle in str(e.value) and f"--run.dir {path}" in str(e.value), str(e.value)
    check_dir_path(tmp_path / "new" / "run", "--run.dir")  # missing is fine: it will be made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dangling", "loop"]


def test_two_data_preps_into_one_directory(tmp_path: Path) -> None:
    from gpt2repro.prep import shards  # the data prep's writer

    out = tmp_path / "out"
    holder = hold(out)
    try:
        with pytest.raises(UserError, match=r"--out-dir .* is in use by another job: PID"):
            shards.write_shards(lambda start: None, out, {}, prefix="t")  # type: ignore[arg-type]
        # (after GRACE_S: the second prep keeps trying a moment before it refuses)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- end to end


def _data(path: Path) -> Path:
    toks = np.random.default_rng(0).integers(0, 500, size=20000, dtype=np.uint16)
    path.mkdir()
    write_shard(path / "t_val_000000.bin", toks[:2000])
    write_shard(path / "t_train_000001.bin", toks[2000:])
    return path


def _wait_for_holder(run: Path, job: subprocess.Popen, timeout_s: float = 120) -> int:
    """The PID written into run's lock file once the job holds it (the job must still run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert job.poll() is None, "the first job ended early"
        try:
            return json.loads((run / LOCK_NAME).read_text())["pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    raise AssertionError("the first job never took the lock")


def test_a_second_training_job_and_a_second_restart_loop_are_refused(tmp_path: Path) -> None:
    """restart_until_done.sh running a long training; meanwhile a second train.py and a second
    restart_until_done.sh on the same --run.dir each stop at once with one line naming the
    first job's PID; the first job's metrics show one run, steps never going backwards."""
    run = tmp_path / "run"
    args = [*TINY_SHAPE, "--eval.every=0", f"--data.dir={_data(tmp_path / 'data')}"]
    args += [f"--run.dir={run}", "--train.max_steps=1000000", "--checkpoint.every=20"]
    launcher = tmp_path / "launcher.sh"  # one process, no torchrun
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "train.py"} "$@"\n')
    launcher.chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAX_ATTEMPTS": "3", "DELAY": "0"}
    env["PYTHON"] = sys.executable
    loop = [str(REPO / "launch" / "restart_until_done.sh"), str(launcher), *args]
    first = subprocess.Popen(
        ["bash", *loop], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        pid = _wait_for_holder(run, first)
        p = run_train(args, check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        (line,) = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert line.startswith(f"error: --run.dir {run} is in use by another job: PID {pid} ")
        second = subprocess.run(["bash", *loop], env=env, capture_output=True, text=True)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stdout.count("restart_until_done: attempt ") == 1  # no retry loop
        assert f"in use by another job: PID {pid} " in second.stdout
        assert first.poll() is None  # the first job runs on, untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(ln) for ln in lines[:-1]]  # the last may be cut short by the kill
    assert [r["event"] for r in records if "event" in r] == ["start"]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(steps) and len(steps) > 0
