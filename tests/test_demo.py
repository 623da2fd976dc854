"""`make demo`'s portable settings (bf16 + torch.compile only where they pay and work), and both
recipes' demos end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2repro import demo, precision
from gpt2repro.config import load_config
from gpt2repro.data import write_shard
from gpt2repro.runs import load_run, tokens_to


@pytest.mark.parametrize(
    ("device", "bf16_units", "compiler", "expect"),
    [
        ("cuda", False, False, []),
        ("cpu", True, True, []),
        ("cpu", False, True, ["--train.dtype=float32", "--train.compile=false"]),
        ("cpu", True, False, ["--train.compile=false"]),
        ("mps", True, True, ["--train.compile=false"]),
    ],
)
def test_portable_overrides(
    monkeypatch: pytest.MonkeyPatch, device: str, bf16_units: bool, compiler: bool, expect: list
) -> None:
    monkeypatch.setattr("gpt2repro.dist.pick_device", lambda option: torch.device(device))
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: bf16_units)
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/c++" if compiler else None)
    monkeypatch.delenv("CXX", raising=False)
    overrides, why = demo.portable_overrides("auto")
    assert overrides == expect
    assert bool(why) == bool(expect)  # a fallback always says why
    cfg, rest = load_config(["--config", str(demo.CONFIG), *overrides])  # valid keys and values
    assert rest == []
    if expect:
        assert cfg.train.compile is False


def test_demo_config_asks_for_bf16_compiled_training() -> None:
    """The fallback only makes sense if the config asks for what it undoes."""
    cfg, _ = load_config(["--config", str(demo.CONFIG)])
    assert cfg.train.compile is True and cfg.train.dtype == "bfloat16"


def test_both_recipes_end_to_end_then_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` then `make demo-fast`, shrunk (a tiny model, 6 steps, a synthetic corpus, the
    Shakespeare download skipped): each trains its recipe's config, samples and says what's
    next; the second sets the two finished runs side by side. The fast run has no HF export."""
    data = tmp_path / "data"
    data.mkdir()
    base = np.random.default_rng(0).integers(0, 500, size=64)
    toks = np.concatenate([np.roll(base, i % 7) for i in range(400)]).astype(np.uint16)
    write_shard(data / "t_val_000000.bin", toks[:4000])
    write_shard(data / "t_train_000001.bin", toks[4000:])
    recipes = {}
    for name, config in demo.RECIPES.items():  # each config's own run.dir, under tmp_path
        text = config.read_text().replace('dir = "runs/', f'dir = "{tmp_path}/runs/')
        recipes[name] = tmp_path / config.name
        recipes[name].write_text(text)
    monkeypatch.setattr(demo, "RECIPES", recipes)
    real_run = demo.subprocess.run
    prep_calls = []

    def run(cmd, **kw):  # the Shakespeare preparation only: the download is not reachable here
        if "gpt2repro.prep.shakespeare" in cmd:
            prep_calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, **kw)

    monkeypatch.setattr(demo.subprocess, "run", run)
    small = ["--model.n_layer=1", "--model.n_embd=32", "--model.n_head=2", "--train.max_steps=6"]
    small += ["--train.compile=false", "--train.dtype=float32", "--eval.every=3"]
    small += ["--eval.val_tokens=512", f"--data.dir={data}", "--train.device=cpu"]

    assert demo.main(small) == 0
    out = capsys.readouterr().out
    assert f"training {recipes['faithful']} -> {tmp_path}/runs/shakespeare" in out
    assert "export HF:   python -m gpt2repro.export" in out
    assert "the fast recipe on the same data: make demo-fast" in out

    assert demo.main(["--recipe=fast", *small]) == 0
    out = capsys.readouterr().out
    assert f"training {recipes['fast']} -> {tmp_path}/runs/shakespeare_fast" in out
    assert "export HF:   not this architecture" in out
    faithful = load_run(tmp_path / "runs" / "shakespeare")
    fast = load_run(tmp_path / "runs" / "shakespeare_fast")
    assert faithful.done and fast.done and fast.header["config"]["model"]["arch"] == "modern"
    target = faithful.evals[-1]["val_loss"]
    assert f"faithful: val {target:.3f} after 6,144 tokens" in out
    assert f"fast:     val {fast.evals[-1]['val_loss']:.3f} after 6,144 tokens" in out
    reached = tokens_to([(e["tokens"], e["val_loss"]) for e in fast.evals], target)
    assert reached is not None  # the fast recipe's head start shows even at 6 steps
    assert f"reached the faithful run's final {target:.3f} after {reached:,.0f} tokens" in out
    assert "in the faithful run's" in out and "the fast run got to val" in out
    assert f"python -m gpt2repro.report {faithful.dir} {fast.dir} --out reports/recipes" in out
    assert len(prep_calls) == 2


def test_tokens_to_a_loss_reads_the_curve_linearly() -> None:
    assert tokens_to([(0, 10.0), (100, 6.0), (200, 5.0)], 5.0) == 200
    assert tokens_to([(0, 10.0), (100, 6.0), (200, 4.0)], 5.0) == 150
    assert tokens_to([(0, 4.0), (100, 3.0)], 5.0) == 0
    assert tokens_to([(0, 10.0), (100, 6.0)], 5.0) is None
    assert tokens_to([(0, 4.0)], 5.0) == 0 and tokens_to([(0, 6.0)], 5.0) is None
