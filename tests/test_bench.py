"""The benchmark entry points run and report what they promise (a smoke test, not a timing)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from fixtures.hellaswag import write_hellaswag

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_reports_throughput_fields(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    cmd = [
        sys.executable, "-m", "gpt2repro.bench", "train",
        "--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=64",
        "--model.vocab_size=512", "--train.seq_len=32", "--train.micro_batch_size=4",
        "--train.total_batch_tokens=256", "--steps=2", "--warmup=1", f"--out={out}",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res == json.loads(p.stdout.strip().splitlines()[-1])
    assert res["grad_accum"] == 2 and res["tokens_per_step"] == 256
    assert res["tok_per_s"] > 0 and res["step_ms"] > 0
    assert res["mfu"] is None and res["peak_mem_gib"] is None  # CPU: no guessed numbers
    assert res["n_params"] == 2 * 12 * 32 * 32 + 2 * 13 * 32 + 512 * 32 + 64 * 32 + 2 * 32


def test_bench_hellaswag_batched_agrees_with_one_at_a_time(tmp_path: Path) -> None:
    """`bench hellaswag` on real-schema examples: both scorers run, over the same examples, and
    their summed losses agree (the batching changes the speed, not the numbers)."""
    hs = write_hellaswag(tmp_path / "hellaswag_val.jsonl", n=6)
    cmd = [
        sys.executable, "-m", "gpt2repro.bench", "hellaswag", "--hellaswag", str(hs),
        "--batch-examples", "4", "--device", "cpu",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "random tiny GPT on cpu" in out
    assert "batched (4 examples/pass, bucket 32)" in out and "ex/s over 6 " in out
    assert "one example per pass" in out and "speedup" in out
    diff = re.search(r"max \|summed loss diff\| (\S+);", out)
    assert diff is not None and float(diff[1]) < 1e-4, out
