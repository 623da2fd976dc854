"""CORE in the training loop: its settings, its start-up refusals, its metrics records (equal to
`core.evaluate_core` on the run's checkpoints: the capped subset in the loop, the full set at the
last step), the same subset and numbers after a resume as without one, and the report's panel.
Tiny GPT-2-vocabulary models on CPU, the fixture bundle (six tasks of 8 rows, up to 3 shots)."""

from __future__ import annotations

import inspect
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_SHAPE
from conftest import run_train as run

from gpt2repro import checkpoint, core, dist
from gpt2repro.config import Config, EvalConfig, ModelConfig, load_config
from gpt2repro.data import write_shard
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.prep import core as prep_core
from gpt2repro.reference import GPT2_CORE, GPT2_CORE_BAR
from gpt2repro.report import load_run, panels
from gpt2repro.runs import read_metrics
from gpt2repro.tokenizer import N_VOCAB
from gpt2repro.train import load_core_tasks

BUNDLE = REPO / "tests" / "fixtures" / "core_bundle"
CAP = 4  # the fixture's 3-shot tasks need 4; its tasks have 8 rows, so 4 is a true subset
LABELS = ["mc_fewshot", "mc_zeroshot", "schema_zeroshot", "schema_fewshot", "lm_fewshot",
          "lm_zeroshot"]  # fmt: skip
SIZES = ["gpt2_124m", "gpt2_350m", "gpt2_774m", "gpt2_1558m"]


def _args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    """A 6-step run of a 2-layer model with GPT-2's vocabulary, CORE every 2 steps."""
    return [
        *TINY_SHAPE,
        "--model.vocab_size=50257",
        "--optim.warmup_steps=2",
        "--optim.lr=1e-2",
        "--eval.every=0",
        "--log.every=1",
        "--train.max_steps=6",
        "--checkpoint.every=2",
        "--checkpoint.keep_last=0",
        "--eval.core_every=2",
        f"--eval.core_bundle={BUNDLE}",
        f"--eval.core_max_per_task={CAP}",
        f"--data.dir={corpus}",
        f"--run.dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 500, size=64)
    toks = np.concatenate([np.roll(base, i % 7) for i in range(600)]).astype(np.uint16)
    write_shard(d / "t_val_000000.bin", toks[:4000])
    write_shard(d / "t_train_000001.bin", toks[4000:])
    return d


@pytest.fixture(scope="module")
def straight(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run straight through: its directory and its console output."""
    rd = tmp_path_factory.mktemp("straight") / "run"
    return rd, run(_args(corpus, rd)).stdout


def _core_records(run_dir: Path) -> dict[int, dict]:
    """The CORE fields of each evaluation record by step (a re-logged step: the later one)."""
    out = {}
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if "core" in r and "event" not in r:
            out[r["step"]] = {k: v for k, v in r.items() if k.startswith("core") and k != "core_s"}
    return out


# --------------------------------------------------------------------------- settings


def test_core_settings_default_off_and_on_in_the_gpt2_configs() -> None:
    """Off by default and in the CPU demo; on, capped, at an interval in the four GPT-2 configs;
    the default bundle is where data_prep/core.py writes it."""
    assert EvalConfig().core_every == 0
    assert EvalConfig().core_bundle == core.DEFAULT_CORE_BUNDLE
    out_dir = inspect.signature(prep_core.prepare).parameters["out_dir"].default
    assert Path(out_dir) / prep_core.BUNDLE_DIR == Path(core.DEFAULT_CORE_BUNDLE)
    demo, _ = load_config(["--config", str(REPO / "configs" / "shakespeare.toml")])
    assert demo.eval.core_every == 0
    for name in SIZES:
        path = REPO / "configs" / f"{name}.toml"
        cfg, _ = load_config(["--config", str(path)])
        assert 0 < cfg.eval.core_every < cfg.train.max_steps, name
        assert cfg.eval.core_max_per_task >= 11, name  # 10-shot tasks draw from the other 10
        assert cfg.eval.core_bundle == core.DEFAULT_CORE_BUNDLE, name
        assert "core_every" in tomllib.loads(path.read_text())["eval"], name


# --------------------------------------------------------------------------- start-up refusals


def _eval(**kw: object) -> EvalConfig:
    base = {"core_every": 2, "core_bundle": str(BUNDLE), "core_max_per_task": CAP}
    return EvalConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_start_up_refuses_a_missing_bundle_a_small_vocab_and_a_small_cap(tmp_path: Path) -> None:
    tasks = load_core_tasks(_eval(), N_VOCAB)
    assert [t.spec.label for t in tasks] == LABELS
    with pytest.raises(UserError) as e:
        load_core_tasks(_eval(core_bundle=str(tmp_path / "nowhere")), N_VOCAB)
    msg = str(e.value)
    assert "eval.core_bundle=" in msg and "nowhere" in msg and "\n" not in msg
    assert "`python data_prep/core.py`" in msg and "--eval.core_every=0" in msg
    with pytest.raises(UserError, match=r"model.vocab_size=512.*--eval.core_every=0"):
        load_core_tasks(_eval(), 512)
    with pytest.raises(UserError, match=r"--eval.core_max_per_task 3 is too small.* 4 or more"):
        load_core_tasks(_eval(core_max_per_task=3), N_VOCAB)
    assert load_core_tasks(_eval(core_max_per_task=0), N_VOCAB)  # 0 = every example


def test_train_refuses_a_missing_bundle_in_one_line_before_anything_expensive(
    corpus: Path, tmp_path: Path
) -> None:
    rd = tmp_path / "run"
    p = run(_args(corpus, rd, f"--eval.core_bundle={tmp_path / 'no_bundle'}"), check=False)
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "python data_prep/core.py" in errors[0] and "--eval.core_every=0" in errors[0]
    assert not rd.exists()  # refused before the run directory was locked or written


# --------------------------------------------------------------------------- in the loop


def _model_at(run_dir: Path, step: int) -> GPT:
    """The run's weights after `step` (its checkpoint), in the model shape of `_args`."""
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=N_VOCAB))
    ckpt = run_dir / "ckpt" / checkpoint.step_dir_name(step)
    model.load_state_dict(torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True))
    return model


def test_in_loop_records_are_core_of_the_checkpoints(straight: tuple[Path, str]) -> None:
    """Steps 0, 2, 4: the capped subset; step 6 (the last): the full set. Each record's numbers
    are `core.evaluate_core` of the weights saved at that step; the console line shows the mean,
    not the per-task numbers (metrics.jsonl and wandb carry those)."""
    rd, stdout = straight
    records = _core_records(rd)
    assert sorted(records) == [0, 2, 4, 6]
    for step, rec in records.items():
        full = step == 6
        assert rec["core_full"] == int(full)
        assert rec["core_n"] == len(LABELS) * (8 if full else CAP)
        assert set(rec) == {"core", "core_n", "core_full", *(f"core/{t}" for t in LABELS)}
    tasks = core.load_tasks(BUNDLE)
    info = dist.DistInfo()  # one CPU process
    for step in (2, 6):
        cap = 0 if step == 6 else CAP
        res = core.evaluate_core(_model_at(rd, step), tasks, info, max_per_task=cap)
        expected = {f"core/{k}": r["centered"] for k, r in res["tasks"].items()}
        got = {k: v for k, v in records[step].items() if k.startswith("core/")}
        assert got == pytest.approx(expected, abs=1e-12), step
        assert records[step]["core"] == pytest.approx(res["core"], abs=1e-12)
    lines = [line for line in stdout.splitlines() if line.startswith("eval step")]
    assert len(lines) == 4 and all(" core " in line and "core/" not in line for line in lines)
    assert "core_n 48 | core_full 1" in lines[-1]


def test_the_in_loop_subset_is_the_same_after_a_resume(
    corpus: Path, tmp_path: Path, straight: tuple[Path, str]
) -> None:
    """Killed after step 3 and resumed from step 2's checkpoint: the evaluations after the
    resume score the same examples and give the same numbers as the uninterrupted run (the
    subset is the first cap rows of a fixed order: nothing to save)."""
    a = [[t.rows[:CAP] for t in core.load_tasks(BUNDLE)] for _ in range(2)]
    assert a[0] == a[1]  # two loads, one subset
    first = core.load_tasks(BUNDLE)[0]
    assert first.items(CAP) == core.load_tasks(BUNDLE)[0].items(CAP)  # tokens, shots and all
    rd = tmp_path / "run"
    killed = run(_args(corpus, rd), env={"GPT2REPRO_FAULT": "sigkill:3"}, check=False)
    assert killed.returncode != 0
    assert sorted(_core_records(rd)) == [0, 2]
    resumed = run(_args(corpus, rd))
    assert "resum" in resumed.stdout
    recs = read_metrics(rd / "metrics.jsonl")
    resume_at = next(i for i, r in enumerate(recs) if r.get("event") == "resume")
    after = [r["step"] for r in recs[resume_at:] if "core" in r and "event" not in r]
    assert after == [4, 6]  # evaluated after the resume: a subset (4) and the full set (6)
    assert _core_records(rd) == _core_records(straight[0])


# --------------------------------------------------------------------------- the report


def _run_dir(tmp_path: Path, core_every: int, records: list[dict]) -> Path:
    rd = tmp_path / f"run{core_every}"
    rd.mkdir()
    cfg = {"eval": {"core_every": core_every}, "train": {"max_steps": 10}}
    lines = [{"event": "start", "step": 0, "tokens": 0, "time": 1.0, "config": cfg}, *records]
    (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return rd


def test_report_core_panel_with_gpt2_baselines(tmp_path: Path) -> None:
    """The CORE series of the records (a CORE-only record counts as an evaluation), GPT-2's CORE
    for the four sizes, the bar and chance; without CORE in the loop, a note that says why."""
    recs = [{"step": s, "tokens": 100 * s, "loss": 3.0, "time": 2.0 + s} for s in range(1, 11)] + [
        {"step": 5, "tokens": 500, "core": 0.05, "core_n": 24, "core_full": 0, "time": 7.5},
        {"step": 10, "tokens": 1000, "val_loss": 3.1, "core": 0.08, "core_full": 1, "time": 12.5},
    ]
    panel = next(p for p in panels([load_run(_run_dir(tmp_path, 5, recs))]) if p.key == "core")
    (series,) = panel.series
    assert series.xs == [500.0, 1000.0] and series.ys == [0.05, 0.08]
    assert [h.y for h in panel.hlines] == [*GPT2_CORE.values(), GPT2_CORE_BAR, 0.0]
    labels = " ".join(h.label for h in panel.hlines)
    for size in ("124M", "355M", "774M", "1.5B"):
        assert f"GPT-2 {size} ({GPT2_CORE[size]:.4f})" in labels
    assert str(GPT2_CORE_BAR) in labels
    off = next(p for p in panels([load_run(_run_dir(tmp_path, 0, recs[:10]))]) if p.key == "core")
    assert off.note == "no CORE evaluations (eval.core_every = 0)" and not off.series[0].xs
    on = next(p for p in panels([load_run(_run_dir(tmp_path, 3, recs[:10]))]) if p.key == "core")
    assert on.note == "no CORE evaluations yet"


def test_config_keys_round_trip() -> None:
    cfg, _ = load_config(["--eval.core_every=2000", "--eval.core_max_per_task=11"])
    assert isinstance(cfg, Config)
    assert (cfg.eval.core_every, cfg.eval.core_max_per_task) == (2000, 11)
