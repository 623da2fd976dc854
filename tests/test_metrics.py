"""The console line, the run header, and metrics.jsonl round trips through its reader
(torn last line, re-logged steps after a resume)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gpt2repro import metrics
from gpt2repro.config import load_config, to_dict
from gpt2repro.dist import DistInfo
from gpt2repro.metrics import MetricsLog, Progress, WallClock, console_line, run_header
from gpt2repro.runs import format_duration, read_metrics, train_losses


def _rec(**kw: object) -> dict:
    rec = {
        "step": 42,
        "loss": 3.14159,
        "lr": 6e-4,
        "grad_norm": 0.5,
        "tokens": 42 * 524288,
        "tok_per_s": 1234567.0,
        "mfu": 0.4567,
        "step_ms": 425.25,
        "skipped": 0,
    }
    rec.update(kw)
    return rec


def test_console_line_fields() -> None:
    rec = _rec(mem_gib=41.26, loss_mean=3.2, tokens=629_145_600)
    p = Progress(max_steps=18865, world_size=8, on_cuda=True, elapsed_s=332.0, eta_s=3725.0,
                 clock="14:02:11")  # fmt: skip
    parts = console_line(rec, p).split(" | ")
    assert parts == [
        "14:02:11 step     42/18865",
        "loss 3.2000 (last 3.1416)",
        "lr 6.00e-04",
        "norm 0.500",
        "425.2 ms",
        "1,234,567 tok/s (154,321/GPU)",
        "MFU 45.7%",
        "629.1M tokens",
        "elapsed 5m32s",
        "ETA 1h02m",
        "mem 41.3 GiB",
    ]


def test_console_line_unknown_mfu_and_extras() -> None:
    """No MFU where it cannot apply (not `MFU n/a` on every line); one process: no per-device
    rate; the first log line of a session: the step time's ETA, marked as a lower bound."""
    line = console_line(_rec(mfu=None, skipped=2), Progress(max_steps=100))
    assert "MFU" not in line and "%" not in line and "GiB" not in line and "/GPU" not in line
    assert "ETA >= 0m24s" in line  # 58 steps of 425 ms
    assert line.endswith("skipped 2")
    assert "skipped" not in console_line(_rec(), Progress(max_steps=100))
    assert "/proc" in console_line(_rec(), Progress(max_steps=100, world_size=2))


def test_wall_clock_eta_counts_what_happens_between_steps() -> None:
    """The ETA is wall time per step since the first log line: a 30 s evaluation every 100
    steps of 0.5 s shows in it (the old ETA, step time x steps left, left it out)."""
    clock = WallClock(now=0.0)
    assert clock.progress(10, 1000, now=20.0) == (20.0, None)  # compile: not in the rate
    elapsed, eta = clock.progress(110, 1000, now=20.0 + 100 * 0.5 + 30.0)
    assert elapsed == 100.0 and eta == pytest.approx((80.0 / 100) * 890)
    assert eta > 0.5 * 890  # more than the step time alone says


def test_metrics_log_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    recs = [_rec(step=1), {"step": 1, "tokens": 10, "val_loss": 5.5}, _rec(step=2, loss=math.nan)]
    for r in recs:
        log.write(r)
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(ln)["step"] for ln in lines] == [1, 1, 2]
    back = read_metrics(path)
    assert back[:2] == recs[:2]
    assert math.isnan(back[2]["loss"])  # NaN survives the round trip
    # appending (a resumed run) keeps what was there
    log = MetricsLog(path)
    log.write({"event": "resume", "step": 2, "tokens": 20})
    log.close()
    assert len(read_metrics(path)) == 4


def test_metrics_log_disabled_writes_nothing(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False)
    log.write(_rec())
    log.flush()
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_read_metrics_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(_rec(step=1))
    log.write(_rec(step=2))
    log.close()
    with open(path, "a") as fh:
        fh.write('{"step": 3, "loss": 2.')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert train_losses(path) == {1: 3.14159, 2: 3.14159}


def test_train_losses_last_line_per_step_wins(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"event": "start", "step": 0, "tokens": 0, "loss": 99.0})  # events never count
    for s, loss in [(1, 5.0), (2, 4.0), (3, 3.0)]:
        log.write(_rec(step=s, loss=loss))
    log.write({"step": 3, "tokens": 3, "val_loss": 7.0})  # eval lines have no train loss
    log.write({"event": "resume", "step": 2, "tokens": 2})
    log.write(_rec(step=3, loss=2.5))  # re-logged after the resume
    log.write(_rec(step=4, loss=2.0))
    log.close()
    assert train_losses(path) == {1: 5.0, 2: 4.0, 3: 2.5, 4: 2.0}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0m00s"),
        (-5, "0m00s"),
        (59.9, "0m59s"),
        (61, "1m01s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (3661, "1h01m"),
        (90000, "25h00m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_run_header_reproduces_the_run() -> None:
    argv = [
        "--model.n_layer=2",
        "--model.n_head=2",
        "--model.n_embd=32",
        "--train.seq_len=32",
        "--train.micro_batch_size=4",
        "--train.total_batch_tokens=256",
    ]
    cfg, _ = load_config(argv)
    header = run_header(cfg, DistInfo(), ["train.py", *argv], 2, 12345)
    rec = header["record"]
    assert set(rec["versions"]) == {"python", "torch", "numpy", "tiktoken"}
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["world_size"] == 1 and rec["device"] == "cpu"
    assert rec["argv"] == ["train.py", *argv]
    assert rec["n_params"] == 12345 and rec["grad_accum"] == 2
    assert rec["config"] == to_dict(cfg)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert rec["git_sha"] in (head, head + "-dirty")
    assert json.loads(json.dumps(rec)) == rec  # it goes into metrics.jsonl as is
    text = header["text"]
    assert (
        "batch: 256 tokens/step = 4 seqs x 32 tokens x 1 processes x 2 accumulation steps" in text
    )
    assert "model: 12,345 parameters, 2 layers, 2 heads, width 32" in text
    # short: what differs from the defaults; the full resolved config is RUN_DIR/config.toml
    assert "settings not at their defaults: " in text and "model.n_embd=32" in text
    assert "model.n_layer=2" in text and "optim.lr" not in text  # the default lr: not listed
    assert f"full config: {Path(cfg.run.dir) / 'config.toml'}" in text
    assert len(text.splitlines()) == 7


def test_run_header_without_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare GPU box may lack tiktoken (training does not need it): the header says so."""
    real = metrics.importlib.metadata.version
    tiktoken = pytest.importorskip("tiktoken")
    assert metrics.package_version("tiktoken") == tiktoken.__version__

    def version(name: str) -> str:
        if name == "tiktoken":
            raise metrics.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metrics.importlib.metadata, "version", version)
    cfg, _ = load_config(["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32"])
    rec = run_header(cfg, DistInfo(), ["train.py"], 1, 1)["record"]
    assert rec["versions"]["tiktoken"] == "not installed"
    assert rec["versions"]["torch"] == torch.__version__


def test_no_text_samples_without_tiktoken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training on a box without tiktoken says at start that it will print no samples (rather
    than failing at the first one)."""
    cfg, _ = load_config(["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32"])
    log = metrics.RunLog(tmp_path, cfg, is_main=True)
    assert log.can_sample(10, 50304) is (metrics.package_version("tiktoken") != "not installed")
    monkeypatch.setattr(metrics, "package_version", lambda name: "not installed")
    capsys.readouterr()
    assert not log.can_sample(10, 50304)
    assert capsys.readouterr().out == (
        "note: no text samples: tiktoken is not installed (pip install tiktoken)\n"
    )
    assert not log.can_sample(0, 50304)


def test_a_resume_after_a_torn_last_line_keeps_its_first_record(tmp_path: Path) -> None:
    """A kill mid-append leaves half a line; the resumed run's first record (the `resume` event)
    must start on a line of its own, not be glued to the torn one and skipped with it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_rec(step=1)) + "\n" + '{"step": 2, "tok')
    log = MetricsLog(path)
    log.write({"event": "resume", "step": 1, "tokens": 10})
    log.close()
    malformed: list[int] = []
    recs = read_metrics(path, malformed)
    assert [r.get("event") for r in recs] == [None, "resume"] and malformed == [2]
    MetricsLog(path).close()  # a clean end gets no extra newline
    assert path.read_text().count("\n") == 3


# --------------------------------------------------------------------------- I/O faults mid-run


def _failing_writes(monkeypatch: pytest.MonkeyPatch, errno_code: int, fail: set[int]) -> list[int]:
    """metrics._write_all raising OSError(errno_code) on the calls numbered in `fail` (0-based),
    after writing half of the bytes (a full disk takes part of a line)."""
    import os

    calls: list[int] = []
    real = metrics._write_all

    def write_all(fd: int, data: bytes) -> None:
        calls.append(len(calls))
        if calls[-1] in fail:
            real(fd, data[: len(data) // 2])
            raise OSError(errno_code, os.strerror(errno_code))
        real(fd, data)

    monkeypatch.setattr(metrics, "_write_all", write_all)
    return calls


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EIO"])
def test_a_failed_metrics_append_warns_once_and_later_records_land(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    errno_name: str,
) -> None:
    """A full disk (or an I/O error) while appending used to raise out of the training loop."""
    import errno

    path = tmp_path / "metrics.jsonl"
    _failing_writes(monkeypatch, getattr(errno, errno_name), fail={1, 2})
    log = MetricsLog(path)
    for step in range(1, 5):
        log.write(_rec(step=step))  # 2 and 3 fail, each leaving half a line
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: cannot write {path} (")
    assert "training goes on" in err[0] and log.failures == 2
    assert [r["step"] for r in read_metrics(path)] == [1, 4]  # the torn halves are skipped
    assert all(ln.startswith("{") for ln in path.read_text().splitlines())


def test_a_full_disk_for_metrics_and_the_report_does_not_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every metrics.jsonl append and every live report fails with ENOSPC: one warning each, the
    run finishes and writes its checkpoints (the report is never worth a crash)."""
    import errno
    import os
    import signal

    import numpy as np
    from conftest import TINY_SHAPE

    from gpt2repro import checkpoint, report, train
    from gpt2repro.data import write_shard

    corpus = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_shard(corpus / "t_val_000000.bin", rng.integers(0, 500, 5000).astype(np.uint16))
    write_shard(corpus / "t_train_000001.bin", rng.integers(0, 500, 20000).astype(np.uint16))
    _failing_writes(monkeypatch, errno.ENOSPC, fail=set(range(1000)))

    def full_disk(run_dir: Path) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report, "write_live", full_disk)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    rd = tmp_path / "run"
    argv = [
        *TINY_SHAPE, f"--data.dir={corpus}", f"--run.dir={rd}", "--train.max_steps=4",
        "--eval.every=2", "--eval.val_tokens=256", "--checkpoint.every=2", "--log.every=1",
    ]  # fmt: skip
    try:
        assert train.main(argv) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    err = capsys.readouterr().err
    assert err.count("warning: cannot write") == 1, err
    assert err.count("warning: live report") == 1, err
    assert "Traceback" not in err
    steps = [checkpoint.step_of(p) for p in sorted((rd / "ckpt").iterdir())]
    assert [s for s in steps if s is not None] == [2, 4]
    assert (rd / "DONE").exists()


def test_the_eval_line_has_its_duration_and_gpt2s_number_where_comparable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = load_config(["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32"])
    log = metrics.RunLog(tmp_path, cfg, is_main=True)
    log.evaluation(100, 5000, {"val_loss": 3.5}, seconds=12.34, gpt2_val_loss=3.2924)
    log.evaluation(200, 9000, {"val_loss": 3.4}, seconds=1.0)
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "eval step    100 | val_loss 3.5000 (GPT-2 124M: 3.2924) | 12.3 s",
        "eval step    200 | val_loss 3.4000 | 1.0 s",
    ]
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_s"] for r in records] == [12.34, 1.0]
