"""Checkpoint layout, atomic writes, and resume discovery (format version 1).

    run_dir/ckpt/step_00001000/
        model.pt      full model state dict (FQN keys; world-size and strategy independent)
        optim.pt      full optimizer state dict keyed by parameter FQN (same independence)
        state.json    step, tokens, resolved config, git SHA, world size, loader states and RNG
                      states of every rank, guard counters, sha256 of model.pt and optim.pt,
                      "complete": true
    run_dir/ckpt/latest   the name of the newest complete checkpoint, updated last

A checkpoint is written into `ckpt/.tmp-step_N/` and renamed into place only when complete, so a
crash at any moment leaves either the old or the new checkpoint, never half of one. Loading uses
`torch.load(weights_only=True)`: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from gpt2repro import dist
from gpt2repro.atomic import publish_dir, sha256_file, write_text
from gpt2repro.errors import UserError
from gpt2repro.fault import injected as injected_fault

FORMAT_VERSION = 1
_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


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

    def __init__(self, fh: Any) -> None:
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
            torch.save(obj, writer)
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
        older = [p.name for p in sorted(ckpt_root.glob(f"{_PREFIX}*")) if p != final]
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
        p for p in ckpt_root.glob(f"{_PREFIX}*") if p.is_dir() and _step_of(p) is not None
    )
    doomed = steps[:-keep_last]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def abandon_after(run_dir: Path, step: int) -> list[tuple[Path, Path]]:
    """Move checkpoints of steps after `step` to `ckpt/.abandoned-step_N-<time>` (kept, hidden).

    Used when a run deliberately continues from an older checkpoint: the newer ones belong to a
    branch that is being dropped, and must not be found by `resume=auto` or kept by pruning.
    """
    root = run_dir / "ckpt"
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for p in sorted(root.glob(f"{_PREFIX}*")):
        s = _step_of(p)
        if p.is_dir() and s is not None and s > step:
            dest = root / f".abandoned-{p.name}-{stamp}"
            os.replace(p, dest)
            moved.append((p, dest))
    if moved:
        write_text(root / "latest", step_dir_name(step) + "\n")
    return moved


# --------------------------------------------------------------------------- discovery / load


def _step_of(p: Path) -> int | None:
    try:
        return int(p.name[len(_PREFIX) :])
    except ValueError:
        return None


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
    if not state.get("complete") or state.get("format_version") != FORMAT_VERSION:
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

    A corrupt or incomplete newest checkpoint is skipped with a warning in favour of an older one.
    `ckpt/latest` is not read: it is written after the rename and can be stale after a crash, so
    the step directories themselves are the truth (`latest` is for people and scripts).
    """
    root = run_dir / "ckpt"
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and _step_of(p) is not None),
        key=lambda p: _step_of(p) or 0,
        reverse=True,
    )
    for p in candidates:
        try:
            state = read_state(p)
            verify(p, state)
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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The GPT stored in a checkpoint (run dir, ckpt dir or step dir), in eval mode.

    The files are checked against the sha256 recorded at save time first, whichever directory
    was named, so a corrupted or truncated model.pt is one clear error, never wrong weights.
    """
    from gpt2repro.config import ModelConfig
    from gpt2repro.model import GPT

    ckpt = resolve(path)  # a run or ckpt dir: find_latest has verified the one it picked
    state = read_state(ckpt)
    if ckpt == Path(path):  # a step directory named directly
        verify(ckpt, state, names=("model.pt",))
    model = GPT(ModelConfig(**state["config"]["model"]))
    sd = _load_tensors(ckpt / "model.pt")
    model.load_state_dict(sd)
    return model.to(device).eval()


def load_model_or_hf(
    *, checkpoint: str | Path | None, hf: str | None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The model the evaluate/sample/export CLIs work on: a gpt2repro checkpoint (run dir, ckpt
    dir or step dir) or, when `hf` is given, an HF GPT-2 directory or hub name; in eval mode."""
    if hf is not None:
        from gpt2repro.hf import load_hf

        return load_hf(hf, device).eval()
    if checkpoint is None:
        raise UserError("give a model: --checkpoint RUN_DIR or --hf NAME_OR_DIR")
    return load_model(checkpoint, device)


# --------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from: its directory and its validated state.json."""

    path: Path
    state: dict[str, Any]


# Settings that define the optimization or the data: `resume=auto` refuses a change to them
# unless `checkpoint.allow_changes` names it (model.* is compared apart: it cannot change at all).
RUN_DEFINING = (
    "data.dir", "train.seq_len", "train.total_batch_tokens", "train.max_steps", "train.seed",
    "optim.lr", "optim.min_lr", "optim.warmup_steps", "optim.schedule", "optim.decay_frac",
    "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.eps", "optim.grad_clip",
)  # fmt: skip


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key=saved (now: new)' for each RUN_DEFINING setting that differs (configs as dicts)."""
    out = []
    for key in RUN_DEFINING:
        section, name = key.split(".")
        old, new = saved.get(section, {}).get(name), now[section][name]
        if key == "data.dir" and old is not None:
            old, new = os.path.normpath(old), os.path.normpath(new)
        if old != new:
            out.append(f"{key}={old} (now: {new})")
    return out


def select_resume(
    *,
    mode: str,
    run_dir: Path,
    config: dict[str, Any],
    allow_changes: str = "",
    is_main: bool = True,
) -> Resume | None:
    """The checkpoint to continue from per `checkpoint.resume` (`mode`), or None for a fresh start.

    Collective: rank 0 picks and verifies it (sha256 once, not per rank) and tells the others, so
    every rank resumes from the same one even if their views of the filesystem lag. Refuses a
    checkpoint of another model shape, and (with `auto`) one whose run-defining settings differ
    from `config` unless `allow_changes` names them. Never over existing checkpoints: resuming
    from an older checkpoint of this run moves the newer ones aside (`ckpt/.abandoned-...`).
    """
    path = dist.on_main(lambda: _pick_resume(mode, run_dir))
    if path is None:
        return None
    state = read_state(path)
    saved = state["config"]["model"]
    shape = [
        f"{k}={saved.get(k)} (config: {v})" for k, v in config["model"].items() if saved.get(k) != v
    ]
    if shape:
        raise UserError(
            f"checkpoint {path} is for another model shape: {', '.join(shape)}; use the same "
            "[model] config, a new --run.dir for a new model, or --checkpoint.resume=restart to "
            "start over here (the old run is moved aside, not deleted)"
        )
    allowed = {k.strip() for k in allow_changes.split(",") if k.strip()}
    changes = changed_settings(state["config"], config)
    refused = [c for c in changes if c.split("=")[0] not in allowed]
    if refused and mode == "auto":
        keys = ",".join(c.split("=")[0] for c in refused)
        raise UserError(
            f"{run_dir} holds a run with other settings: {'; '.join(refused)}; resume with the "
            f"saved values, accept the change with --checkpoint.allow_changes={keys}, start over "
            "with --checkpoint.resume=restart (the old run is moved aside, not deleted), or use a "
            "new --run.dir"
        )
    if changes and is_main:
        print(f"note: continuing from {path.name} with changed settings: {'; '.join(changes)}")
    return Resume(path=path, state=state)


def _pick_resume(mode: str, run_dir: Path) -> Path | None:
    _clean_stale_writes(run_dir)
    existing = sorted((run_dir / "ckpt").glob(f"{_PREFIX}*"))
    if mode == "auto":
        found = find_latest(run_dir)  # verified
        if found is None and existing:
            raise UserError(
                f"{run_dir} holds checkpoints but none is valid (newest: "
                f"{_problem(existing[-1])}); to start over there pass "
                "--checkpoint.resume=restart (the old files are moved aside, not deleted), or "
                "use a new --run.dir"
            )
        return found
    if mode == "restart":
        _move_run_aside(run_dir)
        return None
    if mode == "never":
        if existing:
            raise UserError(
                f"checkpoint.resume=never but {run_dir} already holds checkpoints "
                f"({existing[-1].name}); use a new --run.dir (nothing is overwritten) or resume=auto"
            )
        return None
    ckpt = resolve(mode)
    if existing and run_dir.resolve() not in ckpt.resolve().parents:
        raise UserError(
            f"checkpoint.resume={mode} starts from another run but {run_dir} already holds "
            "checkpoints; use a new --run.dir so they are not overwritten"
        )
    state = read_state(ckpt)
    verify(ckpt, state)
    for src, dest in abandon_after(run_dir, state["step"]):
        print(f"note: moved {src.name} aside to {dest.name}: this run continues from {ckpt.name}")
    return ckpt


def _problem(ckpt: Path) -> str:
    """What is wrong with a checkpoint directory, in a few words (for messages)."""
    try:
        verify(ckpt, read_state(ckpt))
    except UserError as e:
        return str(e).split(";")[0]
    return f"{ckpt} looks valid"


def _clean_stale_writes(run_dir: Path) -> None:
    """Remove `ckpt/.tmp-step_*` (and the `.latest.*.tmp` of an atomic write of `latest`) left by
    a crash or a full disk while saving (never complete checkpoints: those are renamed into place
    only when whole).

    A checkpoint that replaced one of the same step (atomic.publish_dir) moves the old one into
    `ckpt/.step_N.old-*/` first; a kill between that move and the rename of the new one leaves
    `step_N` only there: it is moved back (it was complete when published). A leftover whose
    `step_N` is in place is the old copy publish_dir was about to delete."""
    root = run_dir / "ckpt"
    for old in sorted(root.glob(f".{_PREFIX}*.old-*")):
        name = old.name[1:].split(".old-")[0]  # step_NNNNNNNN
        if (old / name).is_dir() and not (root / name).exists():
            os.replace(old / name, root / name)
            print(
                f"note: restored {root / name} from {old} (a save of the same step was interrupted)"
            )
        shutil.rmtree(old, ignore_errors=True)
    for tmp in sorted([*root.glob(".tmp-step_*"), *root.glob(".latest.*.tmp")]):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        print(
            f"note: removed {tmp}, an unfinished checkpoint write (a crash or a full disk while "
            "saving); the complete checkpoints are untouched"
        )


def _move_run_aside(run_dir: Path) -> None:
    """checkpoint.resume=restart: move checkpoints, metrics, DONE and the wandb id of this run
    directory into `run_dir/.restarted-<time>/` (kept, not deleted)."""
    names = ("ckpt", "metrics.jsonl", "DONE", "wandb_id.txt")
    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not present:
        return
    dest = run_dir / f".restarted-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)
    print(f"note: checkpoint.resume=restart: moved {', '.join(p.name for p in present)} to {dest}")


def restore_rank(state: dict[str, Any], loader: Any, info: dist.DistInfo) -> None:
    """Put this rank's data position (`loader.load_state_dict`) and RNG states back.

    Model and optimizer state are full (unsharded) and the loader position counts windows, so a
    run continues on the same data with another number of processes; only per-rank RNG streams
    cannot map, and they restart.
    """
    rank, world_size = info.rank, info.world_size
    ranks = state["ranks"]
    if len(ranks) == world_size:
        loader.load_state_dict(ranks[rank]["loader"])
        set_rng_state(ranks[rank]["rng"])
        return
    loader.load_state_dict(ranks[0]["loader"])
    if info.is_main:
        print(
            f"note: checkpoint written by {len(ranks)} processes, resuming with "
            f"{world_size}: same data order and optimizer state, but per-rank RNG "
            "streams restart, so the losses match only to rounding",
            flush=True,
        )
