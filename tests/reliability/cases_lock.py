"""Bad-input cases: one job per run directory, no silent restart, resume refusals (the table is test_bad_inputs.py).

Each training case has a run directory of its own: the table runs two cases at a time, and two
on one run directory would meet its lock. A run directory held by a live job is tested in
process (tests/test_lock.py): a table world holds no running process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from badinput import EVALUATE, FINEWEB, SAMPLE, TINY, TRAIN, TRAIN_M, Case

TRAIN_RECORDS = "".join(
    json.dumps({"step": s, "loss": 5.0, "lr": 6e-4, "tokens": 256 * s}) + "\n" for s in (1, 2)
)


def build(w: Path) -> None:
    """The files these cases need, made in the world directory `w` before any case runs."""
    (w / "lk_loop").symlink_to(w / "lk_loop")  # a symbolic-link loop
    (w / "lk_dangling").symlink_to(w / "lk_unmounted")  # storage not mounted
    start = json.dumps({"event": "start", "step": 0, "tokens": 0}) + "\n"
    # a finished run whose ckpt/ was moved away
    (w / "lk_done").mkdir()
    (w / "lk_done" / "DONE").write_text('{"step": 2, "tokens": 512}\n')
    (w / "lk_done" / "metrics.jsonl").write_text(start + TRAIN_RECORDS)
    # a run that trained (metrics) and was killed before its first checkpoint landed
    (w / "lk_trained").mkdir()
    (w / "lk_trained" / "metrics.jsonl").write_text(start + TRAIN_RECORDS)
    # a run whose ckpt is a link to storage that is not mounted
    (w / "lk_link").mkdir()
    (w / "lk_link" / "ckpt").symlink_to(w / "lk_gone")
    # copies of the finished run (test_bad_inputs.build_world), one per case that resumes it
    for name in ("lk_seq_len", "lk_newer"):
        shutil.copytree(w / "run", w / name)
    state = next((w / "lk_newer" / "ckpt").glob("step_*")) / "state.json"
    saved = json.loads(state.read_text())
    saved["format_version"] = 99  # written by a later gpt2repro
    state.write_text(json.dumps(saved))


def cases() -> list[Case]:
    data = "--data.dir={w}/data"
    newer = "written by a newer gpt2repro (format 99"
    no_ckpt = "no checkpoint to continue from"
    return [
        # ---- --checkpoint.resume and --checkpoint.allow_changes (before the run dir is touched)
        Case("lock-resume-mode-typo", [*TRAIN, *TINY, data, "--run.dir={w}/lk_r1", "--checkpoint.resume=atuo"], ["--checkpoint.resume=atuo", "auto, never or restart"]),
        Case("lock-resume-path-missing", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_r2", "--checkpoint.resume={w}/nope/ckpt"], ["--checkpoint.resume={w}/nope/ckpt", "neither a mode"]),
        Case("lock-allow-changes-seed", [*TRAIN, *TINY, data, "--run.dir={w}/lk_r3", "--train.seed=7", "--checkpoint.allow_changes=train.seed"], ["--checkpoint.allow_changes=train.seed", "cannot change on resume"]),
        Case("lock-allow-changes-seq-len", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_r4", "--checkpoint.allow_changes=optim.lr,train.seq_len"], ["--checkpoint.allow_changes=train.seq_len", "cannot change on resume"]),
        Case("lock-allow-changes-unknown", [*TRAIN, *TINY, data, "--run.dir={w}/lk_r5", "--checkpoint.allow_changes=optim.lrr"], ["--checkpoint.allow_changes=optim.lrr", "optim.lr"]),
        # ---- --run.dir that cannot be a directory
        Case("lock-run-dir-is-a-file", [*TRAIN, *TINY, data, "--run.dir={w}/afile"], ["--run.dir {w}/afile is a file, not a directory"]),
        Case("lock-run-dir-symlink-loop", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_loop"], ["--run.dir {w}/lk_loop is a symbolic link loop"]),
        Case("lock-run-dir-under-a-loop", [*TRAIN, *TINY, data, "--run.dir={w}/lk_loop/run"], ["--run.dir {w}/lk_loop/run", "symbolic link loop"]),
        Case("lock-run-dir-dangling-link", [*TRAIN, *TINY, data, "--run.dir={w}/lk_dangling"], ["--run.dir {w}/lk_dangling", "points to {w}/lk_unmounted, which does not exist"]),
        Case("lock-run-dir-under-a-dangling-link", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_dangling/run"], ["--run.dir {w}/lk_dangling/run", "points to {w}/lk_unmounted, which does not exist"]),
        # ---- no silent restart
        Case("lock-done-run-ckpt-moved-away", [*TRAIN, *TINY, data, "--run.dir={w}/lk_done"], ["DONE (a finished run)", no_ckpt, "--checkpoint.resume=restart", "--checkpoint.resume=never"]),
        Case("lock-trained-run-no-checkpoint", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_trained"], ["train records up to step 2", no_ckpt, "--checkpoint.resume=restart"]),
        Case("lock-ckpt-link-points-nowhere", [*TRAIN, *TINY, data, "--run.dir={w}/lk_link"], ["ckpt, which is a link to {w}/lk_gone, which does not exist", "--checkpoint.resume=restart"]),
        Case("lock-never-ckpt-link-points-nowhere", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_link", "--checkpoint.resume=never"], ["{w}/lk_link/ckpt is a link to {w}/lk_gone", "no checkpoint can be written"]),
        # ---- resume refusals
        Case("lock-seq-len-differs-from-the-checkpoint", [*TRAIN, *TINY, data, "--run.dir={w}/lk_seq_len"], ["train.seq_len=1024 (now: 32)", "cannot change on resume", "--checkpoint.resume=restart"]),
        Case("lock-newer-checkpoint-format", [*TRAIN_M, *TINY, data, "--run.dir={w}/lk_newer"], [newer, "update gpt2repro"]),
        Case("lock-evaluate-newer-checkpoint-format", [*EVALUATE, "--checkpoint", "{w}/lk_newer", "--val-data", "{w}/data", "--val-tokens", "256", "--device", "cpu"], [newer]),
        Case("lock-sample-newer-checkpoint-format", [*SAMPLE, "--checkpoint", "{w}/lk_newer", "--prompt", ""], [newer]),
        # ---- data prep's --out-dir
        Case("lock-prep-out-dir-symlink-loop", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/lk_loop"], ["--out-dir {w}/lk_loop", "symbolic link loop"]),
        Case("lock-prep-out-dir-dangling-link", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/lk_dangling"], ["--out-dir {w}/lk_dangling", "points to {w}/lk_unmounted"]),
    ]  # fmt: skip
