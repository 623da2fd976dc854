"""The environment step of bench/gpu_check.sh: versions, the visible GPUs, and (with `cuda`) a
clear stop when torch sees no CUDA device.

    python bench/gpu_env.py cuda|cpu
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def main(mode: str) -> int:
    import torch

    print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB")
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=10)
        print(done.stdout.strip())
    if mode == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device visible to torch: run this on a GPU machine, or set "
            "GPU_CHECK_DEVICE=cpu to test bench/gpu_check.sh on a CPU",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
