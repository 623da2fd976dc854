"""Which checkpoint a run continues from and what may change, in process (the training
subprocess tests in test_train.py cover the same calls end to end)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SHAPE, run_train
from fixtures.checkpoints import MODEL, full_config, save, zero_bytes

from gpt2repro import checkpoint
from gpt2repro.config import Config, ModelConfig, OptimConfig
from gpt2repro.data import data_fingerprint, write_shard
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer
from gpt2repro.resume import check_resume_flags, select_resume


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


# --------------------------------------------------------------------------- no silent restart


@pytest.mark.parametrize("sign", ["DONE", "metrics", "dangling-ckpt"])
def test_a_run_that_happened_without_a_checkpoint_is_not_restarted_silently(
    tmp_path: Path, sign: str
) -> None:
    """A finished run whose ckpt/ was moved away (or whose ckpt link points at storage that is
    not mounted) used to train again from step 0 under `auto`; it is refused, naming the two
    ways to ask for it, and `restart` still moves the old run aside."""
    config = full_config(MODEL)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"event": "start", "step": 0, "tokens": 0}\n')
    assert select_resume(mode="auto", run_dir=run, config=config) is None  # nothing trained yet
    if sign == "DONE":
        (run / "DONE").write_text('{"step": 2, "tokens": 20}\n')
        needle = "DONE (a finished run)"
    elif sign == "metrics":
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 10, "loss": 5.0, "lr": 0.001}\n{"step": 20, "loss": 4.0}\n')
        needle = "metrics.jsonl with train records up to step 20"
    else:
        (run / "ckpt").symlink_to(tmp_path / "unmounted")
        needle = f"ckpt, which is a link to {tmp_path / 'unmounted'}, which does not exist"
    with pytest.raises(UserError) as e:
        select_resume(mode="auto", run_dir=run, config=config)
    msg = str(e.value)
    assert needle in msg and "no checkpoint to continue from" in msg and "\n" not in msg
    assert "--checkpoint.resume=restart" in msg and "--checkpoint.resume=never" in msg
    assert select_resume(mode="restart", run_dir=run, config=config) is None
    (aside,) = run.glob(".restarted-*")
    assert "metrics.jsonl" in {p.name for p in aside.iterdir()}
    assert not (run / "ckpt").is_symlink()  # a dangling link is moved aside too
    assert select_resume(mode="auto", run_dir=run, config=config) is None  # now a fresh start


def test_a_run_that_stopped_before_its_first_checkpoint_starts_again_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Killed at step 20 of a run that checkpoints every 50 steps: there was nothing to keep, so
    `auto` (the restart loop's next attempt) starts from step 0 again, saying so. Past step 50,
    or after a resume, its checkpoints existed: refused."""
    config = full_config(MODEL)
    start = {"event": "start", "step": 0, "tokens": 0, "config": full_config(MODEL)}
    start["config"]["checkpoint"]["every"] = 50
    records = [start, {"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert select_resume(mode="auto", run_dir=tmp_path, config=config) is None
    out = capsys.readouterr().out
    assert "holds train records up to step 20 of a run that stopped before its first" in out
    assert "checkpoint.every=50" in out and "starting again from step 0" in out
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "start", "step": 0, "tokens": 0}\n')
        f.write(json.dumps(start) + "\n" + '{"step": 50, "loss": 3.0}\n')
    with pytest.raises(UserError, match=r"up to step 50, past its first checkpoint \(checkpoint"):
        select_resume(mode="auto", run_dir=tmp_path, config=config)
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps(start) + "\n" + '{"event": "resume", "step": 100, "tokens": 0}\n'
    )
    with pytest.raises(UserError, match="metrics.jsonl with a resume event"):
        select_resume(mode="auto", run_dir=tmp_path, config=config)


def test_never_refuses_a_ckpt_link_that_points_nowhere(tmp_path: Path) -> None:
    (tmp_path / "ckpt").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"ckpt is a link to .*gone, which does not exist"):
        select_resume(mode="never", run_dir=tmp_path, config=full_config(MODEL))


# --------------------------------------------------------------------------- no silent change


def test_measured_settings_are_noted_and_returned_for_the_resume_event(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save(tmp_path, 2)
    config = full_config(MODEL, eval__val_tokens=4096, train__dtype="float32", train__compile=True)
    resume = select_resume(mode="auto", run_dir=tmp_path, config=config)
    assert resume is not None
    assert resume.changed == {
        "eval.val_tokens": {"was": 10485760, "now": 4096},
        "train.dtype": {"was": "auto", "now": "float32"},
        "train.compile": {"was": None, "now": True},
    }
    note = capsys.readouterr().out
    assert "note: continuing from step_00000002 with changed settings: " in note
    assert "eval.val_tokens=10485760 (now: 4096)" in note and "train.dtype=auto" in note
    # an allowed run-defining change is marked as well; nothing changed: nothing marked
    more = full_config(MODEL, train__max_steps=99)
    resume = select_resume(
        mode="auto", run_dir=tmp_path, config=more, allow_changes="train.max_steps"
    )
    assert resume is not None and resume.changed == {
        "train.max_steps": {"was": Config().train.max_steps, "now": 99}
    }
    resume = select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL))
    assert resume is not None and resume.changed == {}


def test_the_optimizer_cannot_change_on_resume(tmp_path: Path) -> None:
    """AdamW's moments cannot become Muon's momentum: allowing optim.name used to end in a raw
    KeyError from the state-dict loader."""
    save(tmp_path, 2)
    for mode in ("auto", str(tmp_path)):
        with pytest.raises(UserError) as e:
            select_resume(
                mode=mode, run_dir=tmp_path, config=full_config(MODEL, optim__name="muon"),
                allow_changes="optim.name",
            )  # fmt: skip
        msg = str(e.value)
        assert "optim.name=adamw (now: muon)" in msg and "optim.name cannot change" in msg
        assert "optimizer state" in msg and "loader" not in msg
    with pytest.raises(UserError, match=r"optim.name cannot change on resume \(the optimizer"):
        check_resume_flags("auto", "optim.name")


def test_seq_len_and_seed_are_named_as_unchangeable(tmp_path: Path) -> None:
    save(tmp_path, 2)
    for key, value in (("train__seq_len", 8), ("train__seed", 7)):
        name = key.replace("__", ".")
        for mode in ("auto", str(tmp_path)):  # a deliberate branch cannot change them either
            with pytest.raises(UserError) as e:
                select_resume(
                    mode=mode, run_dir=tmp_path, config=full_config(MODEL, **{key: value}),
                    allow_changes=name,
                )  # fmt: skip
            msg = str(e.value)
            assert f"{name} cannot change on resume" in msg and "loader" in msg
            assert "allow_changes" not in msg  # no advice that cannot work
    with pytest.raises(UserError, match="train.seed cannot change on resume"):
        check_resume_flags("auto", "train.max_steps,train.seed")
    with pytest.raises(UserError, match=r"allow_changes=optim.lrr: not a setting .* optim.lr"):
        check_resume_flags("auto", "optim.lrr")
    check_resume_flags("auto", "train.max_steps, optim.lr")
    check_resume_flags(str(tmp_path), "")


def test_a_misspelt_resume_mode_names_the_modes(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        check_resume_flags("atuo", "")
    msg = str(e.value)
    assert "--checkpoint.resume=atuo is neither a mode nor an existing checkpoint path" in msg
    assert "auto, never or restart, or the path of a checkpoint" in msg


def test_a_checkpoint_of_a_newer_format_is_not_damaged_and_not_skipped(tmp_path: Path) -> None:
    save(tmp_path, 2)
    newer = save(tmp_path, 4)
    state = json.loads((newer / "state.json").read_text())
    state["format_version"] = checkpoint.FORMAT_VERSION + 1
    (newer / "state.json").write_text(json.dumps(state))
    version = checkpoint.FORMAT_VERSION + 1
    for call in (
        lambda: checkpoint.read_state(newer),
        lambda: checkpoint.find_latest(tmp_path),  # not skipped for step 2 (then pruned)
        lambda: select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL)),
    ):
        with pytest.raises(UserError) as e:  # checkpoint.NewerFormat (dist.on_main: its message)
            call()
        msg = str(e.value)
        assert f"written by a newer gpt2repro (format {version}" in msg
        assert "delete" not in msg and "update gpt2repro" in msg


def test_a_resume_with_changed_measured_settings_marks_metrics_and_says_so(tmp_path: Path) -> None:
    """End to end: the resume line names the change and metrics.jsonl's resume event carries
    `changed`, so a report can show where the validation numbers' meaning changed."""
    toks = np.random.default_rng(0).integers(0, 500, size=6000, dtype=np.uint16)
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "t_val_000000.bin", toks[:2000])
    write_shard(tmp_path / "data" / "t_train_000001.bin", toks[2000:])
    args = [*TINY_SHAPE, f"--data.dir={tmp_path / 'data'}", f"--run.dir={tmp_path / 'run'}"]
    args += ["--eval.every=2", "--eval.val_tokens=512"]
    run_train([*args, "--train.max_steps=2"])
    p = run_train(
        [*args, "--train.max_steps=4", "--checkpoint.allow_changes=train.max_steps",
         "--eval.val_tokens=1024"]
    )  # fmt: skip
    assert "changed since that checkpoint: train.max_steps 2 -> 4, eval.val_tokens 512 -> 1024" in (
        p.stdout
    )
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    events = [r for r in map(json.loads, lines) if r.get("event") in ("start", "resume")]
    assert [e["event"] for e in events] == ["start", "resume"] and "changed" not in events[0]
    assert events[1]["changed"] == {
        "train.max_steps": {"was": 2, "now": 4},
        "eval.val_tokens": {"was": 512, "now": 1024},
    }
