"""A finished multi-process run exits 0 on every rank, every time.

The race this guards against: `destroy_process_group` forgets the process groups, but torch keeps
them alive elsewhere (FSDP2's state, DeviceMeshes held by DTensor's caches, defaults of
torch.distributed.nn.functional), and with them gloo's worker threads. A worker frees its last
finished collective a moment after it returns; if the interpreter is shutting down by then, the
thread dies inside a C++ destructor and the rank aborts ("terminate called without an active
exception", SIGABRT) after printing "done". It struck in about 1 run in 10 on an idle 2-core
machine and 4 in 10 under CPU load, so counting exit statuses would be a flaky test. What it
needs is deterministic: once `dist.teardown` returns, no gloo thread is left (Linux: the
threads of the process, from /proc), so the interpreter shuts down alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_SHAPE

from gpt2repro.data import write_shard

# train.py's entry point, with dist.teardown wrapped to count this process's threads around it.
WORKER = """
import json, os, sys
from gpt2repro import dist, train

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
teardown = dist.teardown

def counted_teardown(clean=True):
    inside = threads()
    teardown(clean)
    with open(os.path.join(sys.argv[1], f"threads.{os.environ['RANK']}.json"), "w") as f:
        json.dump({"start": before, "before": inside, "after": threads()}, f)

dist.teardown = counted_teardown
sys.exit(train.main(sys.argv[2:]))
"""


@pytest.mark.dist
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_teardown_leaves_no_gloo_thread_behind(tmp_path: Path) -> None:
    """2 FSDP ranks over gloo, with a checkpoint (its import of torch.distributed.nn is one of the
    holders): every rank exits 0, and after teardown it has no more threads than it started with."""
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 500, size=40000).astype(np.uint16)
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "t_val_000000.bin", toks[:8000])
    write_shard(data / "t_train_000001.bin", toks[8000:])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [
        *TINY_SHAPE,
        "--train.max_steps=2",
        "--checkpoint.every=2",
        "--eval.every=0",
        "--dist.strategy=fsdp",
        f"--data.dir={data}",
        f"--run.dir={tmp_path / 'run'}",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("GPT2REPRO_FAULT", None)
    p = subprocess.run(
        [*cmd, str(script), str(tmp_path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "terminate called" not in p.stderr, p.stderr[-3000:]
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"threads.{rank}.json").read_text())
        assert counts["before"] > counts["start"], counts  # gloo's threads ran...
        assert counts["after"] <= counts["start"], counts  # ...and teardown joined them
