"""Install the torch build this machine needs into the running Python (`make venv` runs it).

    python tools/install_torch.py SPEC

SPEC `auto` (the Makefile's default): with an NVIDIA driver (nvidia-smi on PATH, or
/proc/driver/nvidia/version), `torch==VERSION` from the default index, which on Linux x86_64 is
the CUDA build (several GB); without one, the CPU build from PyTorch's CPU index (about 200 MB),
or from the default index when the CPU index cannot be reached within a few seconds (an offline
machine with a local mirror). SPEC `none`: keep the torch already installed. Anything else: the
pip arguments to use (e.g. "torch --index-url https://download.pytorch.org/whl/cu126").
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

VERSION = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5.0


def has_nvidia_driver() -> bool:
    """An NVIDIA driver is installed: nvidia-smi on PATH, or the kernel module's version file."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def index_reachable(url: str = CPU_INDEX, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """The package index answers within `timeout` seconds (pip's own default waits minutes)."""
    try:
        with urllib.request.urlopen(url + "/torch/", timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def pip_args(spec: str, driver: bool, reachable: Callable[[], bool]) -> tuple[list[str], str]:
    """The `pip install` arguments for SPEC and why (a line for the log); [] installs nothing."""
    if spec == "none":
        return [], "TORCH_SPEC=none: keeping the torch already installed"
    if spec != "auto":
        return shlex.split(spec), f"TORCH_SPEC={spec}"
    if driver:
        return [f"torch=={VERSION}"], "NVIDIA driver found: the default index's CUDA build"
    if reachable():
        return [f"torch=={VERSION}", "--index-url", CPU_INDEX], "no NVIDIA driver: the CPU build"
    return (
        [f"torch=={VERSION}"],
        f"no NVIDIA driver, and {CPU_INDEX} did not answer in {PROBE_TIMEOUT_S:g} s: "
        "the default index's torch",
    )


def main(argv: list[str]) -> int:
    spec = argv[0] if argv else "auto"
    args, why = pip_args(spec, has_nvidia_driver(), index_reachable)
    print(f"torch: {why}", flush=True)
    if not args:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *args]
    return subprocess.call(cmd, env=os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
