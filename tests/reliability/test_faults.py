"""The fault suite: kills inside a checkpoint write and inside an evaluation, a rank killed under
torchrun's elastic restarts, random kills through launch/restart_until_done.sh, and full disks
while checkpointing and during data prep. Each run that survives a fault must end exactly where an
undisturbed run ends (the same loss at every step, the same final parameters) and leave no
temporary files. Tiny models on CPU; docs/reliability.md lists what each test shows."""

from __future__ import annotations

import errno
import functools
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_SHAPE, run_train

from gpt2repro import checkpoint, fault
from gpt2repro.atomic import atomic_open
from gpt2repro.data import write_shard
from gpt2repro.errors import UserError, run_cli
from gpt2repro.prep import fineweb, shards
from gpt2repro.runs import read_metrics, train_losses

MAX_STEPS = 10
# Checkpoints at 4, 8 and 10, evaluations at 0, 3, 6, 9 and 10: a kill between two of them loses
# work, and a kill in one of them must not leave anything that changes the resumed run.
RUN = [
    *TINY_SHAPE,
    f"--train.max_steps={MAX_STEPS}",
    "--optim.warmup_steps=3",
    "--optim.lr=1e-2",
    "--checkpoint.every=4",
    "--eval.every=3",
    "--eval.val_tokens=512",  # 16 windows: two validation batches on each of 2 ranks
    "--log.every=1",
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable token stream (rotations of one random pattern) in llm.c shards."""
    d = tmp_path_factory.mktemp("corpus")
    base = np.random.default_rng(0).integers(0, 500, size=64)
    toks = np.concatenate([np.roll(base, i % 7) for i in range(2000)]).astype(np.uint16)
    write_shard(d / "t_val_000000.bin", toks[:4000])
    write_shard(d / "t_train_000001.bin", toks[4000:])
    return d


def args_for(corpus: Path, run_dir: Path) -> list[str]:
    return [*RUN, f"--data.dir={corpus}", f"--run.dir={run_dir}"]


# train.py as a user starts it; the tests check the exit status themselves (`ok`).
train = functools.partial(run_train, check=False)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """The undisturbed run on `nproc` processes (made once per module, on first use)."""
    made: dict[int, Path] = {}

    def get(nproc: int) -> Path:
        if nproc not in made:
            rd = tmp_path_factory.mktemp(f"reference{nproc}") / "run"
            ok(train(args_for(corpus, rd), nproc=nproc))
            made[nproc] = rd
        return made[nproc]

    return get


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint.resolve(run_dir) / "model.pt", weights_only=True)


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files and directories of interrupted writes under `run_dir`."""
    found = [*run_dir.rglob(".tmp-*"), *run_dir.rglob("*.tmp"), *run_dir.rglob("*.old-*")]
    return sorted(str(p.relative_to(run_dir)) for p in found)


def assert_same_run(run_dir: Path, ref: Path) -> None:
    """Finished, bit-identical to `ref` (every step's loss and the final parameters), no temps."""
    assert (run_dir / "DONE").exists()
    assert train_losses(run_dir / "metrics.jsonl") == train_losses(ref / "metrics.jsonl")
    pa, pb = final_params(ref), final_params(run_dir)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    assert leftovers(run_dir) == []


def one_error_line(p: subprocess.CompletedProcess | tuple[int, str]) -> str:
    """The single line a user error prints (exit 2, no traceback, nothing else on stderr)."""
    rc, err = (p.returncode, p.stderr) if isinstance(p, subprocess.CompletedProcess) else p
    assert rc == 2, (rc, err[-3000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount(size) -> a fresh tmpfs of that size (e.g. "4m"), unmounted afterwards; skips the
    test where mounting is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except OSError as e:
            pytest.skip(f"cannot mount a tmpfs to fill: {e}")
        if p.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs to fill ({p.stderr.strip()}); the injected variant runs"
            )
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of `directory` with one file until `leave_bytes` are free."""
    st = os.statvfs(directory)
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        fh.write(bytes(max(0, st.f_bavail * st.f_frsize - leave_bytes)))
    return filler


# --------------------------------------------------------------------------- kills


def test_the_fault_hook_fires_on_its_rank_in_the_first_attempt_and_names_bad_specs() -> None:
    assert fault.parse(None, rank=0) == fault.Fault()
    assert fault.parse("sigkill-in-save:8", rank=0) == fault.Fault("sigkill-in-save", 8)
    assert fault.parse("sigkill:6:rank=1", rank=1) == fault.Fault("sigkill", 6)
    assert fault.parse("sigkill:6:rank=1", rank=0) == fault.Fault()  # another rank's
    assert fault.parse("sigkill:6", rank=0, restart_count=1) == fault.Fault()  # torchrun restart
    with pytest.raises(OSError) as e:
        fault.Fault("enospc-in-save", 8).inside("save", 8)
    assert e.value.errno == errno.ENOSPC
    fault.Fault("enospc-in-save", 8).inside("eval", 8)  # other places and steps: nothing
    fault.Fault("enospc-in-save", 8).inside("save", 4)
    # data prep's kind (tests/test_data_prep.py runs it): os._exit(3) after its N-th shard only
    assert fault.parse("exit-in-prep:2", rank=0) == fault.Fault("exit-in-prep", 2)
    fault.Fault("exit-in-prep", 2).inside("prep", 1)
    fault.Fault("exit-in-prep", 2).inside("save", 2)
    for bad in ("sigkil:3", "sigkill", "sigkill:x", "sigkill:3:rank=a", "sigkill:3:rank=1:x"):
        with pytest.raises(UserError) as e:
            fault.parse(bad, rank=0)
        assert str(e.value).startswith(f"GPT2REPRO_FAULT={bad!r}: expected KIND:STEP")


@pytest.mark.slow  # ~20 s (1 process), ~35 s (2) on 2 busy CPU cores: 3 runs and the reference
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.dist)])
def test_sigkill_inside_a_checkpoint_write_and_an_evaluation_resumes_bit_identical(
    corpus: Path, tmp_path: Path, reference: Callable[[int], Path], nproc: int
) -> None:
    rd = tmp_path / "run"
    args = args_for(corpus, rd)
    # killed while writing the step-8 checkpoint, model.pt written and optim.pt not
    p = train(args, nproc=nproc, env={"GPT2REPRO_FAULT": "sigkill-in-save:8"})
    assert p.returncode != 0 and not (rd / "DONE").exists()
    half = rd / "ckpt" / ".tmp-step_00000008"
    assert sorted(f.name for f in half.iterdir()) == ["model.pt"]
    assert checkpoint.find_latest(rd).name == "step_00000004"
    # killed on the last rank in the middle of the evaluation after step 6
    fault = "sigkill-in-eval:6" + (f":rank={nproc - 1}" if nproc > 1 else "")
    p = train(args, nproc=nproc, env={"GPT2REPRO_FAULT": fault})
    assert p.returncode != 0 and "at step 4" in p.stdout
    assert not half.exists() and "removed" in p.stdout  # the half-written checkpoint
    attempt = read_metrics(rd / "metrics.jsonl")
    attempt = attempt[max(i for i, r in enumerate(attempt) if r.get("event") == "resume") :]
    assert [r["step"] for r in attempt if "loss" in r][-1] == 6
    assert [r["step"] for r in attempt if "val_loss" in r] == []  # the step-6 one never finished
    p = ok(train(args, nproc=nproc))
    assert "resumed from" in p.stdout and "at step 4" in p.stdout
    assert_same_run(rd, reference(nproc))


@pytest.mark.dist
@pytest.mark.slow  # ~18 s on 2 busy CPU cores
def test_a_rank_killed_under_torchrun_max_restarts_restarts_and_resumes(
    corpus: Path, tmp_path: Path, reference: Callable[[int], Path]
) -> None:
    """Rank 1 dies after step 6; torchrun restarts both workers (TORCHELASTIC_RESTART_COUNT=1,
    where the fault does not fire again), they resume from step 4 and finish the run.

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: by default torchrun (torch >= 2.5) keeps one rendezvous
    store across restarts, and restarted workers can read the previous attempt's addresses and
    fail to connect (pytorch/pytorch#135712, #167288; here 3 of 4 restarts failed without it)."""
    rd = tmp_path / "run"
    env = {"GPT2REPRO_FAULT": "sigkill:6:rank=1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    p = ok(train(args_for(corpus, rd), nproc=2, env=env, max_restarts=2))
    events = [r["event"] for r in read_metrics(rd / "metrics.jsonl") if "event" in r]
    # rank 0 may record its end as `crashed` (its collective with the dead rank fails) before
    # torchrun stops it; whether it gets there first is a race, so it is allowed, not required
    assert [e for e in events if e != "crashed"] == ["start", "resume", "done"], events
    assert events in (["start", "resume", "done"], ["start", "crashed", "resume", "done"])
    assert "resumed from" in p.stdout and "at step 4" in p.stdout
    assert_same_run(rd, reference(2))


LAUNCHER = """#!/usr/bin/env bash
# launch/single_node.sh with the next fault of $SCHEDULE (one per line; none left: no fault)
fault=$(head -n 1 "$SCHEDULE"); sed -i 1d "$SCHEDULE"
GPT2REPRO_FAULT=$fault exec "$REPO/launch/single_node.sh" "$@"
"""


@pytest.mark.dist  # launch/single_node.sh runs torchrun (one process here)
@pytest.mark.slow  # ~24 s on 2 busy CPU cores: 4 attempts
def test_chaos_random_kills_through_restart_until_done(
    corpus: Path, tmp_path: Path, reference: Callable[[int], Path]
) -> None:
    """Three kills at random points (seeded): one inside a checkpoint write, one inside an
    evaluation, one after a step, in the order of their steps, each in a new attempt of
    launch/restart_until_done.sh (a launcher in front of launch/single_node.sh hands each attempt
    its fault). The run ends exactly as the undisturbed one, with no temporary files left."""
    rng = random.Random(0)
    save, evaluation = rng.choice([4, 8]), rng.choice([3, 6, 9])
    after = rng.choice([s for s in range(1, MAX_STEPS) if s not in (save, evaluation)])
    faults = sorted(
        [(save, "sigkill-in-save"), (evaluation, "sigkill-in-eval"), (after, "sigkill")]
    )
    schedule = tmp_path / "schedule"
    schedule.write_text("".join(f"{kind}:{step}\n" for step, kind in faults))
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    rd = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DELAY": "0", "NPROC": "1",
           "PYTHON": sys.executable, "SCHEDULE": str(schedule), "REPO": str(REPO)}  # fmt: skip
    env.pop("GPT2REPRO_FAULT", None)
    cmd = ["bash", str(REPO / "launch" / "restart_until_done.sh"), str(launcher),
           *args_for(corpus, rd)]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (faults, p.stdout[-3000:], p.stderr[-3000:])
    assert schedule.read_text() == ""  # every fault was used
    assert p.stdout.count("restarting in 0s") == 3 and "attempt 5/" not in p.stdout, faults
    assert "resumed from" in p.stdout and "note: removed" in p.stdout, faults  # .tmp-step_N
    assert_same_run(rd, reference(1))


# --------------------------------------------------------------------------- full disks


@pytest.mark.parametrize("variant", ["injected", "tmpfs"])
def test_disk_full_during_a_checkpoint_is_one_line_and_the_rerun_finishes(
    corpus: Path,
    tmp_path: Path,
    reference: Callable[[int], Path],
    tmpfs: Callable[[str], Path],
    variant: str,
) -> None:
    """The step-8 checkpoint meets a full disk (ENOSPC from a filled tmpfs, or raised by the fault
    hook at the same point): one line, step 4 intact, nothing half-written; after space is freed
    the same command finishes the run exactly as if nothing had happened."""
    ref = reference(1)
    env, filler = None, None
    if variant == "tmpfs":
        rd = tmpfs("8m") / "run"
        rd.mkdir()
        ckpt_bytes = sum(f.stat().st_size for f in (ref / "ckpt" / "step_00000004").iterdir())
        # room for the step-4 checkpoint and the metrics, not for a second checkpoint
        filler = fill(rd.parent, leave_bytes=int(1.5 * ckpt_bytes) + (64 << 10))
    else:
        rd = tmp_path / "run"
        env = {"GPT2REPRO_FAULT": "enospc-in-save:8"}
    line = one_error_line(train(args_for(corpus, rd), env=env))
    assert "cannot write checkpoint" in line and "step_00000008" in line
    assert "No space left on device" in line and "step_00000004 is intact" in line
    assert sorted(p.name for p in (rd / "ckpt").iterdir()) == ["latest", "step_00000004"]
    assert checkpoint.find_latest(rd).name == "step_00000004"  # sha256 verified
    assert leftovers(rd) == [] and not (rd / "DONE").exists()
    if filler is not None:
        filler.unlink()
    p = ok(train(args_for(corpus, rd)))
    assert "at step 4" in p.stdout
    assert_same_run(rd, ref)


def _docs(path: Path, n_docs: int = 400) -> None:
    rng = random.Random(0)
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as"]
    with open(path, "w") as fh:
        for _ in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
            fh.write(json.dumps({"text": text}) + "\n")


def _prep(src: Path, out: Path) -> int:
    """gpt2repro.prep.fineweb on local files, in process (as `python data_prep/fineweb.py ...`)."""
    argv = ["--input", str(src), "--out-dir", str(out), "--prefix", "t",
            "--shard-size", "5000", "--allow-small-shards", "--workers", "1", "--quiet"]  # fmt: skip
    return run_cli(fineweb.main, argv)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.parametrize("variant", ["injected", "tmpfs"])
def test_disk_full_during_data_prep_is_one_line_and_the_rerun_finishes(
    tmp_path: Path,
    tmpfs: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variant: str,
) -> None:
    """Shards written before the full disk are complete and kept, the one being written leaves
    nothing, the error is one line; the rerun after space is freed gives the same bytes."""
    src = tmp_path / "docs.jsonl"
    _docs(src)
    assert _prep(src, tmp_path / "ref") == 0
    ref = _files(tmp_path / "ref")
    assert len(ref) > 8  # shards, manifest
    filler = None
    if variant == "tmpfs":
        out = tmpfs("512k") / "out"
        filler = fill(out.parent, leave_bytes=40 << 10)  # 3 shards of 10 KB, then full
    else:
        out = tmp_path / "out"
        real, calls = write_shard, []

        def full_disk(path: Path, tokens: np.ndarray) -> None:
            calls.append(path)
            if len(calls) < 4:
                return real(path, tokens)
            with atomic_open(path, "wb") as fh:  # half a shard, then the disk is full
                fh.write(b"\0" * 4096)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(shards, "write_shard", full_disk)
    capsys.readouterr()
    rc = _prep(src, out)
    line = one_error_line((rc, capsys.readouterr().err))
    assert "cannot write" in line and str(out) in line and "No space left on device" in line
    assert "rerun the same command" in line
    kept = _files(out)
    assert shards.MANIFEST not in kept and not [n for n in kept if n.endswith(".tmp")]
    bins = [n for n in kept if n.endswith(".bin")]
    assert bins and all(kept[n] == ref[n] for n in bins)  # complete shards only
    json.loads(kept[shards.PROGRESS])  # the resume point is intact
    monkeypatch.undo()
    if filler is not None:
        filler.unlink()
    assert _prep(src, out) == 0
    assert _files(out) == ref
