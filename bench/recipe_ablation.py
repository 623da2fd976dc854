"""The faithful recipe against the fast one on the CPU demo, and the fast recipe's ablations:
each architecture switch turned off alone, and each optimizer on the other architecture.

    python bench/recipe_ablation.py run --out /tmp/ablation [--seeds 1337 1 2] [--jobs 2]
    python bench/recipe_ablation.py table --out /tmp/ablation
    python bench/recipe_ablation.py run --setup larger --variants faithful fast --out /tmp/larger

`run` trains every variant for every seed with train.py (the configs' own 850 steps, data, batch
and evaluation; only the variant's keys and the seed change), seed by seed, so that a stopped run
leaves whole seeds; a finished run (a "done" record in its metrics.jsonl) is not run again, and
an unfinished one is refused (remove its directory). `--jobs 2` runs two at a time with one
thread each: the token-based figures do not depend on it; the wall times do, so compare wall
times only between runs that ran side by side (`--variants faithful fast --jobs 2` runs each
seed's pair together). `--setup larger` changes both recipes the same way (SETUPS). `table`
prints, per variant, the mean and the spread over seeds of the final validation loss and of the
tokens it took to reach the faithful run's final validation loss (read off the validation curve
by linear interpolation), each seed against the faithful run of its own seed, and with
`--wall`, the validation loss each variant had reached when the faithful run of its seed ended.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpt2repro.runs import read_metrics, tokens_to

FAITHFUL, FAST = "configs/shakespeare.toml", "configs/shakespeare_fast.toml"
# The faithful config's whole [optim] section, for AdamW on the modern architecture.
FAITHFUL_OPTIM = [
    "--optim.name=adamw", "--optim.lr=3e-3", "--optim.min_lr=3e-4", "--optim.warmup_steps=300",
    "--optim.schedule=cosine", "--optim.weight_decay=0.1", "--optim.grad_clip=1.0",
    "--optim.embed_lr=0", "--optim.head_lr=0",
]  # fmt: skip
# A tied head (wte) trains at the head's rate (optim.role_groups), so the fast config's rates
# need no change when the head is tied. GPT-2's learned positions train with the embeddings
# (0.3): with rotary off that is the fast recipe's choice; on the faithful architecture with
# Muon, embed_lr=0 trains them at 0.002 beside the tied wte.
SWITCHES = ("rotary", "rmsnorm", "qk_norm", "relu2", "untied_head", "zero_init", "no_bias")
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "faithful": (FAITHFUL, []),
    "fast": (FAST, []),
    **{f"fast, {s} off": (FAST, [f"--model.{s}=false"]) for s in SWITCHES},
    "fast, logit_softcap off": (FAST, ["--model.logit_softcap=0"]),
    "fast architecture, faithful AdamW": (FAST, FAITHFUL_OPTIM),
    "faithful architecture, fast Muon": (FAST, ["--model.arch=gpt2", "--optim.embed_lr=0"]),
}
# A larger CPU-feasible setup: 6 layers of width 192 (3 heads of 64; 2.7M parameters in the
# blocks against the demo's 0.8M), a 256-token context, 4,096 tokens a step, 300 steps: 1.23M
# tokens, one pass over Shakespeare's 1.47M training tokens (the demo repeats its data). Both
# recipes keep their demo learning rates; the faithful warmup keeps its third of the run.
# name -> (overrides of every variant, extra overrides by variant)
SETUPS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "demo": ([], {}),
    "larger": (
        [
            "--model.n_layer=6", "--model.n_head=3", "--model.n_embd=192", "--train.seq_len=256",
            "--train.micro_batch_size=16", "--train.total_batch_tokens=4096",
            "--train.max_steps=300", "--eval.every=50", "--eval.val_tokens=65536",
            "--checkpoint.every=150",
        ],
        {"faithful": ["--optim.warmup_steps=100"]},
    ),
}  # fmt: skip


def slug(variant: str) -> str:
    return variant.replace(", ", "-").replace(" ", "_")


def finished(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and any(r.get("event") == "done" for r in read_metrics(path))


def train(out: Path, variant: str, seed: int, threads: int | None, setup: str = "demo") -> str:
    config, extra = VARIANTS[variant]
    common, by_variant = SETUPS[setup]
    extra = [*extra, *common, *by_variant.get(variant, [])]
    run_dir = out / f"{slug(variant)}_s{seed}"
    if finished(run_dir):
        return f"{variant} seed {seed}: already done"
    if run_dir.exists():
        sys.exit(f"{run_dir} holds an unfinished run: remove it to run it again")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "train.py", "--config", config, f"--run.dir={run_dir}",
           f"--train.seed={seed}", *extra]  # fmt: skip
    with open(out / f"{run_dir.name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return f"{variant} seed {seed}: exit {rc}"


def run(out: Path, seeds: list[int], variants: list[str], jobs: int, setup: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if jobs > 1 else None
    n = len(variants)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for seed in seeds:  # whole seeds first
            args = [out] * n, variants, [seed] * n, [threads] * n, [setup] * n
            for line in pool.map(train, *args):
                print(line, flush=True)


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(tokens, validation loss, seconds since the start record) at each evaluation."""
    records = read_metrics(run_dir / "metrics.jsonl")
    start = next(r["time"] for r in records if r.get("event") == "start")
    return [(r["tokens"], r["val_loss"], r["time"] - start) for r in records if "val_loss" in r]


def spread(xs: list[float], fmt: str) -> str:
    """The mean, and the range over seeds when there is more than one."""
    mean = format(statistics.mean(xs), fmt)
    return mean if len(xs) == 1 else f"{mean} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def table(out: Path, seeds: list[int], wall: bool = False) -> None:
    head = "| variant | seeds | final val | tokens to the faithful final (x the faithful run's) |"
    print(head + (" val at the faithful run's wall time | wall time (s) |" if wall else ""))
    print("|---|---|---|---|" + ("---|---|" if wall else ""))
    for variant in VARIANTS:
        finals, ratios, missed, done, at_wall, walls = [], [], 0, [], [], []
        for seed in seeds:
            base, run_dir = out / f"faithful_s{seed}", out / f"{slug(variant)}_s{seed}"
            if not (finished(base) and finished(run_dir)):
                continue
            done.append(seed)
            ref, points = curve(base), curve(run_dir)
            finals.append(points[-1][1])
            reached = tokens_to([(t, v) for t, v, _ in points], ref[-1][1])
            if reached is None:
                missed += 1
            else:
                ratios.append(reached / ref[-1][0])
            at_wall.append([v for _, v, sec in points if sec <= ref[-1][2]][-1])
            walls.append(points[-1][2])
        if not done:
            continue
        cell = spread(ratios, ".3f") if ratios else ""
        if missed:
            cell += f"{'; ' if cell else ''}not reached in {missed} of {len(done)}"
        row = f"| {variant} | {len(done)} | {spread(finals, '.3f')} | {cell} |"
        print(row + (f" {spread(at_wall, '.3f')} | {spread(walls, '.0f')} |" if wall else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=("run", "table"))
    p.add_argument("--out", type=Path, required=True, help="the folder of the runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each when > 1)")
    p.add_argument("--setup", choices=list(SETUPS), default="demo", help="run: the setup (SETUPS)")
    p.add_argument("--wall", action="store_true", help="table: the wall-time columns too")
    a = p.parse_args()
    if a.action == "run":
        run(a.out, a.seeds, a.variants, a.jobs, a.setup)
    else:
        table(a.out, a.seeds, a.wall)


if __name__ == "__main__":
    main()
