"""launch/restart_until_done.sh stops at an input error even when torchrun hides its exit status 2
(torchrun reports any failed worker as 1): run_cli writes the error line to
$GPT2REPRO_INPUT_ERROR_FILE and the script stops when that file exists. A crash is still retried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

from gpt2repro.errors import INPUT_ERROR_FILE_ENV, RankFailed, UserError, run_cli

CONFIG = str(REPO / "configs" / "shakespeare.toml")


def _fails(message: str) -> Callable[[list[str]], int]:
    def main(argv: list[str]) -> int:
        raise UserError(message)

    return main


def test_run_cli_writes_the_input_error_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "input_error"
    monkeypatch.delenv(INPUT_ERROR_FILE_ENV, raising=False)
    assert run_cli(_fails("data directory x does not exist (data.dir)"), []) == 2
    assert not path.exists()  # not asked for: nothing written

    monkeypatch.setenv(INPUT_ERROR_FILE_ENV, str(path))
    assert run_cli(lambda argv: 0, []) == 0
    assert not path.exists()  # success writes nothing

    def peer_crashed(argv: list[str]) -> int:
        raise RankFailed("rank 0 failed (OSError: disk hiccup); see rank 0's output above")

    assert run_cli(peer_crashed, []) == 2
    assert not path.exists()  # another rank's crash is no input error
    assert run_cli(_fails("data directory x\ndoes not exist (data.dir)"), []) == 2
    assert path.read_text() == "error: data directory x does not exist (data.dir)\n"
    # another rank failing later leaves the first line as it is
    assert run_cli(_fails("vocab mismatch"), []) == 2
    assert path.read_text() == "error: data directory x does not exist (data.dir)\n"
    # a path that cannot be written changes nothing: still one line on stderr and status 2
    monkeypatch.setenv(INPUT_ERROR_FILE_ENV, str(tmp_path / "no such dir" / "input_error"))
    assert run_cli(_fails("bad key"), []) == 2


def restart(
    tmp_path: Path, launcher: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run restart_until_done.sh with at most 3 attempts, none apart, its temporary files in
    tmp_path/tmp (to see them removed)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "MAX_ATTEMPTS": "3",
        "DELAY": "0",
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path / "tmp"),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    full_env.pop(INPUT_ERROR_FILE_ENV, None)
    full_env.pop("DRY_RUN", None)
    cmd = ["bash", str(REPO / "launch" / "restart_until_done.sh"), launcher, "--config", CONFIG]
    cmd += [f"--run.dir={tmp_path / 'run'}", *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def attempts(p: subprocess.CompletedProcess) -> int:
    return p.stdout.count("restart_until_done: attempt ")


def fake_launcher(tmp_path: Path, body: str) -> str:
    path = tmp_path / "launcher.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_an_input_error_behind_status_1_stops_and_a_crash_is_retried(tmp_path: Path) -> None:
    # what torchrun does to a worker's input error: the worker returns 2, the launcher exits 1
    worker = (
        f"{sys.executable} -c 'import sys; from gpt2repro.errors import UserError, run_cli\n"
        'def main(argv): raise UserError("data.dir: nope")\n'
        "sys.exit(run_cli(main, []))'\n"
        "exit 1"
    )
    p = restart(tmp_path, fake_launcher(tmp_path, worker))
    assert p.returncode == 2, p.stdout + p.stderr
    assert attempts(p) == 1
    assert "error: data.dir: nope\nrestart_until_done: input error" in p.stdout
    assert list((tmp_path / "tmp").iterdir()) == []  # the error file went with the script
    # a crash (status 1, no input error) is retried up to MAX_ATTEMPTS
    p = restart(tmp_path, fake_launcher(tmp_path, "exit 1"))
    assert p.returncode == 1 and attempts(p) == 3, p.stdout + p.stderr
    assert "gave up after 3 attempts" in p.stdout


@pytest.mark.dist  # launch/single_node.sh starts torchrun
def test_missing_data_dir_under_torchrun_stops_after_one_attempt(tmp_path: Path) -> None:
    missing = tmp_path / "no data"
    p = restart(tmp_path, "launch/single_node.sh", f"--data.dir={missing}", env={"NPROC": "1"})
    assert p.returncode == 2, p.stdout + p.stderr
    assert attempts(p) == 1, p.stdout
    line = f"error: data directory {missing} does not exist (data.dir); "
    assert line in p.stderr  # the worker's own line
    (printed,) = [ln for ln in p.stdout.splitlines() if ln.startswith("error: ")]
    assert printed.startswith(line)  # and the script's, above its verdict
    # only torchrun's own log directory is left behind (torchrun does not remove it)
    left = [q.name for q in (tmp_path / "tmp").iterdir()]
    assert all(name.startswith("torchelastic_") for name in left), left


# Each rank runs two rank-0 checks through dist.on_main, each under run_cli with its own error file:
# one crashes on rank 0 (an OSError: restarting may fix it), one is an input error.
ON_MAIN_WORKER = """
import json, os, sys
from gpt2repro import dist
from gpt2repro.errors import INPUT_ERROR_FILE_ENV, UserError, run_cli

def fail(exc):
    def check():
        raise exc
    return lambda argv: dist.on_main(check)

out = sys.argv[1]
info = dist.setup("cpu", "gloo")
status = {}
for name, exc in (("crash", OSError("disk hiccup")), ("input", UserError("data.dir: nope"))):
    os.environ[INPUT_ERROR_FILE_ENV] = os.path.join(out, f"{name}.{info.rank}")
    try:
        status[name] = run_cli(fail(exc), [])
    except OSError:  # rank 0's own crash is not caught by run_cli
        status[name] = "raised"
with open(os.path.join(out, f"status.{info.rank}.json"), "w") as f:
    json.dump(status, f)
dist.teardown()
"""


@pytest.mark.dist
def test_a_crash_forwarded_by_on_main_is_not_an_input_error(tmp_path: Path) -> None:
    """Rank 0 crashing inside dist.on_main reaches rank 1 as a one-line RankFailed: no input error
    is reported, so restart_until_done.sh restarts; a UserError there is reported by every rank."""
    script = tmp_path / "worker.py"
    script.write_text(ON_MAIN_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(INPUT_ERROR_FILE_ENV, None)
    p = subprocess.run(
        [*cmd, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    status = [json.loads((tmp_path / f"status.{r}.json").read_text()) for r in (0, 1)]
    assert status == [{"crash": "raised", "input": 2}, {"crash": 2, "input": 2}]
    assert "error: rank 0 failed (OSError: disk hiccup)" in p.stderr
    assert not (tmp_path / "crash.0").exists() and not (tmp_path / "crash.1").exists()
    for r in (0, 1):
        assert (tmp_path / f"input.{r}").read_text() == "error: data.dir: nope\n"


def test_a_finished_run_still_gets_its_first_attempt(tmp_path: Path) -> None:
    """DONE from an earlier run does not stop the first attempt (a larger train.max_steps continues
    a finished run; the trainer says when there is nothing to do), and a crash of an attempt is
    retried even when DONE exists."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "DONE").write_text("{}\n")
    calls = tmp_path / "calls"
    p = restart(tmp_path, fake_launcher(tmp_path, f"echo x >> '{calls}'; exit 0"))
    assert p.returncode == 0 and attempts(p) == 1, p.stdout + p.stderr
    assert calls.read_text() == "x\n"
    p = restart(tmp_path, fake_launcher(tmp_path, f"echo y >> '{calls}'; exit 1"))
    assert p.returncode == 1 and attempts(p) == 3, p.stdout + p.stderr


@pytest.mark.dist  # launch/single_node.sh starts torchrun
def test_wandb_online_without_a_login_under_torchrun_stops_after_one_attempt(
    tmp_path: Path,
) -> None:
    """No wandb login is an input error: one attempt, not 100 (wandb's own error was a traceback
    with status 1, retried); it is found before the data or the model."""
    env = {"NPROC": "1", "NETRC": str(tmp_path / "no_netrc"), "WANDB_API_KEY": ""}
    p = restart(tmp_path, "launch/single_node.sh", "--log.wandb_mode=online", env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert attempts(p) == 1, p.stdout
    (printed,) = [ln for ln in p.stdout.splitlines() if ln.startswith("error: ")]
    assert printed.startswith("error: log.wandb_mode=online but wandb has no login here")
    assert "restart_until_done: input error" in p.stdout
    assert not (tmp_path / "run").exists()


def test_a_resume_mode_the_user_gave_is_used_once_and_said_so(tmp_path: Path) -> None:
    """`--checkpoint.resume=restart` given to the script used to be overridden by the `auto` it
    appends, without a word: the first attempt now runs the user's mode, later ones `auto`."""
    calls = tmp_path / "calls"
    launcher = fake_launcher(tmp_path, f"echo \"$*\" >> '{calls}'; exit 1")
    p = restart(tmp_path, launcher, "--checkpoint.resume=restart")
    assert p.returncode == 1 and attempts(p) == 3, p.stdout + p.stderr
    assert (
        "restart_until_done: checkpoint.resume=restart is used by the first attempt only; later "
        "attempts continue that run with --checkpoint.resume=auto"
    ) in p.stdout
    first, *later = calls.read_text().splitlines()
    assert first.endswith("--checkpoint.resume=restart")
    assert later and all(
        c.endswith("--checkpoint.resume=restart --checkpoint.resume=auto") for c in later
    )
    calls.unlink()
    p = restart(tmp_path, launcher)  # nothing given: auto throughout, nothing said
    assert "first attempt only" not in p.stdout
    assert all(c.endswith("--checkpoint.resume=auto") for c in calls.read_text().splitlines())
