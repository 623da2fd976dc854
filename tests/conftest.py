"""Test environment: offline, no wandb, a private HF_HOME; shared fixtures."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="gpt2repro-hf-"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
# Subprocesses import this checkout's gpt2repro, not an installed copy of another one: the
# scripts run by path (data_prep/*.py) have their own directory on sys.path, not the repository.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)
PYTHON = sys.executable
# The tiny GPT-2 (2 layers, width 32, 512-token vocabulary) and batch (8 x 32 tokens) that the
# training tests run in a second or two: `[*TINY_SHAPE, "--train.max_steps=...", ...]`.
TINY_SHAPE = [
    "--model.n_layer=2",
    "--model.n_head=2",
    "--model.n_embd=32",
    "--model.block_size=64",
    "--model.vocab_size=512",
    "--train.seq_len=32",
    "--train.micro_batch_size=4",
    "--train.total_batch_tokens=256",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def run_train(
    args: list[str],
    nproc: int = 1,
    env: dict[str, str] | None = None,
    max_restarts: int = 0,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`python train.py ARGS`, or torchrun with `nproc` processes (also for `max_restarts`), as a
    user starts it; one thread per process, no fault armed unless `env` arms one. With `check`,
    a non-zero exit fails the test with the tail of both streams."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not env or "GPT2REPRO_FAULT" not in env:
        full_env.pop("GPT2REPRO_FAULT", None)
    cmd = [PYTHON, str(REPO / "train.py"), *args]
    if nproc > 1 or max_restarts:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd[1:2] = [*launcher, f"--max-restarts={max_restarts}", str(REPO / "train.py")]
    p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(
            f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
        )
    return p


@pytest.fixture
def repo() -> Path:
    return REPO


# The launch scripts that start torchrun themselves (unless DRY_RUN=1: then they print its command).
TORCHRUN_SCRIPTS = {
    p.name
    for p in (REPO / "launch").glob("*.sh")
    if any(
        "torch.distributed.run" in line and not line.lstrip().startswith("#")
        for line in p.read_text().splitlines()
    )
}


def launches_torchrun(cmd: Any, env: Mapping[str, str] | None = None) -> bool:
    """Whether a subprocess command line starts torchrun: the script, torch.distributed.run, or
    a launch script that runs it (not under DRY_RUN; `env`: the child's, default ours)."""
    if isinstance(cmd, str | bytes | os.PathLike):
        args = shlex.split(os.fsdecode(cmd))
    else:
        args = [os.fsdecode(a) for a in cmd]
    dry = (os.environ if env is None else env).get("DRY_RUN", "") not in ("", "0")
    # A launch script runs only under a shell or as the program itself (`shellcheck x.sh` reads it)
    shell = bool(args) and (Path(args[0]).name in ("bash", "sh") or args[0].endswith(".sh"))
    return any(
        Path(a).name == "torchrun"
        or a == "torch.distributed.run"
        or (shell and Path(a).name in TORCHRUN_SCRIPTS and not dry)
        for a in args
    )


@pytest.fixture(autouse=True)
def _torchrun_needs_the_dist_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test without the `dist` marker that starts torchrun fails at once, so `-m 'not dist'`
    really leaves out every multi-process test.

    The one enforcement of the marker. It checks the command lines tests actually start (every
    subprocess goes through Popen), so it sees torchrun however a test builds the command: in a
    helper, another module, a parametrized case, a launch script. (Reading the test sources
    instead needs a parser of how helpers pass `nproc` around, and still misses all of that.)
    A test skipped on this machine is not checked here: it is wherever it runs.
    """
    if request.node.get_closest_marker("dist") is None:
        test_id = request.node.nodeid

        class Popen(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
                if launches_torchrun(args, kwargs.get("env")):
                    pytest.fail(f"{test_id} starts torchrun: mark it @pytest.mark.dist")
                super().__init__(args, *rest, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", Popen)
    yield
