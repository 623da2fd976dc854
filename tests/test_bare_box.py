"""A bare GPU box: python, torch and numpy, maybe without tiktoken or pytest. Training, `bench`,
evaluation and bench/gpu_check.sh still start there (the packages hidden in a child process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fixtures.bare_box import hidden_env
from test_gpu_check import allowances, read_tsv, run_script, table_rows

IMPORTS = """
import sys
import gpt2repro.train, gpt2repro.bench, gpt2repro.evaluate
try:
    import tiktoken
except ModuleNotFoundError:
    pass
else:
    sys.exit("tiktoken is not hidden")
print(sorted(m for m in sys.modules if m.partition(".")[0] == "tiktoken"))
"""


def test_training_bench_and_evaluation_import_without_tiktoken(tmp_path: Path) -> None:
    env = hidden_env(tmp_path, ["tiktoken"], REPO)
    p = subprocess.run(
        [sys.executable, "-c", IMPORTS],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_bench_help_without_tiktoken(tmp_path: Path) -> None:
    env = hidden_env(tmp_path, ["tiktoken", "pytest"], REPO)
    p = subprocess.run(
        [sys.executable, "-m", "gpt2repro.bench", "train", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "--train.micro_batch_size" in p.stdout


@pytest.mark.slow
def test_gpu_check_cpu_mode_without_tiktoken_and_pytest(tmp_path: Path) -> None:
    """Every step completes; the GPU tests' step says in one line that pytest is missing."""
    env = hidden_env(tmp_path, ["tiktoken", "pytest"], REPO)
    env.update(GPU_CHECK_DEVICE="cpu", PYTHON=sys.executable)
    p = run_script(tmp_path, env, "results", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "cwd" / "results"
    status = {r[0]: r[1] for r in read_tsv(out)}
    steps = [n for n in allowances() if n != "table"]
    cpu_skips = {"gpu_tests", "compile_smoke"}  # the smoke is CUDA's; the tests need pytest
    assert status == {n: "skipped" if n in cpu_skips else "ok" for n in steps}
    skipped = [ln for ln in p.stdout.splitlines() if ln.startswith("== gpu_tests")]
    assert skipped == ["== gpu_tests: skipped (pytest not installed)"], skipped
    rows = table_rows((out / "table.md").read_text())
    assert rows["gpu_tests"]["status"] == "skipped"
    assert rows["gpu_tests"]["note"] == "pytest not installed"
    assert "Traceback" not in p.stdout + p.stderr
