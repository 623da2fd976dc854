"""`make demo`: prepare Shakespeare, train configs/shakespeare.toml, sample, say where it all is.

The embedded default job: a small GPT-2-architecture model on Shakespeare's complete works, a few
minutes on 2 CPU cores (a GPU is used when present). Rerunning it resumes or reuses what exists.
`make demo-fast` (`--recipe=fast`) trains configs/shakespeare_fast.toml, the fast recipe on the
same data, batch and evaluation; once both have run, each prints how the two compare.
"""

from __future__ import annotations

import argparse
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
from gpt2repro.runs import load_run, read_metrics, tokens_to
from gpt2repro.sample import complete

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "faithful": REPO / "configs" / "shakespeare.toml",
    "fast": REPO / "configs" / "shakespeare_fast.toml",
}
CONFIG = RECIPES["faithful"]


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


def compare(dirs: dict[str, Path]) -> list[str]:
    """Lines setting the two recipes' finished demo runs side by side: each one's final
    validation loss, tokens and training time, and the tokens the fast one took to reach the
    faithful one's final loss. [] unless both runs are complete."""
    runs = {name: load_run(d) for name, d in dirs.items() if (d / "metrics.jsonl").is_file()}
    if len(runs) < 2 or not all(r.done and r.evals for r in runs.values()):
        return []
    out = []
    for name, r in runs.items():
        wall = "" if r.wall_s is None else f", {r.wall_s:.0f} s of training"
        last = r.evals[-1]
        out.append(
            f"{name + ':':9} val {last['val_loss']:.3f} after {last['tokens']:,} tokens{wall}"
            f" ({r.dir})"
        )
    faithful, fast = runs["faithful"], runs["fast"]
    target = faithful.evals[-1]
    reached = tokens_to([(e["tokens"], e["val_loss"]) for e in fast.evals], target["val_loss"])
    if reached is None:
        out.append(f"the fast run never reached the faithful run's {target['val_loss']:.3f}")
    else:
        out.append(
            f"the fast run reached the faithful run's final {target['val_loss']:.3f} after "
            f"{reached:,.0f} tokens ({reached / target['tokens']:.2f}x)"
        )
    start = fast.header.get("time")
    if faithful.wall_s and not fast.restarts and isinstance(start, int | float):
        within = [e for e in fast.evals if e.get("time", float("inf")) - start <= faithful.wall_s]
        if within:  # wall time on this machine: compilation and evaluations included
            out.append(
                f"in the faithful run's {faithful.wall_s:.0f} s the fast run got to val "
                f"{within[-1]['val_loss']:.3f}"
            )
    out.append(
        f"both in one report: python -m gpt2repro.report {' '.join(map(str, dirs.values()))} "
        "--out reports/recipes"
    )
    return out


def main(argv: list[str]) -> int:
    """Run the demo; extra `--section.key=value` arguments are passed to the trainer."""
    t0 = time.time()
    parser = argparse.ArgumentParser(prog="python -m gpt2repro.demo", add_help=False)
    parser.add_argument("--recipe", choices=list(RECIPES), default="faithful")
    recipe, argv = parser.parse_known_args(argv)
    config = RECIPES[recipe.recipe]
    cfg, rest = load_config(["--config", str(config), *argv])
    reject_unknown_args(rest)
    data_dir = Path(cfg.data.dir)
    print(f"== 1/3 data: Shakespeare's works -> {data_dir}", flush=True)
    prep = [sys.executable, "-m", "gpt2repro.prep.shakespeare", "--out-dir", str(data_dir)]
    if subprocess.run(prep, cwd=REPO).returncode != 0:
        raise UserError("data preparation failed (see above); rerun `make demo` when fixed")

    fallback, why = portable_overrides(cfg.train.device)
    if fallback:
        print(f"note: {why}: training with {' '.join(fallback)}", flush=True)
    shown = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    print(f"== 2/3 training {shown} -> {cfg.run.dir}", flush=True)
    t1 = time.time()
    # The user's own overrides come last, so they win over the fallback.
    status = train.main(["--config", str(config), *fallback, *argv])
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
    if cfg.model.has_gpt2_modules:
        print(
            f"export HF:   python -m gpt2repro.export --checkpoint {cfg.run.dir} "
            f"--out exports/{Path(cfg.run.dir).name}"
        )
    else:
        print("export HF:   not this architecture (transformers' GPT-2 has none of its switches)")
    print(f"demo took {time.time() - t0:.0f} s (training {train_s:.0f} s)")
    others = {n: Path(load_config(["--config", str(c)])[0].run.dir) for n, c in RECIPES.items()}
    others[recipe.recipe] = Path(cfg.run.dir)
    for line in compare(others):
        print(line)
    if recipe.recipe == "faithful" and not compare(others):
        print("the fast recipe on the same data: make demo-fast (docs/recipes.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
