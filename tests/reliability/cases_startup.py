"""Bad-input cases: checks before the first step, small CLIs, exports, I/O faults (the table is test_bad_inputs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from badinput import BENCH, CONFIG, EVALUATE, EXPORT, SAMPLE, TINY, TRAIN, TRAIN_M, Case

from gpt2repro.data import write_shard

REPORT = [sys.executable, "-m", "gpt2repro.report"]
# A launcher's environment, as `env` sets it for one command.
ENV = ["env", "-u", "WORLD_SIZE", "-u", "RANK", "-u", "LOCAL_RANK"]
LONG_PROMPT = "word " * 80  # 80+ GPT-2 tokens: more than block_size 64


def build(w: Path) -> None:
    """The files these cases need, made in the world directory `w` before any case runs."""
    (w / "bom.toml").write_bytes(b"\xef\xbb\xbf[optim]\nlr = 3e-4\n")
    (w / "latin1.toml").write_bytes(b'[run]\nname = "caf\xe9"\n')
    (w / "x.toml").mkdir()  # a directory named like a config file
    (w / "lr.toml").write_text("[optim]\nlr = 3e-4\n")
    (w / "hellaswag_dir.jsonl").mkdir()
    rng = np.random.default_rng(1)
    toks = rng.integers(0, 500, size=3000, dtype=np.uint16)
    (w / "data_bigval").mkdir()
    val = np.concatenate([toks[:100], [60000], toks[100:1000]]).astype(np.uint16)
    write_shard(w / "data_bigval" / "t_val_000000.bin", val)
    write_shard(w / "data_bigval" / "t_train_000001.bin", toks[1000:])


def cases() -> list[Case]:
    data = "--data.dir={w}/data"
    peers = [*ENV, "WORLD_SIZE=2", "RANK=0", "LOCAL_RANK=0"]
    master = ["MASTER_ADDR=127.0.0.1", "MASTER_PORT=29593"]
    return [
        # ---- the config file and the config itself
        Case("startup-config-bom", [*TRAIN, "--config", "{w}/bom.toml"], ["{w}/bom.toml", "byte-order mark"]),
        Case("startup-config-latin1", [*TRAIN_M, "--config", "{w}/latin1.toml"], ["{w}/latin1.toml", "not UTF-8", "line 2"]),
        Case("startup-config-is-a-directory", [*TRAIN, "--config", "{w}/x.toml"], ["{w}/x.toml", "is a directory"]),
        Case("startup-config-given-twice", [*TRAIN, "--config", "{w}/lr.toml", "--config", "{w}/bom.toml"], ["--config is given twice", "{w}/lr.toml"]),
        Case("startup-config-cli-bom", [*CONFIG, "--config", "{w}/bom.toml"], ["{w}/bom.toml", "byte-order mark"]),
        Case("startup-run-dir-empty", [*TRAIN, *TINY, data, "--run.dir="], ["'run.dir' is empty", "--run.dir"]),
        Case("startup-seed-negative", [*TRAIN, *TINY, data, "--run.dir={w}/s1", "--train.seed=-1"], ["'train.seed'", "got -1"]),
        Case("startup-seed-overflow", [*TRAIN_M, *TINY, data, "--run.dir={w}/s2", "--train.seed=99999999999999999999"], ["'train.seed'", "99999999999999999999"]),
        Case("startup-init-timeout-zero", [*TRAIN, *TINY, data, "--run.dir={w}/s3", "--dist.init_timeout_s=0"], ["'dist.init_timeout_s'", "positive"]),
        # ---- paths of the wrong kind, before anything is read or created
        Case("startup-data-dir-is-a-file", [*TRAIN, *TINY, "--data.dir={w}/afile", "--run.dir={w}/s4"], ["--data.dir {w}/afile", "is a file, not a directory"]),
        Case("startup-run-dir-is-a-file", [*TRAIN_M, *TINY, data, "--run.dir={w}/afile"], ["--run.dir {w}/afile", "is a file, not a directory"]),
        Case("startup-hellaswag-file-is-a-dir", [*TRAIN, *TINY, data, "--run.dir={w}/s6", "--eval.hellaswag_every=1", "--eval.hellaswag_file={w}/hellaswag_dir.jsonl"], ["eval.hellaswag_file={w}/hellaswag_dir.jsonl", "is a directory, not a file"]),
        # ---- the training sample's prompt
        Case("startup-sample-prompt-too-long", [*TRAIN, *TINY, data, "--run.dir={w}/s7", "--model.vocab_size=50257", "--log.sample_every=1", f"--log.sample_prompt={LONG_PROMPT}"], ["log.sample_prompt", "model.block_size is 64"]),
        # ---- the launcher's environment and the wait for peers
        Case("startup-env-partial", [*ENV, "WORLD_SIZE=2", *TRAIN, *TINY, data, "--run.dir={w}/s8"], ["WORLD_SIZE=2", "RANK, LOCAL_RANK", "torchrun"]),
        Case("startup-env-not-an-integer", [*ENV, "WORLD_SIZE=2", "RANK=0", "LOCAL_RANK=gpu0", *TRAIN, *TINY, data, "--run.dir={w}/s9"], ["LOCAL_RANK='gpu0'", "not an integer"]),
        Case("startup-env-rank-out-of-range", [*ENV, "WORLD_SIZE=2", "RANK=2", "LOCAL_RANK=0", *TRAIN_M, *TINY, data, "--run.dir={w}/s10"], ["RANK=2", "WORLD_SIZE=2"]),
        Case("startup-env-world-zero", [*ENV, "WORLD_SIZE=0", "RANK=0", "LOCAL_RANK=0", *TRAIN, *TINY, data, "--run.dir={w}/s5"], ["WORLD_SIZE=0", "WORLD_SIZE >= 1"]),
        Case("startup-env-no-master", [*peers, *TRAIN, *TINY, data, "--run.dir={w}/s11"], ["MASTER_ADDR", "MASTER_PORT"]),
        Case("startup-peers-never-come", [*peers, *master, *TRAIN, *TINY, data, "--run.dir={w}/s12", "--train.device=cpu", "--dist.init_timeout_s=2"], ["rank 0 of 2", "127.0.0.1:29593", "--dist.init_timeout_s"]),
        # ---- sample
        Case("startup-sample-num-samples-absurd", [*SAMPLE, "--checkpoint", "{w}/run", "--num-samples", "100000000"], ["--num-samples", "100000000"]),
        Case("startup-sample-seed-overflow", [*SAMPLE, "--checkpoint", "{w}/run", "--seed", "99999999999999999999999"], ["--seed", "99999999999999999999999"]),
        Case("startup-sample-seed-negative", [*SAMPLE, "--checkpoint", "{w}/run", "--seed", "-5"], ["--seed", "-5"]),
        # ---- bench loader
        Case("startup-bench-loader-steps-0", [*BENCH, "loader", "--steps", "0"], ["--steps", "got 0"]),
        Case("startup-bench-loader-shards-negative", [*BENCH, "loader", "--shards", "-2"], ["--shards", "got -2"]),
        Case("startup-bench-loader-shard-tokens-absurd", [*BENCH, "loader", "--shard-tokens", "100000000000000"], ["--shard-tokens", "--shards"]),
        # ---- exports never inside a run directory
        Case("startup-export-into-the-run", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/run/hf"], ["--out {w}/run/hf", "run directory {w}/run"]),
        Case("startup-export-into-a-step-dir", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/run/ckpt/step_00000002/hf"], ["--out {w}/run/ckpt/step_00000002/hf", "holds ckpt/"]),
        Case("startup-export-deep-in-another-run", [*EXPORT, "--checkpoint", "{w}/run", "--out", "{w}/run_damaged/a/b"], ["run directory {w}/run_damaged"]),
        # ---- output paths and evaluation inputs
        Case("startup-report-out-under-a-file", [*REPORT, "{w}/run", "--out", "{w}/afile/report"], ["--out {w}/afile/report", "under"]),
        Case("startup-evaluate-id-over-vocab", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/data_bigval", "--val-tokens", "256", "--device", "cpu"], ["--val-data {w}/data_bigval", "60000", "vocab_size is 512"], ["val_loss"]),
    ]  # fmt: skip
