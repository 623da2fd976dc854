"""Fault injection for the reliability tests, from GPT2REPRO_FAULT="KIND:STEP[:rank=R]".

Unset (every real run), nothing happens; the variable is read once per process.

    sigkill, sigterm   signal this process after step STEP completed (after its checkpoint and
                       evaluation)
    nan, spike         make the loss of step STEP non-finite, or 50x larger (exercise the guards)
    sigkill-in-save    SIGKILL inside the checkpoint write of step STEP: model.pt is written,
                       optim.pt, state.json and the rename into place are not
    enospc-in-save     at the same place raise OSError(ENOSPC), as a full disk would
    sigkill-in-eval    SIGKILL inside the evaluation after step STEP, after its first validation
                       batch
    exit-in-prep       data prep (gpt2repro.prep.shards): os._exit(3) right after the STEP-th shard
                       this process writes is renamed into place, before progress.json records it

`injected(rank)` is the armed Fault; the training loop calls its `poison` and `after_step`, the
checkpoint write, the evaluation and data prep its `inside(where, step)`.

`rank=R` limits the fault to rank R. A fault fires in a job's first attempt only: torchrun's
elastic restarts (`--max-restarts`) start the workers again with the same environment, and the
restarted job must be able to recover (dist.restart_count() is 0 in the first attempt). A new
job started by launch/restart_until_done.sh inherits the environment too: with
GPT2REPRO_FAULT_ONCE=PATH the fault creates PATH when it fires and does nothing while PATH exists.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from gpt2repro.errors import UserError

ENV = "GPT2REPRO_FAULT"
ONCE_ENV = "GPT2REPRO_FAULT_ONCE"
KINDS = ("sigkill", "sigterm", "nan", "spike", "sigkill-in-save", "enospc-in-save",
         "sigkill-in-eval", "exit-in-prep")  # fmt: skip


@dataclass(frozen=True)
class Fault:
    """The fault armed in this process (kind "" = none) and the step it fires at."""

    kind: str = ""
    step: int = -1
    once: str = ""  # GPT2REPRO_FAULT_ONCE: a file created when the fault fires

    def _fire(self) -> None:
        if self.once:
            Path(self.once).touch()

    def poison(self, step: int) -> float | None:
        """The factor for the loss of `step` (nan, spike), or None."""
        if step != self.step or self.kind not in ("nan", "spike"):
            return None
        self._fire()
        return {"nan": float("nan"), "spike": 50.0}[self.kind]

    def after_step(self, step: int) -> None:
        """The end of the training loop's step `step` (sigkill, sigterm)."""
        if step == self.step and self.kind in ("sigkill", "sigterm"):
            self._fire()
            os.kill(os.getpid(), signal.SIGKILL if self.kind == "sigkill" else signal.SIGTERM)

    def inside(self, where: str, step: int) -> None:
        """A point inside the checkpoint write (`where`="save") or the evaluation ("eval") of
        step `step`, or in data prep ("prep") after its `step`-th shard."""
        if step != self.step or not self.kind.endswith(f"-in-{where}"):
            return
        self._fire()
        if self.kind == "enospc-in-save":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.kind == "exit-in-prep":
            os._exit(3)  # no cleanup, as a kill; status 3 tells the test it was this hook
        os.kill(os.getpid(), signal.SIGKILL)


def parse(spec: str | None, rank: int, restart_count: int = 0, once: str | None = None) -> Fault:
    """The fault `spec` (GPT2REPRO_FAULT's value) arms on `rank` in attempt `restart_count`;
    none once the file `once` (GPT2REPRO_FAULT_ONCE's value) exists."""
    if not spec:
        return Fault()
    parts = spec.split(":")
    try:
        kind, step = parts[0], int(parts[1])
        only_rank = int(parts[2].removeprefix("rank=")) if len(parts) > 2 else None
    except (IndexError, ValueError):
        kind = ""
    if kind not in KINDS or len(parts) > 3:
        raise UserError(
            f"{ENV}={spec!r}: expected KIND:STEP[:rank=R] with KIND one of {', '.join(KINDS)}"
        )
    if restart_count > 0 or (only_rank is not None and only_rank != rank):
        return Fault()
    if once and Path(once).exists():
        return Fault()
    return Fault(kind, step, once or "")


@functools.cache
def injected(rank: int) -> Fault:
    """The fault GPT2REPRO_FAULT arms on `rank` of this process (read once)."""
    spec = os.environ.get(ENV)
    if not spec:
        return Fault()  # every real run
    # Imported here: dist imports torch, and data prep (which arms faults too) must not load
    # torch in a real run, in its process or its tokenizer workers.
    from gpt2repro import dist

    return parse(spec, rank, dist.restart_count(), os.environ.get(ONCE_ENV))
