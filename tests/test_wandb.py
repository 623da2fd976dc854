"""wandb in offline mode: a run writes its id and an offline run directory; a resume keeps the id."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import test_train
from test_train import args_for, run

from gpt2repro.runs import train_losses

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
