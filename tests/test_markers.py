"""The `dist` marker's one enforcement (conftest.py's autouse guard) is in force and sees torchrun
however a command line starts it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TORCHRUN_SCRIPTS, launches_torchrun


def test_an_unmarked_test_cannot_start_torchrun() -> None:
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.dist"):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], timeout=60)


def test_the_guard_recognises_torchrun_command_lines() -> None:
    assert launches_torchrun(["/venv/bin/torchrun", "--standalone", "train.py"])
    assert launches_torchrun(["python", "-m", "torch.distributed.run", "train.py"])
    assert launches_torchrun("torchrun --nproc_per_node=2 train.py")
    assert not launches_torchrun(["python", "train.py", "--dist.strategy=fsdp"])
    assert not launches_torchrun(["python", "-m", "gpt2repro.evaluate"])
    # the launch scripts that run torchrun, unless they only print its command line
    assert sorted(TORCHRUN_SCRIPTS) == ["multi_node.sh", "single_node.sh"]
    restart = ["bash", "launch/restart_until_done.sh", "launch/single_node.sh", "--config", "x"]
    assert launches_torchrun(restart, {"DRY_RUN": "0"})
    assert not launches_torchrun(restart, {"DRY_RUN": "1"})
    assert not launches_torchrun(["bash", "launch/cloud_setup.sh"], {})
    assert launches_torchrun(["launch/single_node.sh", "--config", "x"], {})
    assert not launches_torchrun(
        ["shellcheck", "single_node.sh", "multi_node.sh"], {}
    )  # reads them
