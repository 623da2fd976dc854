"""The Python side of bench/gpu_multi_check.sh: its synthetic data, and the comparison of its runs.

    python bench/gpu_multi.py data DIR --vocab V --tokens N    # shards DIR/multi_{train,val}_*.bin
    python bench/gpu_multi.py compare OUT_DIR --tol R          # resumed == uninterrupted, memory,
                                                               # DDP buckets; one JSON line, exit 1
                                                               # when a resumed run differs

The data is learnable (rotations of one random 64-token pattern, as tests/test_train.py's corpus),
so the losses fall and a resume that restored the wrong state shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gpt2repro.data import write_shard
from gpt2repro.runs import read_metrics, train_losses

STRATEGIES = ("ddp", "fsdp")


def make_data(folder: Path, vocab: int, tokens: int) -> None:
    """One val shard (a tenth) and one train shard of rotated-pattern tokens below `vocab`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, min(vocab, 65535), size=64)
    reps = -(-tokens // 64)
    toks = np.concatenate([np.roll(base, i % 7) for i in range(reps)])[:tokens].astype(np.uint16)
    n_val = tokens // 10
    write_shard(folder / "multi_val_000000.bin", toks[:n_val])
    write_shard(folder / "multi_train_000001.bin", toks[n_val:])
    print(f"data: {tokens:,} tokens (vocab {vocab}) in {folder}")


def compare_run(runs: Path, strategy: str, tol: float) -> dict[str, Any]:
    """Uninterrupted (runs/STRATEGY) against resumed (runs/STRATEGY_resumed): the steps both
    logged after the resume, their largest relative loss difference, and each run's peak memory
    (metrics.jsonl `mem_gib`: peak CUDA memory of rank 0 in GiB; null off CUDA)."""
    ref_file, res_file = (
        runs / strategy / "metrics.jsonl",
        runs / f"{strategy}_resumed" / "metrics.jsonl",
    )
    if not ref_file.exists() or not res_file.exists():
        missing = ref_file if not ref_file.exists() else res_file
        return {"ok": False, "why": f"no {missing}"}
    ref, res = train_losses(ref_file), train_losses(res_file)
    # the resumed run logs only the steps after its checkpoint
    first = min(res) if res else 0
    steps = sorted(s for s in res if s in ref)
    rel = max((abs(res[s] - ref[s]) / max(abs(ref[s]), 1e-12) for s in steps), default=None)
    mem = [
        max((r["mem_gib"] for r in read_metrics(f) if r.get("mem_gib") is not None), default=None)
        for f in (ref_file, res_file)
    ]
    ok = bool(steps) and rel is not None and rel <= tol
    return {
        "ok": ok,
        "resumed_from": first - 1,
        "steps_compared": len(steps),
        "max_rel_diff": rel,
        "bit_identical": bool(steps) and all(res[s] == ref[s] for s in steps),
        "final_loss": ref[max(ref)] if ref else None,
        "peak_mem_gib": mem[0],
        "peak_mem_gib_resumed": mem[1],
    }


def compare(out: Path, tol: float) -> dict[str, Any]:
    """The comparison of every strategy's runs, DDP's bucket splits, and a one-line note."""
    result: dict[str, Any] = {"bench": "multi", "tol": tol}
    for s in STRATEGIES:
        result[s] = compare_run(out / "runs", s, tol)
    buckets_file = out / "ddp_buckets.json"
    buckets = None
    if buckets_file.exists():
        bench = json.loads(buckets_file.read_text())
        buckets = bench.get("ddp_buckets")
        result["ddp_bench"] = {k: bench.get(k) for k in ("step_ms", "tok_per_s", "peak_mem_gib")}
    result["ddp_buckets"] = buckets
    result["ok"] = all(result[s]["ok"] for s in STRATEGIES)

    def part(s: str) -> str:
        r = result[s]
        if "why" in r:
            return f"{s}: {r['why']}"
        same = "bit-identical" if r["bit_identical"] else f"max rel diff {r['max_rel_diff']:.1e}"
        mem = "" if r["peak_mem_gib"] is None else f", peak {r['peak_mem_gib']:.1f} GiB"
        return f"{s}: resumed = uninterrupted {'ok' if r['ok'] else 'NO'} ({same}{mem})"

    n_buckets = "?" if buckets is None else buckets["count"]
    result["note"] = "; ".join([*(part(s) for s in STRATEGIES), f"DDP buckets: {n_buckets}"])
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_multi.py", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="the synthetic shards")
    d.add_argument("dir", type=Path)
    d.add_argument("--vocab", type=int, required=True)
    d.add_argument("--tokens", type=int, required=True)
    c = sub.add_parser("compare", help="resumed vs uninterrupted, memory, DDP buckets")
    c.add_argument("out", type=Path)
    c.add_argument("--tol", type=float, default=0.0, help="largest relative loss difference")
    args = p.parse_args(argv)
    if args.command == "data":
        make_data(args.dir, args.vocab, args.tokens)
        return 0
    result = compare(args.out, args.tol)
    print(result["note"])
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
