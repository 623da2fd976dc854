"""Checkpoint discovery and resume selection, in process (the training subprocess tests in
test_train.py cover the same calls end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt2repro import checkpoint, dist
from gpt2repro.config import ModelConfig, OptimConfig, to_dict
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer

MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64)


class _Loader:
    def state_dict(self) -> dict:
        return {"position": 0}


def save(run_dir: Path, step: int, model_cfg: ModelConfig = MODEL) -> Path:
    model = GPT(model_cfg)
    opt = build_optimizer(model, OptimConfig(), "cpu")
    config = full_config(model_cfg)
    return checkpoint.save(
        run_dir,
        step,
        model,
        opt,
        state={"step": step, "tokens": step * 10, "config": config},
        loader_state=_Loader().state_dict(),
        keep_last=0,
    )


def full_config(model_cfg: ModelConfig, **overrides: object) -> dict:
    """A whole config as a dict (what checkpoints store), with `section.key` overrides."""
    from gpt2repro.config import Config

    out = to_dict(Config(model=model_cfg))
    for key, value in overrides.items():
        section, name = key.split("__")
        out[section][name] = value
    return out


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


def test_select_resume_auto_returns_the_newest_with_its_state(tmp_path: Path) -> None:
    assert (
        checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL)) is None
    )
    save(tmp_path, 3)
    resume = checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000003"
    assert resume.state["step"] == 3 and resume.state["tokens"] == 30


def test_select_resume_refuses_another_model_shape(tmp_path: Path) -> None:
    save(tmp_path, 3)
    wider = full_config(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    with pytest.raises(UserError, match=r"is for another model shape: n_embd=16 \(config: 32\)"):
        checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=wider)


def test_select_resume_never_refuses_a_run_dir_with_checkpoints(tmp_path: Path) -> None:
    assert (
        checkpoint.select_resume(mode="never", run_dir=tmp_path, config=full_config(MODEL)) is None
    )
    save(tmp_path, 1)
    with pytest.raises(UserError, match="checkpoint.resume=never but"):
        checkpoint.select_resume(mode="never", run_dir=tmp_path, config=full_config(MODEL))


def test_select_resume_from_an_older_checkpoint_moves_newer_ones_aside(tmp_path: Path) -> None:
    save(tmp_path, 2)
    save(tmp_path, 4)
    older = tmp_path / "ckpt" / "step_00000002"
    resume = checkpoint.select_resume(mode=str(older), run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path == older
    assert not (tmp_path / "ckpt" / "step_00000004").exists()
    assert len(list((tmp_path / "ckpt").glob(".abandoned-step_00000004-*"))) == 1
    assert checkpoint.find_latest(tmp_path) == older


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


def zero_bytes(path: Path, start: int = 100, n: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[start : start + n] = bytes(n)
    path.write_bytes(bytes(data))


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


def test_auto_refuses_when_every_checkpoint_is_invalid_and_restart_keeps_them(
    tmp_path: Path,
) -> None:
    """It used to warn and restart from step 0 beside the corrupt checkpoint."""
    step = save(tmp_path, 2)
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n')
    zero_bytes(step / "model.pt")
    with pytest.raises(UserError) as e:
        checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    msg = str(e.value)
    assert "none is valid" in msg and "step_00000002" in msg and "sha256" in msg
    assert "--checkpoint.resume=restart" in msg and "\n" not in msg
    assert checkpoint.select_resume(mode="restart", run_dir=tmp_path, config={}) is None
    moved = list(tmp_path.glob(".restarted-*"))
    assert len(moved) == 1 and sorted(p.name for p in moved[0].iterdir()) == [
        "ckpt",
        "metrics.jsonl",
    ]
    assert not (tmp_path / "ckpt").exists()  # a fresh start, the old run kept aside


def test_auto_refuses_changed_run_settings_unless_allowed(tmp_path: Path) -> None:
    save(tmp_path, 2)
    changed = full_config(MODEL, optim__lr=3e-4, train__max_steps=99)
    with pytest.raises(UserError) as e:
        checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=changed)
    msg = str(e.value)
    assert (
        "train.max_steps=" in msg and "(now: 99)" in msg and "optim.lr=0.0006 (now: 0.0003)" in msg
    )
    assert "--checkpoint.allow_changes=train.max_steps,optim.lr" in msg
    assert "--checkpoint.resume=restart" in msg  # the way to start over, named
    with pytest.raises(UserError, match="optim.lr"):  # allowing one is not allowing both
        checkpoint.select_resume(
            mode="auto", run_dir=tmp_path, config=changed, allow_changes="train.max_steps"
        )
    resume = checkpoint.select_resume(
        mode="auto", run_dir=tmp_path, config=changed, allow_changes="train.max_steps, optim.lr"
    )
    assert resume is not None and resume.state["step"] == 2
    other_data = full_config(MODEL, data__dir="somewhere/else")
    with pytest.raises(UserError, match="data.dir="):
        checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=other_data)
    harmless = full_config(MODEL, log__every=1, eval__every=5, train__micro_batch_size=2)
    assert checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=harmless) is not None


def test_a_stale_checkpoint_write_is_removed_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save(tmp_path, 2)
    stale = tmp_path / "ckpt" / ".tmp-step_00000004"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    resume = checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000002"
    assert not stale.exists()
    assert "removed" in capsys.readouterr().out and ".tmp-step_00000004" in str(stale)


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


def test_a_kill_between_the_two_renames_of_a_same_step_save_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """publish_dir moves an existing step_N aside before renaming the new one in; killed between
    the two, step_N exists only in ckpt/.step_N.old-*/: the next start moves it back."""
    save(tmp_path, 2)
    save(tmp_path, 4)
    root = tmp_path / "ckpt"
    aside = root / ".step_00000004.old-x1y2"
    aside.mkdir()
    (root / "step_00000004").rename(aside / "step_00000004")
    unfinished = root / ".tmp-step_00000004"
    unfinished.mkdir()
    resume = checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000004"  # restored, and valid
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    assert "restored" in capsys.readouterr().out
    # killed after the second rename: the old copy is left over while step_N is in place
    stale = root / ".step_00000004.old-z9"
    stale.mkdir()
    (stale / "step_00000004").mkdir()
    resume = checkpoint.select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000004" and not stale.exists()
