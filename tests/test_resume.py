"""Which checkpoint a run continues from and what may change, in process (the training
subprocess tests in test_train.py cover the same calls end to end)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.checkpoints import MODEL, full_config, save, zero_bytes

from gpt2repro import checkpoint
from gpt2repro.config import ModelConfig, OptimConfig
from gpt2repro.data import data_fingerprint, write_shard
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer
from gpt2repro.resume import select_resume


def test_select_resume_auto_returns_the_newest_with_its_state(tmp_path: Path) -> None:
    assert select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL)) is None
    save(tmp_path, 3)
    resume = select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000003"
    assert resume.state["step"] == 3 and resume.state["tokens"] == 30


def test_select_resume_refuses_another_model_shape(tmp_path: Path) -> None:
    save(tmp_path, 3)
    wider = full_config(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    with pytest.raises(UserError, match=r"is for another model shape: n_embd=16 \(config: 32\)"):
        select_resume(mode="auto", run_dir=tmp_path, config=wider)


def test_select_resume_never_refuses_a_run_dir_with_checkpoints(tmp_path: Path) -> None:
    assert select_resume(mode="never", run_dir=tmp_path, config=full_config(MODEL)) is None
    save(tmp_path, 1)
    with pytest.raises(UserError, match="checkpoint.resume=never but"):
        select_resume(mode="never", run_dir=tmp_path, config=full_config(MODEL))


def test_select_resume_from_an_older_checkpoint_moves_newer_ones_aside(tmp_path: Path) -> None:
    save(tmp_path, 2)
    save(tmp_path, 4)
    older = tmp_path / "ckpt" / "step_00000002"
    resume = select_resume(mode=str(older), run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path == older
    assert not (tmp_path / "ckpt" / "step_00000004").exists()
    assert len(list((tmp_path / "ckpt").glob(".abandoned-step_00000004-*"))) == 1
    assert checkpoint.find_latest(tmp_path) == older


def test_auto_refuses_when_every_checkpoint_is_invalid_and_restart_keeps_them(
    tmp_path: Path,
) -> None:
    """It used to warn and restart from step 0 beside the corrupt checkpoint."""
    step = save(tmp_path, 2)
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n')
    zero_bytes(step / "model.pt")
    with pytest.raises(UserError) as e:
        select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    msg = str(e.value)
    assert "none is valid" in msg and "step_00000002" in msg and "sha256" in msg
    assert "--checkpoint.resume=restart" in msg and "\n" not in msg
    assert select_resume(mode="restart", run_dir=tmp_path, config={}) is None
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
        select_resume(mode="auto", run_dir=tmp_path, config=changed)
    msg = str(e.value)
    assert (
        "train.max_steps=" in msg and "(now: 99)" in msg and "optim.lr=0.0006 (now: 0.0003)" in msg
    )
    assert "--checkpoint.allow_changes=train.max_steps,optim.lr" in msg
    assert "--checkpoint.resume=restart" in msg  # the way to start over, named
    with pytest.raises(UserError, match="optim.lr"):  # allowing one is not allowing both
        select_resume(
            mode="auto", run_dir=tmp_path, config=changed, allow_changes="train.max_steps"
        )
    resume = select_resume(
        mode="auto", run_dir=tmp_path, config=changed, allow_changes="train.max_steps, optim.lr"
    )
    assert resume is not None and resume.state["step"] == 2
    other_data = full_config(MODEL, data__dir="somewhere/else")
    with pytest.raises(UserError, match="data.dir="):
        select_resume(mode="auto", run_dir=tmp_path, config=other_data)
    harmless = full_config(MODEL, log__every=1, eval__every=5, train__micro_batch_size=2)
    assert select_resume(mode="auto", run_dir=tmp_path, config=harmless) is not None


def test_a_stale_checkpoint_write_is_removed_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save(tmp_path, 2)
    stale = tmp_path / "ckpt" / ".tmp-step_00000004"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    resume = select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000002"
    assert not stale.exists()
    assert "removed" in capsys.readouterr().out and ".tmp-step_00000004" in str(stale)


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
    resume = select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000004"  # restored, and valid
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    assert "restored" in capsys.readouterr().out
    # killed after the second rename: the old copy is left over while step_N is in place
    stale = root / ".step_00000004.old-z9"
    stale.mkdir()
    (stale / "step_00000004").mkdir()
    resume = select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.path.name == "step_00000004" and not stale.exists()


def test_speed_switches_may_change_on_resume(tmp_path: Path) -> None:
    """The attention kernel, the compile mode and FSDP's gathering between micro-steps change
    speed and memory, not the optimization: a resumed run may change them without asking."""
    save(tmp_path, 2)
    faster = full_config(
        MODEL,
        train__attention_backend="cudnn",
        train__compile_mode="max-autotune-no-cudagraphs",
        dist__fsdp_keep_unsharded=True,
    )
    assert select_resume(mode="auto", run_dir=tmp_path, config=faster) is not None


def _data_dir(d: Path, seed: int) -> Path:
    """Two shards as data prep names them; `seed` picks their tokens (same names and sizes)."""
    d.mkdir(parents=True)
    toks = np.random.default_rng(seed).integers(0, 64, size=3000, dtype=np.uint16)
    write_shard(d / "t_val_000000.bin", toks[:1000])
    write_shard(d / "t_train_000001.bin", toks[1000:])
    return d


def _save_with_data(run_dir: Path, data_dir: Path) -> None:
    """A checkpoint as training now saves it: with its data's fingerprint."""
    model = GPT(MODEL)
    checkpoint.save(
        run_dir,
        2,
        model,
        build_optimizer(model, OptimConfig(), "cpu"),
        state={
            "step": 2,
            "tokens": 20,
            "config": full_config(MODEL, data__dir=str(data_dir)),
            "data_fingerprint": data_fingerprint(data_dir),
        },
        loader_state={"position": 0},
        keep_last=0,
    )


def test_resume_compares_the_data_by_content_not_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = _data_dir(tmp_path / "data", seed=0)
    _save_with_data(tmp_path / "run", data)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(data)
    for spelling in ("data", "./data/", str(data), "link", str(tmp_path / "link")):
        config = full_config(MODEL, data__dir=spelling)
        resume = select_resume(mode="auto", run_dir=tmp_path / "run", config=config)
        assert resume is not None and "predates" not in capsys.readouterr().out
    # other data under the same names, in another directory or copied over the same one
    other = _data_dir(tmp_path / "other", seed=1)
    for where in (other, data):
        if where == data:
            shutil.copy(other / "t_train_000001.bin", data / "t_train_000001.bin")
        with pytest.raises(UserError) as e:
            select_resume(
                mode="auto",
                run_dir=tmp_path / "run",
                config=full_config(MODEL, data__dir=str(where)),
            )
        msg = str(e.value)
        assert "shard t_train_000001.bin holds other tokens" in msg and "\n" not in msg
        assert "--checkpoint.allow_changes=data.dir" in msg


def test_an_old_checkpoint_without_a_fingerprint_compares_the_path_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save(tmp_path, 2)  # no data_fingerprint in its state
    assert select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL)) is not None
    assert "predates data fingerprints: data.dir is compared by its path" in capsys.readouterr().out
    with pytest.raises(UserError, match="data.dir="):
        select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL, data__dir="else"))
