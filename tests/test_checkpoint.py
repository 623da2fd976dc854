"""The checkpoint format, in process: discovery, verification, loading, failed writes (the
training subprocess tests in test_train.py cover the same calls end to end; test_resume.py the
choice of checkpoint a run continues from)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures.checkpoints import MODEL, save, zero_bytes

from gpt2repro import checkpoint, dist
from gpt2repro.config import OptimConfig
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer


def test_find_latest_goes_by_step_not_by_a_stale_latest_file(tmp_path: Path) -> None:
    save(tmp_path, 2)
    save(tmp_path, 4)
    (tmp_path / "ckpt" / "latest").write_text("step_00000002\n")  # stale after a crash
    assert checkpoint.find_latest(tmp_path) == tmp_path / "ckpt" / "step_00000004"


def test_find_latest_skips_a_corrupt_newest_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 2)
    newest = save(tmp_path, 4)
    blob = newest / "model.pt"
    data = bytearray(blob.read_bytes())
    data[100:110] = bytes(10)
    blob.write_bytes(bytes(data))
    assert checkpoint.find_latest(tmp_path) == tmp_path / "ckpt" / "step_00000002"


def test_load_into_restores_model_and_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(1)
    path = save(tmp_path, 1)
    fresh = GPT(MODEL)
    opt = build_optimizer(fresh, OptimConfig(), "cpu")
    checkpoint.load_into(fresh, opt, path)
    saved = torch.load(path / "model.pt", weights_only=True)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_on_main_and_unwrap_in_one_process() -> None:
    assert dist.on_main(lambda: 41 + 1) == 42
    with pytest.raises(UserError, match="nope"):
        dist.on_main(lambda: (_ for _ in ()).throw(UserError("nope")))
    raw = torch.nn.Linear(2, 2)
    wrapped = torch.compile(raw)
    assert dist.unwrap(wrapped) is raw and dist.unwrap(raw) is raw


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_load_model_from_a_step_dir_checks_the_file(tmp_path: Path, damage: str) -> None:
    """evaluate, sample and export load through load_model: a damaged model.pt named directly
    by its step directory is one clear error, never wrong weights or a torch traceback."""
    step = save(tmp_path, 2)
    blob = step / "model.pt"
    if damage == "zeroed":
        zero_bytes(blob)
    else:
        blob.write_bytes(blob.read_bytes()[:-500])
    with pytest.raises(UserError, match=r"model.pt does not match its recorded sha256"):
        checkpoint.load_model(step)


def test_load_model_reports_an_unreadable_file_in_one_line(tmp_path: Path) -> None:
    step = save(tmp_path, 2)
    state = checkpoint.read_state(step)
    (step / "model.pt").write_bytes(b"not a torch file")
    state["sha256"].pop("model.pt")  # a checkpoint without a recorded hash for it
    (step / "state.json").write_text(__import__("json").dumps(state))
    with pytest.raises(UserError, match=r"model.pt cannot be read \("):
        checkpoint.load_model(step)


def tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("where", ["run_dir", "step_dir", "parent"])
def test_export_overwrite_never_touches_a_run(tmp_path: Path, where: str) -> None:
    from gpt2repro.errors import run_cli
    from gpt2repro.export import main

    run_dir = tmp_path / "run"
    step = save(run_dir, 2)
    (run_dir / "metrics.jsonl").write_text('{"step": 2}\n')
    (run_dir / "DONE").write_text("{}\n")
    out = {"run_dir": run_dir, "step_dir": step, "parent": tmp_path}[where]
    before = tree_digest(tmp_path)
    status = run_cli(main, ["--checkpoint", str(run_dir), "--out", str(out), "--overwrite"])
    assert status == 2
    assert tree_digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("inside", ["hf", "ckpt/step_00000002/hf", "notes/exports/a"])
def test_an_export_never_lands_inside_a_run(
    tmp_path: Path, inside: str, capsys: pytest.CaptureFixture
) -> None:
    """An export in RUN_DIR/ckpt/step_N/ was accepted, then deleted with that step by pruning;
    anywhere under a directory that holds ckpt/ training may prune or move it."""
    from gpt2repro.errors import run_cli
    from gpt2repro.export import main

    run_dir = tmp_path / "run"
    save(run_dir, 2)
    (run_dir / "notes").mkdir()
    before = tree_digest(tmp_path)
    out = run_dir / inside
    assert run_cli(main, ["--checkpoint", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"run directory {run_dir} (it holds ckpt/)" in err, err
    assert tree_digest(tmp_path) == before and not (run_dir / "hf").exists()
    other = tmp_path / "exports" / "run"  # beside the run: fine
    assert run_cli(main, ["--checkpoint", str(run_dir), "--out", str(other)]) == 0
    assert (other / "config.json").is_file()


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES"])
def test_a_failed_checkpoint_write_is_one_line_and_leaves_the_previous_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_name: str
) -> None:
    import errno
    import os

    save(tmp_path, 2)
    calls = []

    def full_disk(obj: object, path: Path) -> str:
        calls.append(path)
        path.write_bytes(b"partial")
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(checkpoint, "_save_hashed", full_disk)
    with pytest.raises(UserError) as e:
        save(tmp_path, 4)
    msg = str(e.value)
    assert calls and "\n" not in msg
    assert "cannot write checkpoint" in msg and "step_00000004" in msg
    assert "step_00000002 is intact and the run resumes from it" in msg
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step_00000002"]
    assert checkpoint.find_latest(tmp_path) == tmp_path / "ckpt" / "step_00000002"
