"""Which checkpoint a run continues from, and what may change when it does.

`checkpoint.resume` picks it: `auto` (the newest valid one), `restart` (move the run aside and
start over), `never`, or a path (a deliberate branch: newer checkpoints are moved aside). The
model shape must match; the run-defining settings (RUN_DEFINING) may change only by name
(`checkpoint.allow_changes`), those the loader's position or the optimizer's state depends on
(FIXED) not at all; those that change what is measured (MEASURED) are noted and marked on the
resume event. An allowed optimizer setting takes effect (optim.set_hyperparameters). `auto` never
starts from step 0 where a run happened but left no checkpoint (`refuse_silent_restart`).
Nothing is deleted: what a run leaves behind is moved aside. The on-disk format itself is
checkpoint.py's; the run directory's lock is lock.py's (taken before anything here runs).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2repro import dist
from gpt2repro.atomic import write_text
from gpt2repro.checkpoint import (
    STEP_PREFIX,
    find_latest,
    read_state,
    resolve,
    set_rng_state,
    step_dir_name,
    step_of,
    verify,
)
from gpt2repro.config import Config, to_dict
from gpt2repro.data import TokenLoader, data_fingerprint, fingerprint_difference
from gpt2repro.errors import UserError


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from: its directory and its validated state.json."""

    path: Path
    state: dict[str, Any]
    # settings that differ from the checkpoint's and were let through (allowed run-defining ones,
    # and MEASURED ones): key -> {"was": saved, "now": new}, for the resume event in metrics.jsonl
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)


# Settings that define the optimization or the data: `resume=auto` refuses a change to them
# unless `checkpoint.allow_changes` names it (model.* is compared apart: it cannot change at all;
# nor can FIXED, below).
RUN_DEFINING = (
    "data.dir", "train.seq_len", "train.total_batch_tokens", "train.max_steps", "train.seed",
    "optim.lr", "optim.min_lr", "optim.warmup_steps", "optim.schedule", "optim.decay_frac",
    "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.eps", "optim.grad_clip",
    "optim.name", "optim.muon_lr", "optim.muon_momentum", "optim.embed_lr", "optim.head_lr",
)  # fmt: skip

# A checkpoint written before a setting existed lacks it, and was trained under its default
# (model.arch = "gpt2", optim.name = "adamw", ...): compared as that default, not as missing.
DEFAULTS = to_dict(Config())


def changed_settings(
    saved: dict[str, Any], now: dict[str, Any], saved_data: dict | None = None
) -> list[str]:
    """'key=saved (now: new)' for each RUN_DEFINING setting that differs (configs as dicts).

    `data.dir` is compared by content when the checkpoint holds the data's fingerprint
    (`saved_data`, data.data_fingerprint): the same data spelled another way (relative, absolute,
    through a link) is no change, other data under the same names is one, naming the shard. Older
    checkpoints have none: their path is compared (normalized)."""
    out = []
    for key in RUN_DEFINING:
        section, name = key.split(".")
        old, new = saved.get(section, {}).get(name, DEFAULTS[section][name]), now[section][name]
        if key == "data.dir" and saved_data is not None:
            diff = fingerprint_difference(saved_data, data_fingerprint(new))
            if diff is not None:
                out.append(f"{key}={old} (now: {new}, where {diff})")
            continue
        if key == "data.dir" and old is not None:
            old, new = os.path.normpath(old), os.path.normpath(new)
        if old != new:
            out.append(f"{key}={old} (now: {new})")
    return out


# Run-defining settings that no allow_changes can let through, and why: the data loader's saved
# position is a place in the window order that the sequence length and the seed define; the
# optimizer's saved state (AdamW's moments, Muon's momentum) belongs to the optimizer that made it.
_LOADER = "the data loader's saved position depends on the sequence length and the seed"
FIXED = {
    "train.seq_len": _LOADER,
    "train.seed": _LOADER,
    "optim.name": "the optimizer state in the checkpoint is that optimizer's",
}

# Settings that change what the logged numbers mean (the validation budget and data, the
# precision, compilation): a resume may change them, but says so in its line and marks the resume
# event in metrics.jsonl (`changed`) so a report can show where the curve's meaning changed.
MEASURED = (
    "eval.val_tokens", "eval.hellaswag_file", "eval.hellaswag_limit", "eval.core_bundle",
    "eval.core_max_per_task", "train.dtype", "train.compile", "dist.fsdp_mixed_precision",
)  # fmt: skip

MODES = ("auto", "never", "restart")  # checkpoint.resume: these, or the path of a checkpoint


def check_resume_flags(mode: str, allow_changes: str) -> None:
    """Refuse a `checkpoint.resume` that is neither a mode nor an existing path (a typo such as
    `atuo` used to read as a missing checkpoint path), and an `allow_changes` key that is not a
    run-defining setting or one that cannot change (FIXED). Before the run directory is touched."""
    if mode not in MODES and not Path(mode).exists():
        raise UserError(
            f"--checkpoint.resume={mode} is neither a mode nor an existing checkpoint path; pass "
            f"{', '.join(MODES[:-1])} or {MODES[-1]}, or the path of a checkpoint (a run, ckpt or "
            "step directory)"
        )
    for key in _allowed(allow_changes):
        if key in FIXED:
            raise UserError(
                f"--checkpoint.allow_changes={key}: {key} cannot change on resume ({FIXED[key]}); "
                "resume with the saved value, or start a new run (a new --run.dir, or "
                "--checkpoint.resume=restart)"
            )
        if key not in RUN_DEFINING:
            allowable = ", ".join(k for k in RUN_DEFINING if k not in FIXED)
            raise UserError(
                f"--checkpoint.allow_changes={key}: not a setting a resume asks about; the ones "
                f"it does: {allowable} (others may change freely)"
            )


def _allowed(allow_changes: str) -> list[str]:
    return [k.strip() for k in allow_changes.split(",") if k.strip()]


def measured_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The MEASURED settings that differ between two configs (as dicts): key -> was/now."""
    out = {}
    for key in MEASURED:
        section, name = key.split(".")
        old, new = saved.get(section, {}).get(name), now[section][name]
        if old != new:
            out[key] = {"was": old, "now": new}
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
    saved = {**DEFAULTS["model"], **state["config"]["model"]}
    shape = [
        f"{k}={saved.get(k)} (config: {v})" for k, v in config["model"].items() if saved.get(k) != v
    ]
    if shape:
        raise UserError(
            f"checkpoint {path} is for another model shape: {', '.join(shape)}; use the same "
            "[model] config, a new --run.dir for a new model, or --checkpoint.resume=restart to "
            "start over here (the old run is moved aside, not deleted)"
        )
    allowed = set(_allowed(allow_changes))
    changes = changed_settings(state["config"], config, saved_data=state.get("data_fingerprint"))
    if "data_fingerprint" not in state and is_main:
        print(f"note: {path.name} predates data fingerprints: data.dir is compared by its path")
    fixed = [c for c in changes if c.split("=")[0] in FIXED]
    if fixed:  # in every mode: the loader could not continue anyway
        names = [c.split("=")[0] for c in fixed]
        why = "; ".join(dict.fromkeys(FIXED[k] for k in names))
        raise UserError(
            f"{run_dir} holds a run with other settings: {'; '.join(fixed)}; {' and '.join(names)} "
            f"cannot change on resume ({why}): resume with the saved values, start over with "
            "--checkpoint.resume=restart (the old run is moved aside, not deleted), or use a new "
            "--run.dir"
        )
    refused = [c for c in changes if c.split("=")[0] not in allowed]
    if refused and mode == "auto":
        keys = ",".join(c.split("=")[0] for c in refused)
        raise UserError(
            f"{run_dir} holds a run with other settings: {'; '.join(refused)}; resume with the "
            f"saved values, accept the change with --checkpoint.allow_changes={keys}, start over "
            "with --checkpoint.resume=restart (the old run is moved aside, not deleted), or use a "
            "new --run.dir"
        )
    measured = measured_changes(state["config"], config)
    noted = changes + [f"{k}={v['was']} (now: {v['now']})" for k, v in measured.items()]
    if noted and is_main:
        print(f"note: continuing from {path.name} with changed settings: {'; '.join(noted)}")
    changed = {c.split("=")[0]: _was_now(c.split("=")[0], state["config"], config) for c in changes}
    return Resume(path=path, state=state, changed={**changed, **measured})


def _was_now(key: str, saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    section, name = key.split(".")
    return {"was": saved.get(section, {}).get(name), "now": now.get(section, {}).get(name)}


def _pick_resume(mode: str, run_dir: Path) -> Path | None:
    _clean_stale_writes(run_dir)
    existing = sorted((run_dir / "ckpt").glob(f"{STEP_PREFIX}*"))
    ckpt_link = _dangling(run_dir / "ckpt")
    if mode == "auto":
        found = find_latest(run_dir)  # verified
        if found is None and existing:
            raise UserError(
                f"{run_dir} holds checkpoints but none is valid (newest: "
                f"{_problem(existing[-1])}); to start over there pass "
                "--checkpoint.resume=restart (the old files are moved aside, not deleted), or "
                "use a new --run.dir"
            )
        if found is None:
            refuse_silent_restart(run_dir)
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
        if ckpt_link:
            raise UserError(
                f"{run_dir / 'ckpt'} {ckpt_link}, so no checkpoint can be written; mount or "
                "create it, or pass --checkpoint.resume=restart (the link is moved aside)"
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


def _dangling(path: Path) -> str | None:
    """'is a link to X, which does not exist' for a link that points nowhere, else None."""
    if path.is_symlink() and not path.exists():
        return f"is a link to {os.readlink(path)}, which does not exist"
    return None


def refuse_silent_restart(run_dir: Path) -> None:
    """`resume=auto` found no checkpoint: refuse to start from step 0 where a run has happened
    and its checkpoints are gone (DONE; train records past the step of its first checkpoint, or a
    resume event, in metrics.jsonl; a `ckpt` link pointing nowhere), since that would silently
    train again from scratch over it; the user asks with `restart` or `never`. A run that stopped
    before its first checkpoint had nothing to keep: it starts again from step 0, with a note."""
    signs = []
    if (run_dir / "DONE").exists():
        signs.append("DONE (a finished run)")
    history = _history(run_dir / "metrics.jsonl")
    every = history["every"]
    if history["resumed"]:
        signs.append("metrics.jsonl with a resume event")
    elif history["last_step"] and (every is None or 0 < every <= history["last_step"]):
        past = f", past its first checkpoint (checkpoint.every={every})" if every else ""
        signs.append(f"metrics.jsonl with train records up to step {history['last_step']}{past}")
    link = _dangling(run_dir / "ckpt")
    if link:
        signs.append(f"ckpt, which {link} (storage not mounted?)")
    if signs:
        raise UserError(
            f"{run_dir} shows a run happened ({'; '.join(signs)}) but holds no checkpoint to "
            "continue from; put its ckpt/ back to continue, start over with "
            "--checkpoint.resume=restart (the old run is moved aside, not deleted), or pass "
            "--checkpoint.resume=never to start from step 0 here anyway"
        )
    if history["last_step"]:
        print(
            f"note: {run_dir / 'metrics.jsonl'} holds train records up to step "
            f"{history['last_step']} of a run that stopped before its first checkpoint "
            f"(checkpoint.every={every}); starting again from step 0",
            flush=True,
        )


def _history(metrics: Path) -> dict[str, Any]:
    """What metrics.jsonl tells of earlier runs here: the last step of a train record
    (`last_step`, 0: none), whether one resumed (`resumed`), and the `checkpoint.every` of the
    last start (`every`, None when unknown). No file: nothing."""
    out: dict[str, Any] = {"last_step": 0, "resumed": False, "every": None}
    try:
        with open(metrics, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn line (a kill while appending)
                if not isinstance(rec, dict):
                    continue
                event = rec.get("event")
                if event is None and "loss" in rec:
                    out["last_step"] = max(out["last_step"], int(rec.get("step") or 0))
                elif event == "resume":
                    out["resumed"] = True
                elif event == "start":
                    every = rec.get("config", {}).get("checkpoint", {}).get("every")
                    out["every"] = every if isinstance(every, int) else None
    except OSError:
        pass
    return out


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
    for old in sorted(root.glob(f".{STEP_PREFIX}*.old-*")):
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


def abandon_after(run_dir: Path, step: int) -> list[tuple[Path, Path]]:
    """Move checkpoints of steps after `step` to `ckpt/.abandoned-step_N-<time>` (kept, hidden).

    Used when a run deliberately continues from an older checkpoint: the newer ones belong to a
    branch that is being dropped, and must not be found by `resume=auto` or kept by pruning.
    """
    root = run_dir / "ckpt"
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for p in sorted(root.glob(f"{STEP_PREFIX}*")):
        s = step_of(p)
        if p.is_dir() and s is not None and s > step:
            dest = root / f".abandoned-{p.name}-{stamp}"
            os.replace(p, dest)
            moved.append((p, dest))
    if moved:
        write_text(root / "latest", step_dir_name(step) + "\n")
    return moved


def _move_run_aside(run_dir: Path) -> None:
    """checkpoint.resume=restart: move checkpoints, metrics, DONE and the wandb id of this run
    directory into `run_dir/.restarted-<time>/` (kept, not deleted)."""
    names = ("ckpt", "metrics.jsonl", "DONE", "wandb_id.txt")
    present = [run_dir / n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if not present:
        return
    dest = run_dir / f".restarted-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)
    print(f"note: checkpoint.resume=restart: moved {', '.join(p.name for p in present)} to {dest}")


def restore_rank(state: dict[str, Any], loader: TokenLoader, info: dist.DistInfo) -> None:
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
