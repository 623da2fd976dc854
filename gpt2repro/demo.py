"""`make demo`: prepare Shakespeare, train configs/shakespeare.toml, sample, say where it all is.

The embedded default job: a small GPT-2-architecture model on Shakespeare's complete works, a few
minutes on 2 CPU cores (a GPU is used when present). Rerunning it resumes or reuses what exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpt2repro import checkpoint, dist, precision, train
from gpt2repro.config import load_config, reject_unknown_args
from gpt2repro.errors import UserError, run_cli
from gpt2repro.runs import read_metrics
from gpt2repro.sample import complete

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "shakespeare.toml"


def portable_overrides(device_option: str) -> tuple[list[str], str]:
    """Overrides that undo the demo config's bf16 + torch.compile where they would not pay or
    not work, and why: a CPU without bf16 hardware (bf16 would be emulated, slower than float32),
    no C++ compiler for torch.compile's CPU code, or an Apple GPU (its compile support is partial).
    ([], "") where the config's settings stand (CUDA, or a CPU with AMX / AVX-512 BF16)."""
    device = dist.pick_device(device_option)
    if device.type == "cuda":
        return [], ""
    if device.type == "mps":
        return ["--train.compile=false"], "torch.compile is not used on Apple GPUs"
    compiler = any(shutil.which(c) for c in ("c++", "g++", "clang++")) or "CXX" in os.environ
    if not precision.cpu_has_bf16_units():
        why = f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bfloat16 units"
        return ["--train.dtype=float32", "--train.compile=false"], why
    if not compiler:
        return ["--train.compile=false"], "no C++ compiler (c++, g++ or clang++) for torch.compile"
    return [], ""


def main(argv: list[str]) -> int:
    """Run the demo; extra `--section.key=value` arguments are passed to the trainer."""
    t0 = time.time()
    cfg, rest = load_config(["--config", str(CONFIG), *argv])
    reject_unknown_args(rest)
    data_dir = Path(cfg.data.dir)
    print(f"== 1/3 data: Shakespeare's works -> {data_dir}", flush=True)
    prep = [sys.executable, "-m", "gpt2repro.prep.shakespeare", "--out-dir", str(data_dir)]
    if subprocess.run(prep, cwd=REPO).returncode != 0:
        raise UserError("data preparation failed (see above); rerun `make demo` when fixed")

    fallback, why = portable_overrides(cfg.train.device)
    if fallback:
        print(f"note: {why}: training with {' '.join(fallback)}", flush=True)
    print(f"== 2/3 training {CONFIG.relative_to(REPO)} -> {cfg.run.dir}", flush=True)
    t1 = time.time()
    # The user's own overrides come last, so they win over the fallback.
    status = train.main(["--config", str(CONFIG), *fallback, *argv])
    if status != 0:
        return status
    train_s = time.time() - t1

    print("== 3/3 sample from the trained model", flush=True)

    model = checkpoint.load_model(cfg.run.dir)
    text = complete(
        model,
        cfg.log.sample_prompt,
        max_new_tokens=120,
        temperature=0.8,
        top_k=50,
        seed=cfg.train.seed,
    )
    print("-" * 60)
    print(text)
    print("-" * 60)

    recs = read_metrics(Path(cfg.run.dir) / "metrics.jsonl")
    losses = [r for r in recs if "loss" in r and "event" not in r]
    vals = [r for r in recs if "val_loss" in r]
    if losses:
        print(
            f"train loss: {losses[0]['loss']:.3f} (step {losses[0]['step']}) -> {losses[-1]['loss']:.3f} (step {losses[-1]['step']})"
        )
    if vals:
        print(
            f"val loss:   {vals[0]['val_loss']:.3f} (step {vals[0]['step']}) -> {vals[-1]['val_loss']:.3f} (step {vals[-1]['step']})"
        )
    ckpt = checkpoint.resolve(cfg.run.dir)
    print(f"data:        {data_dir}/ (manifest.json, *_train_*.bin, *_val_*.bin)")
    print(f"checkpoint:  {ckpt}")
    print(f"metrics:     {Path(cfg.run.dir) / 'metrics.jsonl'}")
    if cfg.log.report:
        print(
            f"report:      {Path(cfg.run.dir) / 'report.html'} (open it, or "
            f"python -m http.server -d {cfg.run.dir} and browse to /report.html)"
        )
    print(f"sample more: python -m gpt2repro.sample --checkpoint {cfg.run.dir} --prompt 'JULIET:'")
    print(
        f"export HF:   python -m gpt2repro.export --checkpoint {cfg.run.dir} "
        f"--out exports/{Path(cfg.run.dir).name}"
    )
    print(f"demo took {time.time() - t0:.0f} s (training {train_s:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
