"""The first steps of bench/gpu_check.sh (and gpu_check_more.sh, gpu_multi_check.sh): what the
machine has, and whether torch.compile works on it at all.

    python bench/gpu_env.py env cuda|cpu [--gpus N]   # versions and prerequisites; exit 1 on a blocker
    python bench/gpu_env.py smoke cuda|cpu            # compile and run one tiny function (~10 s)

`env` prints one line per check, `ok`/`WARN`/`FAIL` first, and a last line `env: ...` that sums
them up (the table's note). Blockers (exit 1): Python < 3.11 (tomllib: every command fails), no
CUDA device in cuda mode, fewer GPUs than --gpus. Everything else is reported and the check goes on:
torch < 2.6 (compile of DDP with our loss and the public FSDP2 import need 2.6), no triton, no C
compiler or no Python.h (Triton builds its launcher with them: compiled steps would fail), no pytest
(the gpu tests step fails), no tiktoken (only text encoding needs it). `smoke` is the test that
decides: if it fails, the script runs the later steps with --train.compile=false.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 6)


def _version_tuple(version: str) -> tuple[int, ...]:
    """(2, 6) from "2.6.0+cu124"."""
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _importable(name: str) -> bool:
    """Whether `import name` would find the package (a broken one that raises counts as absent)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def check_env(mode: str, gpus: int = 1) -> int:
    """Print the environment report; 1 when a blocker makes every later step pointless."""
    problems: list[str] = []
    blockers: list[str] = []

    def report(ok: bool, what: str, missing: str, blocker: bool = False) -> None:
        """One line for one check; `missing` is its short name in the summary when it fails."""
        print(f"{'ok  ' if ok else ('FAIL' if blocker else 'WARN')} {what}", flush=True)
        if not ok:
            (blockers if blocker else problems).append(missing)

    py = sys.version_info[:2]
    version = sys.version.split()[0]
    report(
        py >= MIN_PYTHON, f"python {version}: needs >= 3.11 (tomllib)", f"python {version}", True
    )
    if py < MIN_PYTHON:
        print(f"env: FAIL ({', '.join(blockers)})")
        return 1
    import torch  # after the Python check: an old Python fails above with a clear line

    report(
        _version_tuple(torch.__version__) >= MIN_TORCH,
        f"torch {torch.__version__} (cuda {torch.version.cuda}): compiled DDP and FSDP2 need >= 2.6",
        f"torch {torch.__version__} < 2.6",
    )
    if mode == "cuda":  # inductor generates Triton kernels on a GPU (C++ on a CPU)
        report(_importable("triton"), "triton importable", "no triton")
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "")
    report(bool(cc), f"C compiler: {cc or 'none'} (compiled kernels need one)", "no C compiler")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    report(include.exists(), f"Python.h: {include} (Triton's launcher includes it)", "no Python.h")
    for name in ("pytest", "tiktoken", "numpy"):
        report(_importable(name), f"{name} importable", f"no {name}")
    if torch.cuda.is_available():
        order = getattr(torch._C, "_get_sdp_priority_order", None)
        if order is not None:  # torch >= 2.5: the SDPA backends in the order torch tries them
            names = [str(torch.nn.attention.SDPBackend(int(b))).split(".")[-1] for b in order()]
            print(f"info SDPA backend order: {', '.join(names)}")
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(
                f"info cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
            )
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=10)
        print(done.stdout.strip())
    if mode == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        report(
            n >= gpus,
            f"CUDA devices: {n} visible to torch, {gpus} needed (run this on a GPU machine, or set "
            "GPU_CHECK_DEVICE=cpu to test the script on a CPU)",
            f"{n} of {gpus} CUDA devices",
            True,
        )
    if blockers:
        print(f"env: FAIL ({', '.join(blockers + problems)})")
        return 1
    print(f"env: ok{' but ' + ', '.join(problems) if problems else ''}")
    return 0


def compile_smoke(mode: str) -> int:
    """torch.compile one small function on the device and compare it with eager; the time it
    took is the last line. Any exception fails the smoke (exit 1)."""
    import torch

    device = torch.device("cuda" if mode == "cuda" else "cpu")
    t0 = time.perf_counter()

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x @ w).sum(dim=-1)

    x = torch.randn(64, 128, device=device)
    w = torch.randn(128, 128, device=device)
    got = torch.compile(f)(x, w)
    want = f(x, w)
    if device.type == "cuda":
        torch.cuda.synchronize()
    err = (got - want).abs().max().item()
    ok = err <= 1e-2 * max(1.0, want.abs().max().item())
    print(f"compile smoke: {'ok' if ok else 'WRONG'} on {device}, max abs diff {err:.1e}, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] not in ("env", "smoke") or argv[1] not in ("cuda", "cpu"):
        sys.exit("usage: python bench/gpu_env.py env|smoke cuda|cpu [--gpus N]")
    if argv[0] == "smoke":
        raise SystemExit(compile_smoke(argv[1]))
    n_gpus = int(argv[argv.index("--gpus") + 1]) if "--gpus" in argv else 1
    raise SystemExit(check_env(argv[1], n_gpus))
