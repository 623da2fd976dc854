"""bench/gpu_check.sh works the first time a GPU appears: its time budget (parsed from the script),
its GPU-mode logic run for real with a stand-in `python` (commands, a failed step, a timed-out step,
the table), the real benchmarks in its CPU mode, its dry run, and shellcheck."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gpt2repro.bench import main as bench_main

SCRIPT = REPO / "bench" / "gpu_check.sh"
MORE = REPO / "bench" / "gpu_check_more.sh"
LIB = REPO / "bench" / "gpu_check_lib.sh"
LIMIT_S = 540  # what one command may run on the lent GPU machine
# gpu_check.sh: the most information first (environment, compile smoke, 124M B=64 eager, compiled,
# the A/Bs that reuse its kernels, the gpu tests, the loader, CORE scoring, the table).
ORDER = [
    "env",
    "compile_smoke",
    "train_124m_b64_eager",
    "train_124m_b64",
    "train_124m_b64_full_logits",
    "train_124m_b64_attn_cudnn",
    "gpu_tests",
    "loader",
    "core",
    "table",
]
TRAIN_STEPS = [
    "train_124m_b64_eager",
    "train_124m_b64",
    "train_124m_b64_full_logits",
]
ATTN_STEP = "train_124m_b64_attn_cudnn"  # skipped until train.attention_backend exists
HAS_ATTN = "attention_backend" in (REPO / "gpt2repro" / "config.py").read_text()
if HAS_ATTN:
    TRAIN_STEPS.append(ATTN_STEP)
MORE_TRAIN_STEPS = ["train_124m_b16", "train_124m_b32", "train_350m_b64", "train_1558m_b16"]


def allowances(script: Path = SCRIPT) -> dict[str, int]:
    """The STEPS list of a script: step name -> seconds, in order (comments after an entry)."""
    block = re.search(r"^STEPS=\(\n(.*?)^\)", script.read_text(), re.S | re.M)
    assert block is not None, f"STEPS=( ... ) not found in {script}"
    pairs = re.findall(r"^\s*(\w+):(\d+)\s*(?:#.*)?$", block[1], re.M)
    return {name: int(secs) for name, secs in pairs}


def code_lines(script: Path = SCRIPT) -> list[str]:
    """The script and the library it sources, without comments (a `#` that starts a line or
    follows a space)."""
    text = script.read_text() + "\n" + LIB.read_text()
    return [re.sub(r"(^|\s)#.*$", "", ln) for ln in text.splitlines()]


def run_script(
    tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120, script: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
    """The script from a scratch folder (so a relative path or a stray write shows)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "FAKE_"))}
    full.pop("OUT", None)
    full.update(env)
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_tsv(out: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in (out / "steps.tsv").read_text().splitlines()]


def repo_state() -> str:
    """Every untracked or ignored file of the checkout (what a stray write would add)."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def table_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


# A stand-in for `python`: answers each command of the script the way the real one would on a GPU
# (JSON results, the tests' summary, HellaSwag lines), fails or hangs where told, and runs
# `bench table` for real.
FAKE_PYTHON = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
line = " ".join(args)
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(line + "\\n")
if args[:1] == ["-c"]:  # the script's probe of a package (`import pytest`), answered for real
    exec(args[1])
    sys.exit(0)
if args[:3] == ["-m", "gpt2repro.bench", "table"]:
    from gpt2repro.bench import main
    sys.exit(main(args[2:]))
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in line:
    print("Traceback (most recent call last):")
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 12.28 GiB")
    sys.exit(1)
if os.environ.get("FAKE_HANG") and os.environ["FAKE_HANG"] in line:
    # as `bench` does: its stack on SIGTERM, then SIGTERM's default; a progress line first
    import faulthandler, signal
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    print("bench: model built at 0.2 s", flush=True)
    time.sleep(120)
opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
command = " ".join(args[:2]) if args[:1] == ["bench/gpu_env.py"] else " ".join(args[:3])
if command == "bench/gpu_env.py env":
    print("info cuda:0 NVIDIA H200, 140 GiB, sm_90")
    print("env: ok")
elif command == "bench/gpu_env.py smoke":
    print("compile smoke: ok on cuda, max abs diff 0.0e+00, 7.1 s")
elif command.startswith("-m pytest"):
    print("GPT-2 124M bf16 compiled on NVIDIA H200: 712,345 tok/s")
    print("6 passed in 81.20s")
elif command == "-m gpt2repro.bench train":
    B = int(opts["--train.micro_batch_size"])
    res = {{
        "bench": "train", "n_params": 124475904, "compile": opts["--train.compile"] == "true",
        "model": {{"vocab_size": 50257, "pad_vocab_multiple": int(opts.get("--model.pad_vocab_multiple", 128))}},
        "micro_batch": B, "step_ms": 100.0, "tok_per_s": B * 10240, "mfu": 0.42, "peak_mem_gib": 30.5,
        "compile_s": 61.5 if opts["--train.compile"] == "true" else 1.2,
    }}
    out = args[args.index("--out") + 1]
    with open(out, "w") as fh:
        json.dump(res, fh)
    print(json.dumps(res))
elif command == "-m gpt2repro.bench hellaswag":
    # what `bench hellaswag` prints (its real formatter) and writes to --out, for made-up numbers
    from gpt2repro.bench import hellaswag_summary
    res = {{
        "bench": "hellaswag", "bench_model": "gpt2", "device": "cuda:0", "threads": None,
        "n": 2000, "n_single": 64, "batch_examples": 16, "bucket": 32, "packed_ex_per_s": 812.5,
        "full_ex_per_s": 301.0, "single_ex_per_s": 90.1, "speedup": 9.02, "speedup_vs_full": 2.7,
        "packed_positions": 180.0, "packed_logit_positions": 60.0, "single_positions": 400.0,
        "max_abs_diff": 2e-5, "max_rel_diff": 1e-7, "same_predictions": True,
    }}
    print(hellaswag_summary(res))
    print(json.dumps(res))
    with open(args[args.index("--out") + 1], "w") as fh:
        json.dump(res, fh)
elif command == "-m gpt2repro.bench core":
    from gpt2repro.bench import core_summary
    res = {{
        "bench": "core", "bench_model": "gpt2", "device": "cuda:0", "threads": None, "n": 150,
        "batch_examples": 16, "bucket": 32, "packed_ex_per_s": 400.0, "single_ex_per_s": 50.0,
        "speedup": 8.0, "packed_positions": 900.0, "single_positions": 2500.0,
        "max_abs_diff": 1e-4, "same_verdicts": True,
    }}
    print(core_summary(res))
    print(json.dumps(res))
    with open(args[args.index("--out") + 1], "w") as fh:
        json.dump(res, fh)
elif command == "-m gpt2repro.bench loader":
    print(json.dumps({{"bench": "loader", "B": 64, "T": 1024, "ms_per_batch": 0.5, "tok_per_s": 131072000}}))
else:
    sys.exit(f"the stand-in python does not know {{line!r}}")
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "fakepython"
    path.write_text(FAKE_PYTHON.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", [SCRIPT, MORE], ids=lambda p: p.name)
def test_allowances_fit_the_machine_limit(script: Path) -> None:
    steps = allowances(script)
    assert list(steps)[0] == "env" and list(steps)[-1] == "table"
    if script == SCRIPT:
        assert list(steps) == ORDER  # the most information first
    lines = code_lines(script)
    # Every `timeout` is either a step's share (drawn from the allowances: SIGTERM at `term`,
    # SIGKILL `grace` later, term + grace = secs) or a literal number of seconds spent outside
    # the steps; both count against the limit.
    literal, commands = 0, 0
    for ln in lines:  # `timeout` as a command: at the start, after $( | ; & or `if !`
        for m in re.finditer(r"(?:^\s*|[|;&(]\s*|\bif\s+!?\s*)timeout\s+(.*)", ln):
            commands += 1
            number = re.match(r"(?:-s \w+\s+)?(\d+)\s", m[1])
            assert (
                number
                or m[1].startswith('-s KILL "$secs" ')
                or m[1].startswith('-s TERM -k "$grace" "$term" ')
            ), ln
            literal += int(number[1]) if number else 0
    assert commands == 3  # the GPU's name, each step, the table
    total = sum(steps.values()) + literal
    assert total < LIMIT_S, f"allowances {sum(steps.values())} s + literal timeouts {literal} s"
    # Every step the script runs has an allowance, and every allowance is used.
    called = [
        m[1]
        for ln in code_lines(script)[: len(script.read_text().splitlines())]
        for m in [re.match(r"\s*(?:run_step|train_step|skip_step|take_allowance) (\w+)", ln)]
        if m
    ]
    called += ["env", "compile_smoke", "table"]  # run by env_step, compile_smoke_step, check_finish
    assert set(called) == set(steps), (called, list(steps))


def test_gpu_mode_runs_every_step_and_records_a_failure(tmp_path: Path, fake_python: Path) -> None:
    """GPU mode with the stand-in python: the commands, the JSONs, a failed step that does not stop
    the others, exit status 1, and the table printed last (and saved) with the failure's reason."""
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = {
        "PYTHON": str(fake_python),
        "OUT": str(out),  # no argument: $OUT is the output folder
        "FAKE_CALLS": str(calls),
        "FAKE_FAIL": "train_124m_b64_full_logits.json",
    }
    p = run_script(tmp_path, env)
    assert p.returncode == 1, p.stdout + p.stderr
    steps = allowances()
    tsv = read_tsv(out)
    assert [r[0] for r in tsv] == list(steps)[:-1]  # every step but the table, in order
    status = {r[0]: r[1] for r in tsv}
    assert status.pop("train_124m_b64_full_logits") == "failed"
    if not HAS_ATTN:
        assert status.pop(ATTN_STEP) == "skipped"
    assert set(status.values()) == {"ok"}, status
    for name, _, _, elapsed, limit, allowance, _ in tsv:
        assert float(elapsed) <= float(limit), name
        assert int(limit) >= int(allowance) or limit == "0", name  # 0: skipped

    cmds = calls.read_text().splitlines()
    assert cmds[:2] == ["bench/gpu_env.py env cuda --gpus 1", "bench/gpu_env.py smoke cuda"]
    train = {n: next(c for c in cmds if f"/{n}.json" in c) for n in TRAIN_STEPS}
    assert list(train) == [n for n in ORDER if n in train]
    assert [c for c in cmds if "bench train" in c] == list(train.values())  # in the order
    for name, cmd in train.items():
        assert "--config configs/gpt2_124m.toml" in cmd
        assert "--train.micro_batch_size=64 --train.total_batch_tokens=65536 " in cmd
        assert "--train.device=cuda" in cmd and "--train.seq_len=1024" in cmd
        assert ("--train.compile=false" in cmd) == (name == "train_124m_b64_eager"), cmd
        assert ("--train.compile=true" in cmd) == (name != "train_124m_b64_eager"), cmd
        assert ("--train.loss_chunk=0" in cmd) == (name == "train_124m_b64_full_logits"), cmd
        assert ("--train.attention_backend=cudnn" in cmd) == (name == ATTN_STEP), cmd
    tests = [c for c in cmds if "-m pytest" in c]
    assert len(tests) == 1 and re.search(r"-m gpu .*tests/test_gpu\.py$", tests[0]), tests
    assert "faulthandler_timeout=100" in tests[0]
    assert any(re.search(r"loader .*--train.device=cuda", c) for c in cmds)
    assert not any("hellaswag" in c or "gpt2_350m" in c or "gpt2_1558m" in c for c in cmds)

    # results: --out JSONs, the loader's printed JSON, a log per step, nothing for the failed one
    for name in TRAIN_STEPS + ["loader"]:
        assert (out / f"{name}.json").exists() == (name != "train_124m_b64_full_logits"), name
    assert json.loads((out / "loader.json").read_text())["tok_per_s"] == 131072000
    skipped = {"table"} | (set() if HAS_ATTN else {ATTN_STEP})
    assert {f.stem for f in (out / "logs").iterdir()} == set(steps) - skipped
    assert sorted(f.name for f in tmp_path.iterdir()) == ["calls.txt", "cwd", "fakepython", "out"]
    assert not any((tmp_path / "cwd").iterdir())

    # the console: tokens/s of each step as it runs, then the one table, last
    table = (out / "table.md").read_text()
    assert p.stdout.rstrip().endswith(table.rstrip())
    # - the failed + the loader + core
    assert p.stdout.count("   result: ") == len(TRAIN_STEPS) - 1 + 2
    assert "712,345 tok/s" in p.stdout  # printed by a gpu test (pytest -s)
    rows = table_rows(table)
    assert list(rows) == list(steps)[:-1]
    b64 = rows["train_124m_b64"]
    assert (b64["config"], b64["B"], b64["compile"], b64["loss"], b64["vocab"]) == (
        "gpt2_124m", "64", "true", "chunked", "50304",
    )  # fmt: skip
    assert (b64["step ms"], b64["tok/s"], b64["MFU"], b64["peak GiB"]) == (
        "100.0", "655,360", "42.0%", "30.5",
    )  # fmt: skip
    assert b64["compile s"] == "61.5" and rows["train_124m_b64_eager"]["compile s"] == "1.2"
    assert rows["train_124m_b64_eager"]["compile"] == "false"
    failed = rows["train_124m_b64_full_logits"]
    assert failed["status"] == "failed (rc 1)" and failed["loss"] == "full"
    assert "CUDA out of memory" in failed["note"] and failed["tok/s"] == ""
    assert rows["gpu_tests"]["note"] == "6 passed in 81.20s"
    assert rows["env"]["note"] == "env: ok"
    assert rows["compile_smoke"]["note"].startswith("compile smoke: ok")
    assert rows["loader"]["tok/s"] == "131,072,000"
    assert any("bench core --bench-model gpt2 --train.device=cuda" in c for c in cmds)
    assert (
        rows["core"]["note"]
        == "core packed 400.0 items/s, 8.00x one item per pass; same verdicts: yes"
    )


def test_a_failed_compile_smoke_runs_the_rest_eager(tmp_path: Path, fake_python: Path) -> None:
    """The smoke fails: the compiled step is skipped (it would only time out) and every later
    training step runs with --train.compile=false."""
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = {"PYTHON": str(fake_python), "FAKE_CALLS": str(calls), "FAKE_FAIL": "smoke cuda"}
    p = run_script(tmp_path, env, str(out))
    assert p.returncode == 1, p.stdout + p.stderr
    status = {r[0]: r[1] for r in read_tsv(out)}
    assert status["compile_smoke"] == "failed" and status["train_124m_b64"] == "skipped"
    assert status["train_124m_b64_full_logits"] == "ok" and status["loader"] == "ok"
    assert "later steps run with --train.compile=false" in p.stdout
    train = [c for c in calls.read_text().splitlines() if "bench train" in c]
    assert len(train) == len(TRAIN_STEPS) - 1
    assert all("--train.compile=false" in c for c in train), train
    rows = table_rows((out / "table.md").read_text())
    assert rows["train_124m_b64"]["note"] == "the compile smoke failed"
    assert rows["train_124m_b64_full_logits"]["compile"] == "false"


def test_a_step_past_its_limit_is_stopped_and_recorded(tmp_path: Path, fake_python: Path) -> None:
    """A hanging step gets SIGTERM at its limit (its allowance, as nothing earlier saved time):
    its stack (faulthandler) and its last progress line reach the log and the table, with the
    compile time so far; it is recorded as a timeout and the steps after it still get theirs."""
    out = tmp_path / "out"
    env = {
        "PYTHON": str(fake_python),
        "GPU_CHECK_BUDGET_S": "30",  # scaled allowances: train_124m_b64_eager gets 2 s
        "FAKE_CALLS": str(tmp_path / "calls.txt"),
        "FAKE_HANG": "train_124m_b64_eager.json",
    }
    t0 = time.monotonic()
    p = run_script(tmp_path, env, str(out))
    assert time.monotonic() - t0 < 25  # not the 120 s the stand-in sleeps
    assert p.returncode == 1, p.stdout + p.stderr
    tsv = {r[0]: r for r in read_tsv(out)}
    eager = tsv["train_124m_b64_eager"]
    assert eager[1:3] == ["timeout", "124"]  # SIGTERM was enough: no SIGKILL (137)
    assert all(tsv[n][1] == "ok" for n in ["train_124m_b64", "train_124m_b64_full_logits"])
    assert tsv["loader"][1] == "ok" and tsv["gpu_tests"][1] == "ok"
    log = (out / "logs" / "train_124m_b64_eager.log").read_text()
    assert "bench: model built at 0.2 s" in log
    assert re.search(r"(Current thread|Thread) 0x[0-9a-f]+ .*most recent call first", log), log
    assert "time.sleep" in log or "fakepython" in log
    row = table_rows((out / "table.md").read_text())["train_124m_b64_eager"]
    assert row["status"] == f"timeout ({eager[4]} s)"
    # compiled for at least the step's wall time less the 0.2 s before the progress line
    assert re.fullmatch(r">\d+ \(stopped\)", row["compile s"]), row
    assert int(row["compile s"][1:].split()[0]) >= int(float(eager[3]) - 0.2) - 1
    assert row["note"].startswith("stopped after: model built (0 s); at fakepython:"), row
    assert "stopped after: model built" in p.stdout or "bench: model built" in p.stdout


@pytest.mark.slow
def test_cpu_mode_runs_the_real_benchmarks(tmp_path: Path) -> None:
    """GPU_CHECK_DEVICE=cpu: every step for real (tiny model), results only under OUT_DIR."""
    before = repo_state()
    t0 = time.monotonic()
    p = run_script(
        tmp_path, {"GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}, "results", timeout=300
    )
    seconds = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "cwd" / "results"  # relative to where the script was started
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cwd"]
    assert sorted(f.name for f in (tmp_path / "cwd").iterdir()) == ["results"]
    assert repo_state() == before  # nothing written into the checkout
    steps = allowances()
    names = {f.name for f in out.iterdir()}
    expected = {f"{n}.json" for n in [*TRAIN_STEPS, "loader", "core"]}
    assert names == expected | {"logs", "steps.tsv", "table.md", "gpu_check.log"}
    skipped = {"compile_smoke", "gpu_tests"} | (set() if HAS_ATTN else {ATTN_STEP})
    assert {f.stem for f in (out / "logs").iterdir()} == set(steps) - skipped - {"table"}
    status = {r[0]: r[1] for r in read_tsv(out)}
    assert status == {n: "skipped" if n in skipped else "ok" for n in list(steps)[:-1]}
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in TRAIN_STEPS}
    assert all(r["micro_batch"] == 8 for r in results.values())  # B/8 on the CPU
    assert all(r["device"] == "cpu" and r["tok_per_s"] > 0 for r in results.values())
    assert all(r["compile_s"] is not None and r["first_step_s"] > 0 for r in results.values())
    assert results["train_124m_b64"]["model"]["pad_vocab_multiple"] == 128
    table = (out / "table.md").read_text()
    assert p.stdout.rstrip().endswith(table.rstrip())
    rows = table_rows(table)
    assert rows["train_124m_b64_full_logits"]["loss"] == "full"
    assert rows["train_124m_b64"]["MFU"] == "n/a"  # no guessed peak on a CPU
    assert rows["env"]["note"].startswith("env: ")
    core = json.loads((out / "core.json").read_text())
    assert core["same_verdicts"] and core["n"] == 6 and core["device"] == "cpu"
    assert p.stdout.count("tok_per_s") == len(TRAIN_STEPS) + 1  # each result, as it comes
    print(f"gpu_check.sh in CPU mode: {seconds:.1f} s")
    assert seconds < 120


def test_more_runs_the_sweep_the_big_models_and_hellaswag(
    tmp_path: Path, fake_python: Path
) -> None:
    """bench/gpu_check_more.sh in GPU mode with the stand-in python: the batch sweep, 350M, 1.5B
    and HellaSwag, with the same step records and table."""
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = {"PYTHON": str(fake_python), "OUT": str(out), "FAKE_CALLS": str(calls)}
    p = run_script(tmp_path, env, script=MORE)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = allowances(MORE)
    assert [r[0] for r in read_tsv(out)] == list(steps)[:-1]
    assert {r[1] for r in read_tsv(out)} == {"ok"}
    cmds = calls.read_text().splitlines()
    train = {n: next(c for c in cmds if f"/{n}.json" in c) for n in MORE_TRAIN_STEPS}
    for name, B in [("train_124m_b16", 16), ("train_124m_b32", 32)]:
        assert "--config configs/gpt2_124m.toml" in train[name]
        assert f"--train.micro_batch_size={B} --train.total_batch_tokens={B * 1024} " in train[name]
    assert all("--train.compile=true" in c for c in train.values())
    assert "configs/gpt2_350m.toml" in train["train_350m_b64"]
    big = train["train_1558m_b16"]
    assert "configs/gpt2_1558m.toml" in big and "--train.micro_batch_size=16 " in big
    assert any("hellaswag --bench-model gpt2 --train.device=cuda" in c for c in cmds)
    assert "   result: packed_ex_per_s 812.5 speedup 9.02" in p.stdout
    rows = table_rows((out / "table.md").read_text())
    assert rows["hellaswag"]["note"] == (
        "packed 812.5 ex/s (16 examples/pass, bucket 32), 9.02x one example per pass; "
        "same predictions: yes"
    )
    assert p.stdout.rstrip().endswith((out / "table.md").read_text().rstrip())


def test_dry_run_lists_the_steps_and_writes_nothing(tmp_path: Path) -> None:
    for script in (SCRIPT, MORE):
        steps = allowances(script)
        env = {"GPU_CHECK_DRY_RUN": "1", "PYTHON": "python3"}
        p = run_script(tmp_path, env, "out", script=script)
        assert p.returncode == 0, p.stderr
        listed = re.findall(r"^== (\w+)(?: \(limit (\d+)s\)|: skipped)", p.stdout, re.M)
        assert [n for n, _ in listed] == list(steps)
        assert all(int(s) == steps[n] for n, s in listed if s)
    assert not any((tmp_path / "cwd").iterdir())
    # the output folder: the argument, else $OUT, else bench/results/<date>-<gpu> in the checkout
    p = run_script(tmp_path, {"GPU_CHECK_DRY_RUN": "1", "OUT": "/elsewhere"}, "mine")
    assert " -> mine;" in p.stdout
    p = run_script(tmp_path, {"GPU_CHECK_DRY_RUN": "1", "OUT": "/elsewhere"})
    assert " -> /elsewhere;" in p.stdout
    p = run_script(tmp_path, {"GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_DEVICE": "cpu"})
    today = datetime.date.today().isoformat()
    assert f" -> {REPO}/bench/results/{today}-cpu;" in p.stdout
    assert not (REPO / "bench" / "results" / f"{today}-cpu").exists()


def test_bad_settings_stop_with_a_message(tmp_path: Path) -> None:
    p = run_script(tmp_path, {"GPU_CHECK_DEVICE": "gpu", "GPU_CHECK_DRY_RUN": "1"})
    assert p.returncode == 2 and "GPU_CHECK_DEVICE must be cuda or cpu" in p.stderr
    p = run_script(tmp_path, {"GPU_CHECK_BUDGET_S": "9m", "GPU_CHECK_DRY_RUN": "1"})
    assert p.returncode == 2 and "GPU_CHECK_BUDGET_S must be a whole number" in p.stderr


def test_table_of_a_folder_of_plain_bench_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench table` also reads a folder of `bench train --out` files (no steps.tsv)."""
    res = {
        "bench": "train", "n_params": 1_557_686_400, "compile": True, "micro_batch": 16,
        "model": {"vocab_size": 50257, "pad_vocab_multiple": 1}, "step_ms": 512.25,
        "tok_per_s": 31983, "mfu": None, "peak_mem_gib": 77.04,
    }  # fmt: skip
    (tmp_path / "xl.json").write_text(json.dumps(res))
    assert bench_main(["table", str(tmp_path), "--md", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (tmp_path / "t.md").read_text().strip()
    row = table_rows(printed)["xl"]
    assert (row["params"], row["B"], row["vocab"], row["step ms"], row["tok/s"]) == (
        "1.56B", "16", "50257", "512.2", "31,983",
    )  # fmt: skip
    assert (row["MFU"], row["peak GiB"], row["status"]) == ("n/a", "77.0", "ok")


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = [str(p) for p in sorted((REPO / "bench").glob("*.sh"))]
    assert len(scripts) >= 3, scripts
    p = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout


def test_env_step_reports_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/gpu_env.py env: a missing pytest or tiktoken is reported, not fatal; in cuda mode
    no CUDA device is a blocker (exit 1), and a missing triton is named."""
    spec = importlib.util.spec_from_file_location("gpu_env", REPO / "bench" / "gpu_env.py")
    assert spec is not None and spec.loader is not None
    gpu_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_env)
    real = importlib.util.find_spec
    hidden = {"pytest", "tiktoken", "triton"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    assert gpu_env.check_env("cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "WARN pytest importable" in lines and "WARN tiktoken importable" in lines
    assert lines[-1] == "env: ok but no pytest, no tiktoken"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_env.check_env("cuda", gpus=2) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "env: FAIL (0 of 2 CUDA devices, no triton, no pytest, no tiktoken)"
    assert gpu_env._version_tuple("2.6.0+cu124") == (2, 6) >= gpu_env.MIN_TORCH
    assert gpu_env._version_tuple("2.5.1") < gpu_env.MIN_TORCH
