"""A run directory that describes itself (RUN_DIR/config.toml, `train.py --run.dir=RUN` alone),
what the console says while training (compile notice, first step, the interval's mean loss, the
checkpoint's size and time), and the `crashed` event of a run that stops on an error."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_train
from test_train import args_for, corpus  # noqa: F401  (the corpus fixture)

from gpt2repro.config import load_config
from gpt2repro.runs import load_run, read_metrics
from gpt2repro.train import with_run_config


def test_with_run_config_reads_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert with_run_config([f"--run.dir={run}"]) == ([f"--run.dir={run}"], None)
    run.mkdir()
    (run / "config.toml").write_text("[train]\nmax_steps = 7\n")
    for argv in ([f"--run.dir={run}"], ["--run.dir", str(run)]):
        got, saved = with_run_config([*argv, "--optim.lr=0.1"])
        assert got == ["--config", str(run / "config.toml"), *argv, "--optim.lr=0.1"]
        assert saved == run / "config.toml"
        cfg, _ = load_config(got)
        assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.1  # saved, then the flags
    other = tmp_path / "other.toml"
    other.write_text("[train]\nmax_steps = 9\n")
    given = ["--config", str(other), f"--run.dir={run}"]
    assert with_run_config(given) == (given, None)  # a --config given wins


def test_run_dir_alone_resumes_with_its_saved_settings(tmp_path: Path, corpus: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    first = run_train(args_for(corpus, run, "--train.max_steps=4", "--checkpoint.every=2"))
    saved = (run / "config.toml").read_text()
    assert "max_steps = 4" in saved and f'dir = "{corpus}"' in saved
    out = first.stdout
    assert "settings not at their defaults: " in out and "config:\n" not in out  # short header
    assert "first step: " in out
    line = next(ln for ln in out.splitlines() if ln.startswith("checkpoint: "))
    assert " GiB in " in line and line.endswith(" s)")
    records = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert all("loss_mean" in r for r in records)
    # the same command with nothing but its directory: nothing to do (the saved settings)
    again = run_train([f"--run.dir={run}"])
    assert "run already complete (4 steps" in again.stdout
    # longer, naming nothing but its directory and the new length (accepted by name, as ever)
    second = run_train(
        [f"--run.dir={run}", "--train.max_steps=6", "--checkpoint.allow_changes=train.max_steps"]
    )
    assert f"config: {run / 'config.toml'} (the run's saved settings" in second.stdout
    assert "resumed from " in second.stdout and "step 4" in second.stdout
    assert "max_steps = 6" in (run / "config.toml").read_text()
    assert load_run(run).done and load_run(run).last_step == 6


def test_a_run_that_stops_on_an_error_records_crashed(tmp_path: Path, corpus: Path) -> None:  # noqa: F811
    """The guard's stop on a non-finite loss (an error mid-run) leaves a `crashed` event with the
    error's line, which the report shows; the exit is still the one-line error."""
    run = tmp_path / "run"
    p = run_train(
        args_for(corpus, run, "--train.max_steps=6", "--guard.nonfinite=stop"),
        env={"GPT2REPRO_FAULT": "nan:3"},
        check=False,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "crashed" and last["step"] >= 2 and last["error"]
    assert load_run(run).last_event == "crashed"
