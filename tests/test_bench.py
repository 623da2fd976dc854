"""The benchmark entry points run and report what they promise (a smoke test, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
