"""The checkpoint format (version 1): layout, atomic hashed writes, verification, reading, pruning.

    run_dir/ckpt/step_00001000/
        model.pt      full model state dict (FQN keys; world-size and strategy independent)
        optim.pt      full optimizer state dict keyed by parameter FQN (same independence)
        state.json    step, tokens, resolved config, git SHA, world size, loader states and RNG
                      states of every rank, guard counters, sha256 of model.pt and optim.pt,
                      "complete": true
    run_dir/ckpt/latest   the name of the newest complete checkpoint, updated last

A checkpoint is written into `ckpt/.tmp-step_N/` and renamed into place only when complete, so a
crash at any moment leaves either the old or the new checkpoint, never half of one. Loading uses
`torch.load(weights_only=True)`: no arbitrary objects are unpickled. Which checkpoint a run
continues from, and what may change when it does, is resume.py's business.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn as nn

from gpt2repro import dist
from gpt2repro.atomic import publish_dir, sha256_file, write_text
from gpt2repro.config import ModelConfig
from gpt2repro.errors import UserError
from gpt2repro.fault import injected as injected_fault
from gpt2repro.model import GPT

FORMAT_VERSION = 1
STEP_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_of(p: Path) -> int | None:
    """The step number of a `step_NNNNNNNN` directory, or None for any other name."""
    try:
        return int(p.name[len(STEP_PREFIX) :])
    except ValueError:
        return None


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON-serialisable data (python, numpy, torch, CUDA)."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "state": {
                k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in np_state["state"].items()
            },
            **{k: v for k, v in np_state.items() if k != "state"},
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    inner = dict(np_state["state"])
    inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
    np_state["state"] = inner
    np.random.set_state(np_state)
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- state dicts


def _full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict, dict | None]:
    """Full (unsharded) model and optimizer state dicts on CPU; a collective under FSDP."""
    # Imported here, not at the top: torch.distributed.checkpoint costs about 0.4 s to import,
    # which sample/evaluate/export never need (they read model.pt with _load_tensors).
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = (
        get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    )
    return msd, osd


def _load_tensors(path: Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True (tensors and plain containers, never arbitrary objects);
    a file that is truncated, not a checkpoint, or holds other objects (a pickle that would run
    code) is one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        text = str(e)
        # torch's weights-only text suggests weights_only=False: never pass that on to a user
        if "Weights only load failed" in text and "GLOBAL" in text:
            raise UserError(
                f"{path} holds objects other than tensors (loading them could run code), so it "
                "is refused; use a checkpoint written by gpt2repro, or another checkpoint of the run"
            ) from None
        first = (text.strip().splitlines() or [type(e).__name__])[0]
        if "Weights only load failed" in text:
            first = "not a torch tensor file"
        raise UserError(
            f"{path} cannot be read ({first[:200]}); use another checkpoint of the run"
        ) from None


def load_into(model: nn.Module, optimizer: torch.optim.Optimizer | None, ckpt: Path) -> None:
    """Load model.pt (and optim.pt) of `ckpt` into a possibly sharded model; every rank calls it."""
    # Imported here, not at the top: torch.distributed.checkpoint costs about 0.4 s to import,
    # which sample/evaluate/export never need (they read model.pt with _load_tensors).
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    # mmap: ranks on one node share the page cache instead of each holding a full copy in RAM.
    msd = _load_tensors(ckpt / "model.pt", mmap=True)
    set_model_state_dict(model, msd, options=opts)
    if optimizer is not None:
        osd = _load_tensors(ckpt / "optim.pt", mmap=True)
        set_optimizer_state_dict(model, optimizer, osd, options=opts)


# --------------------------------------------------------------------------- save


class _HashingWriter:
    """A file wrapper that hashes the bytes torch.save streams through it (it writes in order)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.error: OSError | None = None  # the first failed write (a full disk, say)

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save_hashed(obj: Any, path: Path) -> str:
    """torch.save + fsync; returns the sha256 of the bytes written, without reading them back."""
    with open(path, "wb") as fh:
        writer = _HashingWriter(fh)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]  # it needs only write and flush
        except RuntimeError:
            # torch.save's zip writer replaces a failed write's OSError (ENOSPC) by a RuntimeError
            # of its own ("unexpected pos") when it closes the archive: raise the real cause.
            if writer.error is not None:
                raise writer.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())
    return writer.sha.hexdigest()


def save(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    loader_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically; every rank calls this (state dicts are collective).

    `state` holds the rank-independent fields (step, tokens, config, ...); loader and RNG states
    are gathered from every rank and stored by rank index. Rank 0 writes; a full disk or a
    permission error there is one UserError on every rank, naming the checkpoint left intact.
    """
    msd, osd = _full_state_dicts(model, optimizer)
    per_rank = dist.all_gather_object({"loader": loader_state, "rng": rng_state()})
    record = {**state, "format_version": FORMAT_VERSION, "step": step}
    record.update(world_size=len(per_rank), ranks=per_rank, complete=True)
    dist.on_main(lambda: _write(run_dir / "ckpt", step, msd, osd, record, keep_last))
    return run_dir / "ckpt" / step_dir_name(step)


def _write(
    ckpt_root: Path, step: int, msd: dict, osd: dict | None, record: dict, keep_last: int
) -> None:
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of a crash during an earlier write of this step
        tmp.mkdir()
        record["sha256"] = {"model.pt": _save_hashed(msd, tmp / "model.pt")}
        injected_fault(0).inside("save", step)  # the fault tests' kill or full disk: half written
        record["sha256"]["optim.pt"] = _save_hashed(osd, tmp / "optim.pt")
        write_text(tmp / "state.json", json.dumps(record))
        # A checkpoint of this step may exist (a resumed run reached it again): replaced whole.
        publish_dir(tmp, final)
        write_text(ckpt_root / "latest", final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        older = [p.name for p in sorted(ckpt_root.glob(f"{STEP_PREFIX}*")) if p != final]
        kept = (
            f"{older[-1]} is intact and the run resumes from it"
            if older
            else "no earlier checkpoint exists"
        )
        raise UserError(
            f"cannot write checkpoint {final} ({e.strerror or e}); {kept}: free space or fix "
            f"the permissions of {ckpt_root}, then rerun the same command"
        ) from None
    prune(ckpt_root, keep_last)


def prune(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 = keep all)."""
    if keep_last <= 0:
        return []
    steps = sorted(
        p for p in ckpt_root.glob(f"{STEP_PREFIX}*") if p.is_dir() and step_of(p) is not None
    )
    doomed = steps[:-keep_last]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------------- discovery / load


class NewerFormat(UserError):
    """A checkpoint of a format newer than FORMAT_VERSION: not damaged, only unreadable here, so
    it is never skipped for an older one (a run continuing from that one would prune it)."""


def read_state(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint directory, validated; UserError naming the problem."""
    sj = ckpt / "state.json"
    if not sj.is_file():
        raise UserError(f"{ckpt} is not a gpt2repro checkpoint (no state.json)")
    try:
        state = json.loads(sj.read_text())
    except json.JSONDecodeError:
        raise UserError(
            f"{sj} is corrupt (not JSON); delete {ckpt} to fall back to an older one"
        ) from None
    version = state.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise NewerFormat(
            f"{ckpt} was written by a newer gpt2repro (format {version}; this one reads format "
            f"{FORMAT_VERSION}); update gpt2repro (git pull, then pip install -e .) to read it, or "
            "use another checkpoint or --run.dir"
        )
    if not state.get("complete") or version != FORMAT_VERSION:
        raise UserError(f"{ckpt} is incomplete or of another format version; delete it")
    for name in ("model.pt", "optim.pt"):
        if not (ckpt / name).is_file():
            raise UserError(f"{ckpt / name} is missing; delete {ckpt} to fall back to an older one")
    return state


def verify(
    ckpt: Path, state: dict[str, Any], names: tuple[str, ...] = ("model.pt", "optim.pt")
) -> None:
    """Check the sha256 of `names` (model.pt and optim.pt) against those recorded at save time."""
    for name, digest in state.get("sha256", {}).items():
        if name not in names:
            continue
        if sha256_file(ckpt / name) != digest:
            raise UserError(
                f"{ckpt / name} does not match its recorded sha256 (corrupted); delete {ckpt} "
                "to resume from an older checkpoint"
            )


def find_latest(run_dir: Path) -> Path | None:
    """The newest valid checkpoint under run_dir/ckpt, by step number, or None.

    A corrupt or incomplete newest checkpoint is skipped with a warning in favour of an older one;
    one of a newer format (NewerFormat) is refused, never skipped.
    `ckpt/latest` is not read: it is written after the rename and can be stale after a crash, so
    the step directories themselves are the truth (`latest` is for people and scripts).
    """
    root = run_dir / "ckpt"
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir() and step_of(p) is not None),
        key=lambda p: step_of(p) or 0,
        reverse=True,
    )
    for p in candidates:
        try:
            state = read_state(p)
            verify(p, state)
        except NewerFormat:
            raise
        except UserError as e:
            print(f"warning: skipping checkpoint: {e}", flush=True)
            continue
        return p
    return None


def resolve(path: str | Path) -> Path:
    """A step directory from a run dir, a ckpt dir, or a step dir."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint path {p} does not exist")
    if (p / "state.json").is_file():
        return p
    found = find_latest(p.parent if p.name == "ckpt" else p)
    if found is not None:
        return found
    raise UserError(
        f"no complete checkpoint under {p} (expected {p}/ckpt/step_NNNNNNNN/state.json)"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The GPT stored in a checkpoint (run dir, ckpt dir or step dir), in eval mode.

    The files are checked against the sha256 recorded at save time first, whichever directory
    was named, so a corrupted or truncated model.pt is one clear error, never wrong weights.
    """
    ckpt = resolve(path)  # a run or ckpt dir: find_latest has verified the one it picked
    state = read_state(ckpt)
    if ckpt == Path(path):  # a step directory named directly
        verify(ckpt, state, names=("model.pt",))
    model = GPT(ModelConfig(**state["config"]["model"]))
    sd = _load_tensors(ckpt / "model.pt")
    model.load_state_dict(sd)
    return model.to(device).eval()
