"""Two nodes on one machine, through the real launch scripts: two `launch/multi_node.sh` (torchrun
--nnodes=2, c10d rendezvous on 127.0.0.1, gloo, one process each) log exactly the losses of one
node with two processes; killed on one node and restarted by `launch/restart_until_done.sh` on
both, they finish with the uninterrupted losses and parameters."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
import torch
from conftest import REPO
from test_train import args_for, final_params, run

from gpt2repro.runs import train_losses

pytestmark = [pytest.mark.dist, pytest.mark.slow]

corpus = test_train.corpus  # the module-scoped shard fixture
COMMON = ["--train.max_steps=8", "--checkpoint.every=3"]
TIMEOUT_S = 300  # per launch of both nodes; a hung rendezvous fails the test instead of the suite


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice), for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_node(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one node, two processes (torchrun --standalone --nproc_per_node=2)."""
    rd = tmp_path_factory.mktemp("one_node") / "run"
    run(args_for(corpus, rd, *COMMON), nproc=2)
    return rd


def two_nodes(cmd: list[str], args: list[str], log_dir: Path, env: dict[str, str]) -> list[str]:
    """Run `cmd + args` as the two nodes of a two-node job on this machine, both at once (c10d
    numbers them); return each node's output. Each node is its own process group, killed in the
    end whatever happened."""
    port = free_port()
    procs, logs = [], []
    try:
        for node in (0, 1):
            node_env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "PYTHON": sys.executable,
                "NNODES": "2",
                "NPROC": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RDZV_ID": f"test-{port}",
                **env,
            }
            log = open(log_dir / f"node{node}.log", "w+")  # noqa: SIM115 (closed in finally)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [*cmd, *args],
                    cwd=REPO,
                    env=node_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: torchrun and workers die with it
                )
            )
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):  # the whole group already exited
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    for node, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {node} exit {p.returncode}:\n{out[-4000:]}"
    return outputs


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical losses at every step and equal final parameters."""
    la, lb = train_losses(a / "metrics.jsonl"), train_losses(b / "metrics.jsonl")
    assert sorted(la) == list(range(1, 9))
    assert la == lb
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


def test_two_nodes_log_the_losses_of_one_node(corpus: Path, one_node: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    out = two_nodes(["launch/multi_node.sh"], args_for(corpus, rd, *COMMON), tmp_path, {})
    assert "2 processes" in out[0] + out[1]  # the batch line of global rank 0, on either node
    assert (rd / "DONE").exists()
    assert_same_run(one_node, rd)


def test_two_nodes_killed_resume_through_restart_until_done(
    corpus: Path, one_node: Path, tmp_path: Path
) -> None:
    rd, fired = tmp_path / "run", tmp_path / "fault-fired"
    env = {
        # global rank 1 (on whichever node c10d put it) dies after step 5; step 3 is saved
        "GPT2REPRO_FAULT": "sigkill:5:rank=1",
        "GPT2REPRO_FAULT_ONCE": str(fired),  # the second attempt runs clean
        "DELAY": "1",
        "MAX_ATTEMPTS": "6",  # slack for a restart that meets the old rendezvous
    }
    cmd = ["launch/restart_until_done.sh", "launch/multi_node.sh"]
    out = two_nodes(cmd, args_for(corpus, rd, *COMMON), tmp_path, env)
    assert fired.exists()
    for node_out in out:  # each node's torchrun failed once and was started again
        assert "restart_until_done: attempt 2/6" in node_out, node_out[-4000:]
    joined = out[0] + out[1]
    assert "resumed from" in joined and "at step 3" in joined
    assert_same_run(one_node, rd)
