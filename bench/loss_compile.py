"""Compile time, step time and peak memory of the chunked loss alone under torch.compile, at a
given number of chunks: the check that neither grows with the chunk count (docs/benchmarks.md).

    MALLOC_MMAP_THRESHOLD_=65536 TORCHINDUCTOR_CACHE_DIR=/tmp/lc_$N \\
        python bench/loss_compile.py --chunks N [--rows 64 --n-embd 512 --vocab 8192]

One process per chunk count (its own inductor cache for a cold compile). The mmap threshold makes
freed buffers leave the resident set, so that the peak sampled from a second process (every few
hundred microseconds, outside this one's GIL) is the peak of live buffers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2repro.loss import linear_cross_entropy

# The sampler: the highest resident set of process argv[1] until file argv[2] exists.
SAMPLER = """
import os, sys
path, page, peak = f"/proc/{sys.argv[1]}/statm", os.sysconf("SC_PAGE_SIZE"), 0
while not os.path.exists(sys.argv[2]):
    with open(path) as f:
        peak = max(peak, int(f.read().split()[1]) * page)
print(peak)
"""


def rss_bytes() -> int:
    """This process's resident set, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, required=True)
    ap.add_argument("--rows", type=int, default=64, help="rows per chunk")
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    N, C, V = args.chunks * args.rows, args.n_embd, args.vocab
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, C, generator=g).requires_grad_()
    w = (0.02 * torch.randn(V, C, generator=g)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    fn = torch.compile(
        lambda h, w, t: linear_cross_entropy(h, w, t, n_valid=V - 10, chunk=args.rows)
    )
    t0 = time.perf_counter()
    fn(h, w, t).backward()  # compile + one step
    first = time.perf_counter() - t0
    h.grad = w.grad = None

    base, stop = rss_bytes(), Path(f"/tmp/loss_compile_stop_{os.getpid()}")
    sampler = subprocess.Popen(
        [sys.executable, "-c", SAMPLER, str(os.getpid()), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # the sampler's start-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        fn(h, w, t).backward()
        h.grad = w.grad = None
    step = (time.perf_counter() - t0) / args.steps
    stop.touch()
    peak = int(sampler.communicate()[0])
    stop.unlink()
    print(
        f"chunks={args.chunks} N={N} first_call_s={first:.1f} step_s={step:.3f} "
        f"step_peak_rss_over_base_MiB={(peak - base) / 2**20:.0f} VC_MiB={V * C * 4 / 2**20:.0f}"
    )


if __name__ == "__main__":
    main()
