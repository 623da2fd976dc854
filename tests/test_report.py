"""The run report: the trainer's live page (reloads until DONE, never stops training), the CLI's
report of several real tiny runs (summary numbers equal to metrics.jsonl, PNGs not blank, no
network references, escaped text), bad input, and the page in headless Chromium."""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_train import TINY, run

from gpt2repro import plot, report
from gpt2repro.data import write_shard
from gpt2repro.errors import run_cli
from gpt2repro.runs import load_run, read_metrics

ODD_NAME = 'tiny <b>&"run"'  # must reach the page escaped


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two real runs of a GPT-2-vocab model with val loss and HellaSwag in the loop: `a` straight
    through, `b` killed by SIGKILL after step 6 and resumed (its live page seen in between)."""
    from fixtures.hellaswag import write_hellaswag

    from gpt2repro.tokenizer import get_encoding

    tmp = tmp_path_factory.mktemp("report_runs")
    enc = get_encoding()
    docs = ["To be, or not to be, that is the question. " * 40, "All the world's a stage. " * 60]
    toks = np.concatenate([[enc.eot_token, *enc.encode_ordinary(d)] for d in docs * 5])
    write_shard(tmp / "data" / "x_val_000000.bin", toks[:2000].astype(np.uint16))
    write_shard(tmp / "data" / "x_train_000001.bin", toks[2000:].astype(np.uint16))
    hs = write_hellaswag(tmp / "hellaswag_val.jsonl", n=8)
    common = [
        *TINY,
        "--model.vocab_size=50257",
        "--model.block_size=128",
        f"--data.dir={tmp / 'data'}",
        "--train.max_steps=8",
        "--eval.every=4",
        "--eval.val_tokens=512",
        "--eval.hellaswag_every=4",
        f"--eval.hellaswag_file={hs}",
        "--checkpoint.every=4",
        "--eval.core_every=4",  # the fixture bundle's first 4 examples a task; all 8 at the end
        f"--eval.core_bundle={REPO / 'tests' / 'fixtures' / 'core_bundle'}",
        "--eval.core_max_per_task=4",
    ]
    a, b = tmp / "a", tmp / "b"
    run([*common, f"--run.dir={a}", f"--run.name={ODD_NAME}"])
    common += [f"--run.dir={b}", "--train.seed=7"]  # another curve to overlay
    killed = run(common, env={"GPT2REPRO_FAULT": "sigkill:6"}, check=False)
    assert killed.returncode != 0
    live_page = (b / "report.html").read_text()  # as a browser would have seen it then
    run(common)
    return {"a": a, "b": b, "live_page_while_running": live_page, "tmp": tmp}


@pytest.mark.slow  # the `runs` fixture: three short trainings (~15-35 s)
def test_live_page_reloads_until_done(runs: dict) -> None:
    refresh = f'<meta http-equiv="refresh" content="{report.REFRESH_S}">'
    assert refresh in runs["live_page_while_running"]
    live = runs["live_page_while_running"]
    # a live run's first line: running, where it is, and when it counts as stalled (a script
    # switches the line after that moment; the text says it for a page read without scripts)
    assert re.search(r'<p class="status status-live" data-stale-after="\d+"', live), live[:3000]
    assert "stalled if there is no new record by" in live and "<script>" in live
    for name in ("a", "b"):
        page = (runs[name] / "report.html").read_text()
        assert (runs[name] / "DONE").exists()
        assert 'http-equiv="refresh"' not in page  # the final page stays still
        assert f'<meta name="generator" content="{report.GENERATOR}">' in page
        assert page.count('<svg class="plot"') == 9
        assert '<p class="status status-done">' in page and 'data-stale-after="' not in page
    # the page written while running was the one of the last evaluation before the kill
    assert _summary(runs["live_page_while_running"], "b")[:3] == [
        "running",
        "4 / 8",
        f"{4 * 256:,}",
    ]


def _summary(page: str, label: str) -> list[str]:
    """The cells of `label`'s summary row, unescaped."""
    row = re.search(
        r"<tr><td><span[^>]*></span>" + re.escape(html.escape(label)) + r"</td>(.*?)</tr>", page
    )
    assert row, label
    return [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]


@pytest.mark.slow  # the `runs` fixture: three short trainings (~15-35 s)
def test_report_cli_overlays_runs_with_the_numbers_of_metrics_jsonl(
    runs: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = run_cli(report.main, [str(runs["a"]), str(runs["b"]), "--out", str(out)])
    assert status == 0, buf.getvalue()
    page = (out / "report.html").read_text()
    assert 'http-equiv="refresh"' not in page
    # self-contained: no scripts, stylesheets, fonts or images fetched from anywhere; the one
    # inline script (the stalled check) and the plots' clip paths (url(#id)) are local
    assert not re.search(r"<script[^>]*src|<link|<img|@import|url\((?!#)", page)
    assert page.count("<script") == 1 and not re.search(r"fetch\(|XMLHttpRequest", page)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    # text from the run reaches the page escaped, never as markup
    assert ODD_NAME not in page and html.escape(ODD_NAME) in page

    for name, label, restarts in ((ODD_NAME, "a", 0), ("b", "b", 1)):
        recs = read_metrics(runs[label] / "metrics.jsonl")
        vals = [r for r in recs if "val_loss" in r]
        best = min(vals, key=lambda r: r["val_loss"])
        hsw = [r for r in recs if "hellaswag_acc_norm" in r]
        cells = _summary(page, name)
        status, steps, tokens, best_val, final_hs, wall, gpu_h, skipped, n_restarts, bad = cells
        assert status == "done" and steps == "8 / 8" and tokens == f"{8 * 256:,}"
        assert best_val == f"{best['val_loss']:.4f} (step {best['step']})"
        assert final_hs == (
            f"{hsw[-1]['hellaswag_acc_norm']:.4f} / {hsw[-1]['hellaswag_acc_norm_char']:.4f}"
        )
        assert n_restarts == str(restarts) and skipped == "0" and bad == "0"
        assert gpu_h == "— (no CUDA)" and not wall.startswith("≈")  # timed from `time` fields
    # the start header: git SHA, versions and config of each run
    start = read_metrics(runs["b"] / "metrics.jsonl")[0]
    assert start["git_sha"] in page and f"torch {start['versions']['torch']}" in page
    assert "&quot;total_batch_tokens&quot;: 256" in page

    # every PNG decodes, is not blank, and shows both runs' colours where there is data
    from PIL import Image

    for panel in report.panels([load_run(runs["a"]), load_run(runs["b"])]):
        img = np.asarray(Image.open(out / f"{panel.key}.png").convert("RGB")).astype(int)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert (img.min(axis=2) < 200).mean() > 0.01, panel.key  # axes, text, lines
        if panel.key in ("loss", "hellaswag", "core", "lr", "tokens_per_s"):
            # both runs, except lr: one schedule, b's line drawn over a's
            for color in report.PALETTE[1 if panel.key == "lr" else 0 : 2]:
                near = np.abs(img - _rgb(color)).sum(axis=2) < 60
                assert near.sum() > 100, (panel.key, color)
    # a second run of the same command replaces its own files
    with redirect_stdout(io.StringIO()):
        assert run_cli(report.main, [str(runs["a"]), "--out", str(out)]) == 0
    assert "restarts" in (out / "report.html").read_text()


def _error(argv: list[str]) -> str:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert run_cli(report.main, argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow  # the `runs` fixture: three short trainings (~15-35 s)
def test_report_bad_input_is_one_line_and_touches_nothing(runs: dict, tmp_path: Path) -> None:
    assert "has no metrics.jsonl" in _error([str(tmp_path), "--out", str(tmp_path / "o")])
    assert "does not exist" in _error([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    a = str(runs["a"])
    assert "given twice" in _error([a, a, "--out", str(tmp_path / "o")])
    assert "is a file" in _error([a, "--out", str(runs["a"] / "metrics.jsonl")])
    # a report.html or plot that someone else wrote is never replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "loss.png").write_bytes(b"my own picture")
    msg = _error([a, "--out", str(foreign)])
    assert "loss.png exists and was not written by gpt2repro.report" in msg
    assert (foreign / "loss.png").read_bytes() == b"my own picture"
    assert not (foreign / "report.html").exists()
    # a malformed metrics line is skipped and counted, not fatal
    copy = tmp_path / "copy"
    copy.mkdir()
    lines = (runs["a"] / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, '{"step": 3, "loss": 2.')  # torn
    lines.insert(5, "[1, 2]")  # JSON, but not a record
    lines.insert(7, '{"step": "x", "tokens": 3}')  # a record, but no step
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert run_cli(report.main, [str(copy), "--out", str(tmp_path / "o2"), "--no-png"]) == 0
    assert "3 malformed line(s) skipped (first: line 4)" in err.getvalue()
    assert _summary((tmp_path / "o2" / "report.html").read_text(), ODD_NAME)[-1] == "3"
    assert not list((tmp_path / "o2").glob("*.png"))


def test_only_the_reports_own_files_count_as_ours(tmp_path: Path) -> None:
    """A page or picture of the user's that merely mentions gpt2repro.report is never replaced;
    the report's own marks (its generator tag, its PNG Software chunk) are recognised."""
    records = [{"step": s, "tokens": 1000 * s, "time": 100.0 + s, "loss": 5.0 - s / 10}
               for s in range(1, 5)]  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    out.mkdir()
    notes = (
        "<!DOCTYPE html><html><head><title>notes</title></head><body>\n"
        "<p>made with gpt2repro.report; its tag is "
        "&lt;meta name=&quot;generator&quot; content=&quot;gpt2repro.report&quot;&gt;</p>\n"
        '<pre><meta name="generator" content="gpt2repro.report"></pre></body></html>\n'
    )
    (out / "report.html").write_text(notes)
    (out / "notes.html").write_text(notes)
    picture = b"\x89PNG\r\n\x1a\n" + b"my plot, not from gpt2repro.report"
    (out / "loss.png").write_bytes(picture)
    assert not any(report.is_ours(out / n) for n in ("report.html", "notes.html", "loss.png"))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert run_cli(report.main, [str(run_dir), "--out", str(out), "--no-png"]) == 2
    assert "report.html exists and was not written by gpt2repro.report" in err.getvalue()
    assert (out / "report.html").read_text() == notes and (out / "notes.html").read_text() == notes
    (out / "report.html").unlink()
    (out / "loss.png").unlink()
    written = report.write_report([run_dir], out)
    assert (out / "report.html") in written and (out / "loss.png") in written
    assert all(report.is_ours(p) for p in written)
    report.write_report([run_dir], out)  # its own files are replaced
    assert (out / "notes.html").read_text() == notes


def test_live_report_failure_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    """A report.html the trainer did not write blocks every update: one warning, rc 0."""
    from test_train import args_for

    corpus = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_shard(corpus / "t_val_000000.bin", rng.integers(0, 500, 5000).astype(np.uint16))
    write_shard(corpus / "t_train_000001.bin", rng.integers(0, 500, 20000).astype(np.uint16))
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "report.html").write_text("<p>my notes</p>")
    p = run(
        args_for(
            corpus, rd, "--train.max_steps=4", "--eval.every=1", "--eval.val_tokens=256",
            "--checkpoint.every=0",
        )
    )  # fmt: skip
    assert p.stderr.count("warning: live report") == 1, p.stderr
    assert "training goes on" in p.stderr
    assert (rd / "DONE").exists()
    assert (rd / "report.html").read_text() == "<p>my notes</p>"


@pytest.mark.slow  # the `runs` fixture: three short trainings (~15-35 s)
def test_report_in_headless_chromium(runs: dict, tmp_path: Path) -> None:
    """The page as a person sees it: every plot frame is on screen, the seven plots with data
    carry both runs' colours, the two without (MFU, memory on CPU) say why."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    out = tmp_path / "out"
    with redirect_stdout(io.StringIO()):
        assert run_cli(report.main, [str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    shot = Path(os.environ.get("GPT2REPRO_SCREENSHOT", tmp_path / "screenshot.png"))
    p = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}", "--window-size=1240,2500",
            (out / "report.html").as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), p.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # Plot frames: one-pixel lines of exactly the frame colour (crispEdges).
    frame = np.abs(img - _rgb("#bbbbbb")).sum(axis=2) <= 6
    # top and bottom edges: five rows (two plots a row, one in the last; a frame is ~480 px)
    rows = np.flatnonzero(frame.sum(axis=1) >= 400)
    cols = np.flatnonzero(frame.sum(axis=0) >= 150)  # left and right edges, 4-5 plots a column
    assert len(rows) == 10 and len(cols) == 4, (rows, cols)
    names = ["loss", "loss_zoom", "hellaswag", "core", "grad_norm", "lr", "tokens_per_s", "mfu",
             "memory"]  # fmt: skip
    for i, name in enumerate(names):
        (top, bottom), (left, right) = (
            rows[2 * (i // 2) : 2 * (i // 2) + 2],
            cols[2 * (i % 2) : 2 * (i % 2) + 2],
        )
        inside = img[top + 2 : bottom - 1, left + 2 : right - 1]
        if name in ("mfu", "memory"):  # nothing measured on CPU: a note, not a blank box
            assert (inside.min(axis=2) < 180).sum() > 200, name
            continue
        for color in report.PALETTE[1 if name == "lr" else 0 : 2]:  # lr: b's line over a's
            near = np.abs(inside - _rgb(color)).sum(axis=2) < 60
            assert near.sum() > 40, (name, color, int(near.sum()))


def test_one_drawing_feeds_the_svg_and_the_png(tmp_path: Path) -> None:
    """A panel is laid out once (limits, ticks, thinned lines); the SVG draws exactly that."""
    xs = [float(i) for i in range(5000)]
    series = plot.Series("s", report.PALETTE[0], xs, [2.0 + x / 5000 for x in xs])
    panel = plot.Panel("p", "P", "y", [series], [plot.HLine(1.0, "ref")], x_max=8000.0,
                       from_zero=True)  # fmt: skip
    d = plot.drawing(panel)
    assert d.x_lim == (0.0, 8000.0) and d.y_lim[0] == 0.0 and d.y_lim[1] > 3.0
    assert len(d.lines[0].xs) <= plot.MAX_POINTS and d.lines[0].xs[-1] == 4999.0
    assert all(d.y_lim[0] <= t <= d.y_lim[1] for t in d.y_ticks) and len(d.x_ticks) >= 3
    assert d.legend == [("s", report.PALETTE[0], "solid"), ("ref", plot.REFERENCE_COLOR, "dashed")]
    svg = plot.panel_svg(d)
    points = re.search(r'<polyline class="series" points="([^"]*)"', svg)
    assert svg.count("<polyline") == 1 and points
    assert len(points.group(1).split()) == len(d.lines[0].xs)
    assert all(f">{plot.format_number(t)}</text>" in svg for t in d.x_ticks + d.y_ticks)
    empty = plot.drawing(
        plot.Panel("q", "Q", "y", [plot.Series("s", "#000000", [], [])], note="why")
    )
    assert empty.empty and empty.note == "why" and "why" in plot.panel_svg(empty)
    pytest.importorskip("matplotlib")
    assert plot.write_pngs([d, empty], tmp_path, software="me") == [
        tmp_path / "p.png",
        tmp_path / "q.png",
    ]


def test_report_help_loads_no_torch() -> None:
    """`python -m gpt2repro.report --help` (and reading runs) stays torch-free: quick on a laptop."""
    code = (
        "import runpy, sys; sys.argv = ['report', '--help']\n"
        "try:\n    runpy.run_module('gpt2repro.report', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--no-png" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "NO-TORCH"


@pytest.mark.parametrize("enabled", [True, False])
def test_live_report_writes_the_page_only_when_enabled(tmp_path: Path, enabled: bool) -> None:
    """The trainer's page (LiveReport, redrawn by RunLog after an evaluation and at the end) and its switch
    (`log.report` on rank 0); the page reloads until DONE appears."""
    from gpt2repro.config import build_config
    from gpt2repro.metrics import RunLog

    cfg = build_config(overrides=[("log.report", str(enabled).lower()), ("run.dir", str(tmp_path))])
    live = report.LiveReport(tmp_path, enabled=cfg.log.report)
    log = RunLog(tmp_path, cfg, is_main=True, page=live)
    log.record({"event": "start", "step": 0, "tokens": 0, "config": {}}, wandb=False)
    log.evaluation(0, 0, {"val_loss": 10.9}, seconds=0.5)  # redraws the page
    page = tmp_path / "report.html"
    assert page.exists() == enabled
    if enabled:
        assert 'http-equiv="refresh"' in page.read_text()
    (tmp_path / "DONE").write_text("{}\n")
    log.close()  # the last drawing
    assert page.exists() == enabled
    if enabled:
        assert 'http-equiv="refresh"' not in page.read_text()
    assert not live.warned


@pytest.mark.parametrize("field", ["tokens", "time"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_tokens_or_time_is_a_malformed_line_not_a_crash(
    tmp_path: Path, field: str, value: str
) -> None:
    # Python's json reads Infinity/NaN as floats: such a line must be skipped and counted like
    # any other malformed line, not crash the axis ticks or make the wall time infinite.
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    odd = {"step": "1", "tokens": "100", "time": "1.5", "loss": "3.0", field: value}
    odd_line = "{" + ", ".join(f'"{k}": {v}' for k, v in odd.items()) + "}"
    (run_dir / "metrics.jsonl").write_text(
        '{"event": "start", "step": 0, "tokens": 0, "time": 1.0}\n'
        f"{odd_line}\n"
        '{"step": 2, "tokens": 200, "loss": 2.0, "time": 2.0}\n'
    )
    out = tmp_path / "o"
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert run_cli(report.main, [str(run_dir), "--out", str(out), "--no-png"]) == 0
    assert "1 malformed line(s) skipped" in err.getvalue()
    run = load_run(run_dir)
    assert [r["step"] for r in run.train] == [2]
    assert run.wall_s == 1.0


@pytest.mark.parametrize(
    "source, seq_len, drawn",
    [
        pytest.param("HuggingFaceFW/fineweb-edu", 1024, True, id="fineweb-edu-1024"),
        pytest.param("HuggingFaceFW/fineweb-edu", 512, False, id="fineweb-edu-512"),
        pytest.param("HuggingFaceFW/fineweb", 1024, False, id="fineweb-not-edu"),
        pytest.param(None, 1024, False, id="named-fineweb-no-manifest"),
    ],
)
def test_gpt2_val_loss_line_only_where_comparable(
    tmp_path: Path, source: str | None, seq_len: int, drawn: bool
) -> None:
    """OpenAI GPT-2 124M's 3.2924 is drawn on the loss plot only for a run on FineWeb-Edu shards
    (by the data directory's manifest.json, not its name) with 1024-token windows."""
    data = tmp_path / "edu_fineweb10B"  # the name alone says nothing
    data.mkdir()
    if source is not None:
        settings = {"source": {"kind": "huggingface", "path": source, "name": "sample-10BT"}}
        (data / "manifest.json").write_text(json.dumps({"complete": True, "settings": settings}))
    config = {"data": {"dir": str(data)}, "train": {"seq_len": seq_len}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"event": "start", "step": 0, "tokens": 0, "time": 1.0, "config": config})
        + "\n"
        + json.dumps({"step": 1, "tokens": 100, "loss": 3.0, "time": 2.0})
        + "\n"
    )
    loss = next(p for p in report.panels([report.load_run(run_dir)]) if p.key == "loss")
    assert any("3.2924" in h.label for h in loss.hlines) == drawn


def _gpt2_scale_run(
    run_dir: Path, steps: int = 12_000, *, t0: float = 1_800_000_000.0, end: str | None = None
) -> Path:
    """A synthetic metrics.jsonl at GPT-2 scale on FineWeb-Edu: train loss from 11 falling to
    about 3.3 over 12,000 steps (log every 10), validation every 250 steps, a spike the guard
    skipped, a resume that changed the validation budget, samples; 0.5 M tokens and 0.3 s a
    step, plus 10 s for each evaluation (so the wall-clock rate is below the steps' own)."""
    data = run_dir.parent / "edu_fineweb10B"
    data.mkdir(exist_ok=True)
    settings = {"source": {"kind": "huggingface", "path": "HuggingFaceFW/fineweb-edu"}}
    (data / "manifest.json").write_text(json.dumps({"complete": True, "settings": settings}))
    cfg = {
        "data": {"dir": str(data)},
        "train": {"seq_len": 1024, "max_steps": 19_073, "total_batch_tokens": 524_288},
        "run": {"name": "gpt2-124m"},
    }
    run_dir.mkdir()
    lines, now, skipped = [], t0, 0
    lines.append({"event": "start", "step": 0, "tokens": 0, "time": now, "config": cfg})
    for step in range(10, steps + 1, 10):
        now += 3.0 + (10.0 if step % 250 == 0 else 0.0)
        tokens = step * 524_288
        smooth = 3.25 + 7.75 * math.exp(-step / 600)
        loss = smooth + 0.05 * math.sin(step)
        if step == 6_000:  # a spike: skipped by the guard
            loss, skipped = 9.0, skipped + 1
        rec = {"step": step, "tokens": tokens, "loss": loss, "lr": 6e-4, "grad_norm": 0.4,
               "skipped": skipped, "time": now}  # fmt: skip
        if step == 6_000:
            rec["grad_norm"] = 7.5
        lines.append(rec)
        if step % 250 == 0:
            lines.append({"step": step, "tokens": tokens, "val_loss": smooth + 0.02, "time": now})
        if step == 4_000:
            lines.append({"event": "resume", "step": step, "tokens": tokens, "time": now,
                          "config": cfg, "changed": ["eval.val_tokens"]})  # fmt: skip
        if step % 2_000 == 0:
            lines.append({"step": step, "tokens": tokens, "time": now,
                          "sample": f"Hello, I'm a language model,\nstep {step}"})  # fmt: skip
    if end:
        lines.append({"event": end, "step": steps, "tokens": steps * 524_288, "time": now,
                      "error": "CUDA error: an illegal memory access"})  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def test_the_zoomed_loss_panel_reads_at_gpt2_scale(tmp_path: Path) -> None:
    """Loss from 11 to 3.3 over 12,000 steps: the full panel spans it all; the zoomed one spans
    the later losses and GPT-2's 3.2924 (a spike does not set it), with the resume that changed
    a setting marked; the skipped update is a marker on the grad-norm panel."""
    run = load_run(_gpt2_scale_run(tmp_path / "run"))
    by_key = {p.key: plot.drawing(p) for p in report.panels([run])}
    full, zoom = by_key["loss"], by_key["loss_zoom"]
    assert full.y_lim[0] < 3.3 and full.y_lim[1] > 10.5
    lo, hi = zoom.y_lim
    assert 3.0 < lo < 3.29 and 3.35 < hi < 4.0, zoom.y_lim  # where the run meets the baseline
    assert any("3.2924" in h.label for h in zoom.hlines)
    assert [v.label for v in zoom.vlines] == ["resume at step 4000: eval.val_tokens"]
    svg = plot.panel_svg(zoom)
    assert 'clip-path="url(#clip-loss_zoom)"' in svg and "eval.val_tokens" in svg
    grad = by_key["grad_norm"]
    skips = [s for s in grad.lines if s.label == "skipped updates"]
    assert len(skips) == 1 and skips[0].xs == [6_000 * 524_288] and skips[0].ys == [7.5]
    # on a log scale: ticks are powers of ten, step 0's points left out
    logged = {p.key: plot.drawing(p) for p in report.panels([run], log_x=True)}["loss"]
    assert logged.log_x and logged.x_lim[0] == 10 * 524_288
    assert all(math.log10(t).is_integer() for t in logged.x_ticks) and len(logged.x_ticks) >= 3


def test_status_line_running_stalled_preempted_crashed(tmp_path: Path) -> None:
    """The first line tells a live run from a dead one: running with a wall-clock ETA (which
    counts the evaluations' time), stalled after STALE intervals without a record, preempted,
    crashed with its error, done."""
    run = load_run(_gpt2_scale_run(tmp_path / "live"))
    last = run.last_time
    assert last is not None and run.record_interval_s == 3.0
    # 0.5 M tokens per 3 s, plus 10 s per 25 steps: the ETA from the wall clock, not step times
    left = run.planned_tokens - run.tokens
    rate = (run.session_train[-1]["tokens"] - run.session_train[-200]["tokens"]) / (
        run.session_train[-1]["time"] - run.session_train[-200]["time"]
    )
    assert run.eta_s == pytest.approx(left / rate)
    assert left / (10 * 524_288 / 3.0) < run.eta_s  # longer than step time alone says
    line = report.status_line(run, now=last + 5)
    assert "running" in line and "step 12,000 / 19,073" in line and "ETA " in line
    assert f'data-stale-after="{last + report.STALE_AFTER_MIN_S:.0f}"' in line
    stalled = report.status_line(run, now=last + 3_700)
    assert "stalled: no record for 1h01m" in stalled and "status-bad" in stalled
    for end, text in (("preempted", "preempted at step 12000"), ("crashed", "crashed at step")):
        page = report.status_line(load_run(_gpt2_scale_run(tmp_path / end, end=end)))
        assert text in page and "ETA" not in page
        assert ("illegal memory access" in page) == (end == "crashed")
    samples = report.samples_html(run)
    assert "step 12,000" in samples and "Hello, I&#x27;m a language model,\nstep 12000" in samples
    assert "\\n" not in samples  # text, not a repr


def test_report_out_goes_through_the_output_path_check(tmp_path: Path) -> None:
    """`--out` under a file was a NotADirectoryError traceback after reading every run."""
    records = [{"step": s, "tokens": 1000 * s, "time": 100.0 + s, "loss": 5.0 - s / 10}
               for s in range(1, 4)]  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "afile").write_text("x")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        status = run_cli(report.main, [str(run_dir), "--out", str(tmp_path / "afile" / "r")])
    lines = err.getvalue().strip().splitlines()
    assert status == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith(f"error: --out {tmp_path / 'afile' / 'r'} lies under")


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EIO"])
def test_live_report_io_error_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_name: str
) -> None:
    """A full disk (or an I/O error) while writing the live page: one warning, never raised."""
    import errno
    import os

    code = getattr(errno, errno_name)

    def failing(run_dir: Path) -> Path:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(report, "write_live", failing)
    live = report.LiveReport(tmp_path, enabled=True)
    err = io.StringIO()
    with redirect_stderr(err):
        for _ in range(3):
            live.update()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: live report")
    assert os.strerror(code) in lines[0] and "training goes on" in lines[0]


@pytest.mark.parametrize(
    ("model", "optim", "label"),
    [
        ({}, {}, "faithful GPT-2, AdamW"),
        ({"arch": "gpt2"}, {"name": "adamw"}, "faithful GPT-2, AdamW"),
        ({"arch": "modern"}, {"name": "muon"}, "modern architecture, Muon + AdamW"),
        (
            {"arch": "modern", "qk_norm": False},
            {"name": "muon"},
            "modern architecture (qk_norm off), Muon + AdamW",
        ),
        ({"arch": "gpt2", "rotary": True}, {}, "gpt2 architecture (rotary on), AdamW"),
    ],
)
def test_the_report_labels_the_recipe(tmp_path: Path, model: dict, optim: dict, label: str) -> None:
    """Which recipe a run used (the faithful and the fast recipe side by side), on the status
    line and in the run's details, from its config."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"model": model, "optim": optim, "train": {"max_steps": 2}}
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"event": "start", "step": 0, "tokens": 0, "time": 1.0, "config": config}) + "\n"
    )
    run = load_run(run_dir)
    assert report.recipe(run) == label
    assert f" · {html.escape(label)} · " in report.status_line(run)
    page = report.render_html([run], [], refresh_s=None)
    assert f"<tr><th>recipe</th><td>{html.escape(label)}</td></tr>" in page
