"""wandb in offline mode: a run writes its id and an offline run directory; a resume keeps the id.
wandb failing: no login is refused before training; no route or a failing call never costs the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_train
from test_train import args_for, run

from gpt2repro import services
from gpt2repro.errors import UserError
from gpt2repro.metrics import WandbLogger
from gpt2repro.runs import train_losses
from gpt2repro.services import wandb_problem

pytest.importorskip("wandb")

corpus = test_train.corpus  # the module-scoped shard fixture


def _run_offline(corpus: Path, rd: Path, tmp: Path, max_steps: int) -> subprocess.CompletedProcess:
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        # keep wandb's own settings and caches out of the home directory
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
    }
    args = args_for(
        corpus,
        rd,
        f"--train.max_steps={max_steps}",
        "--checkpoint.every=0",
        "--log.wandb_mode=offline",
        "--checkpoint.allow_changes=train.max_steps",  # the resume runs the same run longer
    )
    p = run(args, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _offline_dirs(rd: Path) -> list[Path]:
    return sorted(p for p in (rd / "wandb").glob("offline-run-*") if p.is_dir())


def test_offline_run_keeps_its_id_across_a_resume(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    _run_offline(corpus, rd, tmp_path, max_steps=3)
    run_id = (rd / "wandb_id.txt").read_text().strip()
    assert run_id and run_id.isalnum()
    (first,) = _offline_dirs(rd)
    assert first.name.endswith("-" + run_id)
    data = first / f"run-{run_id}.wandb"
    assert data.is_file() and data.stat().st_size > 0

    p = _run_offline(corpus, rd, tmp_path, max_steps=5)  # same run dir, longer: a resume
    assert "resumed from" in p.stdout and "at step 3" in p.stdout
    assert (rd / "wandb_id.txt").read_text().strip() == run_id
    dirs = _offline_dirs(rd)
    assert len(dirs) == 2 and first in dirs
    assert all(d.name.endswith("-" + run_id) for d in dirs)
    assert sorted(train_losses(rd / "metrics.jsonl")) == [1, 2, 3, 4, 5]


def test_disabled_mode_writes_no_wandb_files(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    run(args_for(corpus, rd, "--train.max_steps=2", "--checkpoint.every=0"))
    assert not (rd / "wandb_id.txt").exists() and not (rd / "wandb").exists()


# --------------------------------------------------------------------------- services failing


def _no_login_env(tmp: Path) -> dict[str, str]:
    """A home without wandb's key: no WANDB_API_KEY, no netrc; wandb's files in `tmp`."""
    return {
        "HOME": str(tmp / "home"),
        "NETRC": str(tmp / "home" / ".netrc"),
        "WANDB_API_KEY": "",
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_SILENT": "true",
    }


def test_the_login_is_found_where_wandb_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _no_login_env(tmp_path)
    (tmp_path / "home").mkdir()
    problem = wandb_problem("online", env)
    assert problem is not None and "\n" not in problem
    assert "wandb login" in problem and "--log.wandb_mode=offline" in problem
    assert "api.wandb.ai" in problem and str(tmp_path / "home" / ".netrc") in problem
    assert wandb_problem("offline", env) is None
    assert wandb_problem("disabled", env) is None
    assert wandb_problem("online", {**env, "WANDB_API_KEY": "k" * 40}) is None
    netrc_file = tmp_path / "home" / ".netrc"
    netrc_file.write_text("machine example.org login user password x\n")  # another host only
    assert wandb_problem("online", env) is not None
    netrc_file.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_problem("online", env) is None  # what `wandb login` writes
    on_prem = {**env, "WANDB_BASE_URL": "https://wandb.example.org"}
    assert "wandb.example.org" in str(wandb_problem("online", on_prem))
    netrc_file.write_text("machine api.wandb.ai frobnicate x\n")  # not netrc syntax
    assert "unreadable" in str(wandb_problem("online", env))
    # the package missing: found at start-up too, online or offline
    monkeypatch.setattr(services.importlib.util, "find_spec", lambda name, *a: None)
    for mode in ("online", "offline"):
        assert f"log.wandb_mode={mode} needs wandb: pip install" in str(wandb_problem(mode, env))
    assert wandb_problem("disabled", env) is None


def test_online_without_a_login_is_refused_in_one_line_before_training(
    corpus: Path, tmp_path: Path
) -> None:
    rd = tmp_path / "run"
    err = tmp_path / "input_error"
    env = {**_no_login_env(tmp_path), "GPT2REPRO_INPUT_ERROR_FILE": str(err)}
    (tmp_path / "home").mkdir()
    p = run(args_for(corpus, rd, "--log.wandb_mode=online"), env=env, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr  # an input error: restart_until_done.sh does not retry it
    assert len(lines) == 1 and lines[0].startswith("error: log.wandb_mode=online"), p.stderr
    assert "`wandb login`" in lines[0] and "--log.wandb_mode=offline" in lines[0]
    assert "model:" not in p.stdout  # refused before the model was built
    assert not rd.exists()
    assert err.read_text().strip() == lines[0]


def test_the_services_cli_checks_the_login(tmp_path: Path) -> None:
    env = {**os.environ, **_no_login_env(tmp_path)}
    cmd = [sys.executable, "-m", "gpt2repro.services", "wandb-login"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: log.wandb_mode=online")
    p = subprocess.run(
        cmd, env={**env, "WANDB_API_KEY": "k" * 40}, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr


class _FakeRun:
    """A wandb run whose log raises from the `fail_at`-th call on; counts the calls."""

    def __init__(self, mode: str, fail_at: int = 10**9) -> None:
        self.mode, self.fail_at, self.logged, self.finished = mode, fail_at, 0, False

    def log(self, data: dict, step: int) -> None:
        self.logged += 1
        if self.logged >= self.fail_at:
            raise OSError("wandb-core went away")

    def finish(self) -> None:
        self.finished = True


def _fake_init(monkeypatch: pytest.MonkeyPatch, failures: dict[str, Exception]) -> list[str]:
    """wandb.init that raises failures[mode], else returns a _FakeRun; returns the modes asked."""
    import wandb

    modes: list[str] = []

    def init(mode: str, **kwargs: object) -> _FakeRun:
        modes.append(mode)
        assert kwargs["id"] and kwargs["resume"] == "allow"
        if mode in failures:
            raise failures[mode]
        return _FakeRun(mode)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: None)
    return modes


def test_wandb_unreachable_at_start_warns_once_and_logs_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import wandb

    modes = _fake_init(monkeypatch, {"online": wandb.errors.CommError("timed out")})
    w = WandbLogger("online", "p", "n", tmp_path, {}, enabled=True, init_timeout_s=5)
    assert modes == ["online", "offline"] and w.run is not None and w.run.mode == "offline"
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "log.wandb_init_timeout_s=5" in out
    assert "wandb sync" in out and "\n" not in out.strip()

    # offline failing too: one more warning, and the run goes on without wandb
    modes = _fake_init(monkeypatch, {"online": OSError("no route"), "offline": OSError("disk")})
    w = WandbLogger("online", "p", "n", tmp_path, {}, enabled=True)
    assert modes == ["online", "offline"] and w.run is None
    assert capsys.readouterr().out.count("warning:") == 2
    w.log({"step": 1, "loss": 1.0})  # no-ops
    w.finish()


@pytest.mark.parametrize("how", ["sdk", "server"])
def test_a_login_wandb_refuses_is_an_input_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """Refused by wandb's own check, or by the server (wandb-core's CommError with the 401 in
    its text, as a server that answers 401 gives): one line, not a fall back to offline."""
    import wandb

    error = (
        wandb.errors.AuthenticationError("API key must have 40+ characters, has 5")
        if how == "sdk"
        else wandb.errors.CommError(
            "Failed to get resume status for run 7d243f48: returned error 401: "
            '{"data":null,"errors":[{"message":"user is not logged in"}]}'
        )
    )
    modes = _fake_init(monkeypatch, {"online": error})
    with pytest.raises(UserError, match="wandb login --relogin") as e:
        WandbLogger("online", "p", "n", tmp_path, {}, enabled=True)
    assert "--log.wandb_mode=offline" in str(e.value) and "\n" not in str(e.value)
    assert modes == ["online"]  # no offline run that would hide the key to fix


def test_a_failing_wandb_call_warns_once_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _fake_init(monkeypatch, {})
    w = WandbLogger("online", "p", "n", tmp_path, {}, enabled=True)
    run_ = w.run
    assert isinstance(run_, _FakeRun)
    run_.fail_at = 2
    w.log({"step": 1, "loss": 1.0})
    w.log({"step": 2, "loss": 1.0})  # raises inside: a warning
    w.log({"step": 3, "loss": 1.0})
    w.log_sample(3, "text")
    w.finish()
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "at step 2" in out and "OSError" in out
    assert run_.logged == 2 and w.run is None


def test_wandb_unreachable_costs_the_run_nothing(corpus: Path, tmp_path: Path) -> None:
    """A real wandb client, a key, and a server that refuses connections: the run trains, warns
    once, logs offline, and finishes, within the configured timeout (not wandb's 90 s)."""
    rd = tmp_path / "run"
    env = {
        **_no_login_env(tmp_path),
        "WANDB_API_KEY": "k" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # the discard port: nothing listens
    }
    args = args_for(
        corpus, rd, "--train.max_steps=2", "--log.wandb_mode=online", "--log.wandb_init_timeout_s=2"
    )
    t0 = time.monotonic()
    p = run(args, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert p.stdout.count("warning: wandb did not start within") == 1, p.stdout[-3000:]
    assert _offline_dirs(rd) and (rd / "DONE").exists()
    assert sorted(train_losses(rd / "metrics.jsonl")) == [1, 2]
