"""The run report: one self-contained page (plus PNG plots) from metrics.jsonl alone.

    python -m gpt2repro.report runs/gpt2_124m [runs/other ...] --out report/

writes `report/report.html` (inline SVG plots and CSS, no scripts, fonts or network: it opens
from a copied file) and one PNG per plot (matplotlib, the `report` extra). Several runs are
overlaid, one colour each. The plots are against training tokens: train and validation loss,
HellaSwag with the published GPT-2 124M and GPT-3 125M lines (both acc_norm conventions), learning
rate, tokens/s, MFU and peak memory; a table sums each run up (best validation loss, final
HellaSwag, tokens, wall time, GPU-hours, skipped updates, restarts), and each run's config, git
SHA and versions follow.

Live: rank 0 of the trainer rewrites RUN_DIR/report.html after each evaluation (`LiveReport`,
switched by `log.report`). Until RUN_DIR/DONE exists the page reloads itself every
`REFRESH_S` seconds, so `python -m http.server -d RUN_DIR` or the opened file is a dashboard.
A failing live report warns once and never stops training.

Existing files are overwritten only if this module wrote them (report.html carries its generator
meta tag, the PNGs a `Software` text chunk; only those exact marks count, not a mention of the
module's name); every file is written atomically.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2repro.atomic import atomic_open
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.reference import GPT2_124M_VAL_LOSS, PUBLISHED, gpt2_val_loss_comparable

REPORT_HTML = "report.html"
GENERATOR = "gpt2repro.report"
# The marks is_ours looks for, exactly as this module writes them: the page's generator tag, and
# the PNG tEXt chunk matplotlib writes for metadata={"Software": GENERATOR} (length, type, value).
_HTML_MARK = f'<meta name="generator" content="{GENERATOR}">'.encode()
_PNG_TEXT = f"Software\0{GENERATOR}".encode("latin-1")
_PNG_MARK = len(_PNG_TEXT).to_bytes(4, "big") + b"tEXt" + _PNG_TEXT
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFRESH_S = 30  # seconds between reloads of a live page
MAX_POINTS = 2000  # per plotted series; longer ones are thinned evenly (the page stays small)
# Distinct, colour-blind-friendly run colours (matplotlib's tab10, which the PNGs use too).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
REFERENCE_COLOR = "#555555"
_NUMBER = (int, float)  # a tuple: `int | float` would build a new union object on every check


# --------------------------------------------------------------------------- reading a run


@dataclass
class Run:
    """What the report knows about one run, all from RUN_DIR/metrics.jsonl (and DONE)."""

    dir: Path
    label: str
    header: dict[str, Any]  # the newest start/resume record ({} when there is none)
    train: list[dict[str, Any]]  # train-step records by step, a resume's re-logged steps winning
    evals: list[dict[str, Any]]  # evaluation records by step, merged the same way
    wall_s: float | None  # seconds of training sessions (start/resume to their last line)
    wall_estimated: bool  # True: summed from step times (a metrics file without `time`)
    gpu_hours: float | None  # wall time x GPUs, CUDA sessions only
    restarts: int  # resume events
    preemptions: int
    last_event: str | None  # the newest event line: start, resume, preempted or done
    done: bool  # RUN_DIR/DONE exists
    git_shas: list[str] = field(default_factory=list)  # every distinct SHA, oldest first
    malformed: list[int] = field(default_factory=list)  # numbers of the lines that are not JSON
    unusable: int = 0  # JSON lines without a valid step/tokens/header (skipped too)

    @property
    def n_malformed(self) -> int:
        return len(self.malformed) + self.unusable

    def section(self, name: str) -> dict[str, Any]:
        """One section of the run's resolved config ({} when absent)."""
        config = self.header.get("config")
        part = config.get(name) if isinstance(config, dict) else None
        return part if isinstance(part, dict) else {}

    @property
    def max_steps(self) -> int | None:
        return self.section("train").get("max_steps")

    @property
    def planned_tokens(self) -> int:
        """max_steps x total_batch_tokens from the config (0 when unknown)."""
        train = self.section("train")
        steps, batch = train.get("max_steps"), train.get("total_batch_tokens")
        return steps * batch if isinstance(steps, int) and isinstance(batch, int) else 0

    @property
    def last_step(self) -> int:
        steps = [r["step"] for r in (*self.train, *self.evals)]
        return max(steps, default=int(self.header.get("step", 0)))

    @property
    def tokens(self) -> int:
        toks = [r.get("tokens", 0) for r in (*self.train, *self.evals)]
        return max(toks, default=int(self.header.get("tokens", 0)))


def load_run(run_dir: str | Path) -> Run:
    """Read RUN_DIR/metrics.jsonl into a Run; a missing file or one without records is a
    UserError, a malformed line is skipped and counted."""
    from gpt2repro.metrics import read_metrics

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {run_dir} does not exist; pass the run.dir of a training run"
        )
    if not path.is_file():
        raise UserError(
            f"{run_dir} has no metrics.jsonl; pass a training run directory (its run.dir), "
            "where train.py writes metrics.jsonl"
        )
    malformed: list[int] = []
    try:
        records = read_metrics(path, malformed)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    usable = [r for r in records if _usable(r)]
    unusable = len(records) - len(usable)
    records = usable
    if not records:
        raise UserError(f"{path} holds no metrics records yet; run training first")

    header: dict[str, Any] = {}
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    shas: list[str] = []
    restarts = preemptions = 0
    last_event = None
    for r in records:
        event = r.get("event")
        last_event = event or last_event
        if event in ("start", "resume"):
            header = r
            restarts += event == "resume"
            sha = r.get("git_sha")
            if sha and sha not in shas:
                shas.append(sha)
        elif event == "preempted":
            preemptions += 1
        elif event is None and "loss" in r:
            train[r["step"]] = r  # the later line of a re-logged step wins
        elif event is None and any(k in r for k in ("val_loss", "hellaswag_acc_norm")):
            evals.setdefault(r["step"], {}).update(r)
    train_list = [train[s] for s in sorted(train)]
    wall_s, estimated, gpu_hours = _wall_time(records, train_list)
    config = header.get("config")
    run_section = config.get("run") if isinstance(config, dict) else None
    config_name = run_section.get("name") if isinstance(run_section, dict) else None
    return Run(
        dir=run_dir,
        label=str(config_name or run_dir.name or run_dir.resolve().name),
        header=header,
        train=train_list,
        evals=[evals[s] for s in sorted(evals)],
        wall_s=wall_s,
        wall_estimated=estimated,
        gpu_hours=gpu_hours,
        restarts=restarts,
        preemptions=preemptions,
        last_event=last_event,
        done=(run_dir / "DONE").exists(),
        git_shas=shas,
        malformed=malformed,
        unusable=unusable,
    )


def _number(v: Any) -> bool:
    """A finite int or float (json reads Infinity and NaN as floats; bools are ints)."""
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)


def _usable(r: dict[str, Any]) -> bool:
    """A record the report can use: a step and token count, and a header of the right types
    (values of a wrong type elsewhere are simply not plotted)."""
    if not (isinstance(r.get("step"), int) and not isinstance(r["step"], bool) and r["step"] >= 0):
        return False
    if "tokens" in r and not _number(r["tokens"]):
        return False
    if "time" in r and not _number(r["time"]):
        return False
    if r.get("event") in ("start", "resume"):
        kinds = {"config": dict, "versions": dict, "argv": list, "gpus": list, "world_size": int}
        return all(isinstance(r[k], t) for k, t in kinds.items() if k in r)
    return True


def _wall_time(
    records: list[dict[str, Any]], train: list[dict[str, Any]]
) -> tuple[float | None, bool, float | None]:
    """(seconds, estimated?, GPU-hours). Each session runs from its start/resume line to its last
    line; the gaps between a crash and its restart are not counted. Without `time` fields (older
    files) the step times are summed instead, which leaves out evaluation and checkpoints."""
    sessions: list[list[Any]] = []  # [first time, last time, GPUs or 0]
    for r in records:
        if r.get("event") in ("start", "resume") or not sessions:
            on_cuda = str(r.get("device", "")).startswith("cuda")
            sessions.append([None, None, int(r.get("world_size", 1)) if on_cuda else 0])
        t = r.get("time")
        if _number(t):
            sessions[-1][0] = t if sessions[-1][0] is None else sessions[-1][0]
            sessions[-1][1] = t
    if any(s[0] is not None for s in sessions):
        spans = [(s[1] - s[0], s[2]) for s in sessions if s[0] is not None]
        wall = sum(span for span, _ in spans)
        gpus = [(span, n) for span, n in spans if n > 0]
        return wall, False, (sum(span * n for span, n in gpus) / 3600 if gpus else None)
    if not train or any(r.get("step_ms") is None for r in train):
        return None, False, None
    wall, prev = 0.0, 0
    for r in train:
        wall += r["step_ms"] / 1000 * max(0, r["step"] - prev)
        prev = r["step"]
    return wall, True, None


# --------------------------------------------------------------------------- what to plot


@dataclass
class Series:
    label: str
    color: str
    xs: list[float]
    ys: list[float]
    dash: str = "solid"  # solid, dashed, dotted, dashdot (matplotlib's names)
    markers: bool = False
    width: float = 1.5


@dataclass
class HLine:
    """A published figure, drawn across the whole plot."""

    y: float
    label: str
    dash: str = "dashed"
    color: str = REFERENCE_COLOR


@dataclass
class Panel:
    key: str  # file name stem of the PNG
    title: str
    ylabel: str
    series: list[Series]
    hlines: list[HLine] = field(default_factory=list)
    note: str = ""  # shown when the panel has no data; a reason, never a blank box
    x_max: float = 0.0  # the x axis reaches at least this far (a live run's planned tokens)
    from_zero: bool = False  # the y axis starts at 0 (rates and sizes: a dip looks its size)


def _published(name: str) -> tuple[float | None, float | None, float | None]:
    """(acc, acc_norm, acc_norm_char) of a row of reference.PUBLISHED (docs/reference.md)."""
    for row_name, acc, norm, char in PUBLISHED:
        if row_name == name:
            return acc, norm, char
    raise KeyError(name)


def hellaswag_references() -> list[HLine]:
    """GPT-2 124M in both acc_norm conventions and GPT-3 125M (docs/reference.md)."""
    _, gpt2_token, _ = _published("GPT-2 124M (OpenAI, reference script)")
    _, _, gpt2_char = _published("GPT-2 124M (OpenAI)")
    _, gpt3, _ = _published("GPT-3 125M (paper)")
    assert gpt2_token is not None and gpt2_char is not None and gpt3 is not None
    return [
        HLine(gpt2_token, f"GPT-2 124M, acc_norm per token ({gpt2_token:.4f})", "dashed"),
        HLine(gpt2_char, f"GPT-2 124M, acc_norm per char, lm-eval ({gpt2_char:.4f})", "dotted"),
        HLine(gpt3, f"GPT-3 125M, paper ({gpt3:.3f})", "dashdot", "#000000"),
        HLine(0.25, "chance (0.25)", "dotted", "#aaaaaa"),
    ]


def _column(
    records: list[dict[str, Any]], key: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(tokens, values) of the records that carry a finite `key`."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, _NUMBER) and math.isfinite(v):
            xs.append(float(r.get("tokens", 0)))
            ys.append(float(v) * scale)
    return xs, ys


def panels(runs: Sequence[Run]) -> list[Panel]:
    """The six plots of the report, every run overlaid in its colour."""
    multi = len(runs) > 1
    loss: list[Series] = []
    hs: list[Series] = []
    lr: list[Series] = []
    tps: list[Series] = []
    mfu: list[Series] = []
    mem: list[Series] = []
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        name = f"{run.label} " if multi else ""
        loss.append(Series(f"{name}train", color, *_column(run.train, "loss"), width=1.2))
        loss.append(
            Series(f"{name}val", color, *_column(run.evals, "val_loss"), "dashed", True, 2.0)
        )
        hs.append(
            Series(
                f"{name}acc_norm per token",
                color,
                *_column(run.evals, "hellaswag_acc_norm"),
                markers=True,
                width=2.0,
            )
        )
        hs.append(
            Series(
                f"{name}acc_norm per char",
                color,
                *_column(run.evals, "hellaswag_acc_norm_char"),
                "dotted",
                True,
            )
        )
        lr.append(Series(f"{name}lr", color, *_column(run.train, "lr")))
        tps.append(Series(f"{name}tokens/s", color, *_column(run.train, "tok_per_s")))
        mfu.append(Series(f"{name}MFU", color, *_column(run.train, "mfu", 100.0)))
        mem.append(Series(f"{name}peak memory", color, *_column(run.train, "mem_gib")))
    # OpenAI GPT-2 124M's val loss: only beside runs measured as it was (FineWeb-Edu, T = 1024)
    on_fineweb = any(
        gpt2_val_loss_comparable(
            r.section("data").get("dir", ""), r.section("train").get("seq_len")
        )
        for r in runs
    )
    loss_refs = (
        [HLine(GPT2_124M_VAL_LOSS, f"OpenAI GPT-2 124M, FineWeb-Edu val ({GPT2_124M_VAL_LOSS})")]
        if on_fineweb
        else []
    )
    x_max = float(max(r.planned_tokens for r in runs))
    plots = [
        Panel("loss", "Loss", "cross-entropy (nats/token)", loss, loss_refs, "no loss logged yet"),
        Panel(
            "hellaswag",
            "HellaSwag",
            "accuracy",
            hs,
            hellaswag_references(),
            "no HellaSwag evaluations yet"
            if any(r.section("eval").get("hellaswag_every") for r in runs)
            else "no HellaSwag evaluations (eval.hellaswag_every = 0)",
        ),
        Panel("lr", "Learning rate", "lr", lr, note="no train steps logged yet", from_zero=True),
        Panel(
            "tokens_per_s",
            "Throughput",
            "tokens/s (all ranks)",
            tps,
            note="no train steps logged yet",
            from_zero=True,
        ),
        Panel(
            "mfu",
            "MFU",
            "% of dense bf16 peak",
            mfu,
            note="MFU n/a: CPU run or a GPU whose peak is not known",
            from_zero=True,
        ),
        Panel(
            "memory",
            "Peak memory",
            "GiB allocated (rank 0)",
            mem,
            note="no CUDA memory figures (CPU run)",
            from_zero=True,
        ),
    ]
    for p in plots:
        p.x_max = x_max
    return plots


def _has_data(panel: Panel) -> bool:
    return any(s.xs for s in panel.series)


def _thin(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list, list]:
    """At most `limit` evenly spaced points, the last one always kept."""
    if len(xs) <= limit:
        return xs, ys
    stride = math.ceil(len(xs) / limit)
    idx = list(range(0, len(xs), stride))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


# --------------------------------------------------------------------------- SVG (no matplotlib)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def format_number(v: float) -> str:
    """Short tick/table label: 1.5B, 320M, 12k, 0.003, 3.29."""
    a = abs(v)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= scale:
            return f"{v / scale:.3g}{unit}"
    return "0" if v == 0 else f"{v:.3g}"


def _limits(values: list[float], pad: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - max(abs(lo) * 0.05, 1e-9), hi + max(abs(hi) * 0.05, 1e-9)
    span = hi - lo
    return lo - pad * span, hi + pad * span


_DASH = {"solid": "", "dashed": "6 4", "dotted": "2 3", "dashdot": "8 3 2 3"}


def panel_svg(panel: Panel, width: int = 560, height: int = 300) -> str:
    """One plot as inline SVG: axes, round ticks, a polyline per series, dashed published
    lines. Everything textual is escaped."""
    e = html.escape
    left, right, top, bottom = 62, 14, 30, 40
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg class="plot" data-panel="{e(panel.key)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{e(panel.title)}">',
        f'<text x="{left}" y="19" class="title">{e(panel.title)}</text>',
    ]
    # crisp: exactly one pixel row/column of the frame colour (the browser test finds plots by it)
    frame = (
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame" '
        'shape-rendering="crispEdges"/>'
    )
    note_w = 7 * len(panel.note) + 16  # about 7 px a character at 13 px: a backing box
    note = (
        f'<rect x="{left + (pw - note_w) / 2:.0f}" y="{top + ph / 2 - 15:.0f}" width="{note_w}" '
        f'height="22" fill="#fff" opacity="0.92"/>'
        f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" class="note">'
        f"{e(panel.note)}</text>"
    )
    if not _has_data(panel) and not panel.hlines:
        return "".join([*out, frame, note, "</svg>"])
    xs_all = [x for s in panel.series for x in s.xs]
    ys_all = [y for s in panel.series for y in s.ys] + [h.y for h in panel.hlines]
    x0, x1 = 0.0, max([*xs_all, panel.x_max])
    if x1 <= x0:  # only step-0 evaluations of a run of unknown length
        x1 = 1.0
    y0, y1 = _limits(ys_all + ([0.0] if panel.from_zero else []), 0.06)
    if panel.from_zero:
        y0 = 0.0
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw
    sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph
    for t in _ticks(y0, y1):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{e(format_number(t))}</text>"
        )
    for t in _ticks(x0, x1):
        x = sx(t)
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">'
            f"{e(format_number(t))}</text>"
        )
    out.append(frame)  # over the grid lines, under the data
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        "training tokens</text>"
    )
    out.append(
        f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="axis">{e(panel.ylabel)}</text>'
    )
    for h in panel.hlines:
        y = sy(h.y)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{h.color}" '
            f'stroke-width="1.2" stroke-dasharray="{_DASH[h.dash]}"><title>{e(h.label)}</title>'
            "</line>"
        )
    for s in panel.series:
        xs, ys = _thin(s.xs, s.ys)
        if not xs:
            continue
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
        dash = f' stroke-dasharray="{_DASH[s.dash]}"' if s.dash != "solid" else ""
        out.append(
            f'<polyline class="series" points="{pts}" fill="none" stroke="{s.color}" '
            f'stroke-width="{s.width}"{dash} stroke-linejoin="round"><title>{e(s.label)}</title>'
            "</polyline>"
        )
        if s.markers and len(xs) <= 200:
            out.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}"/>'
                for x, y in zip(xs, ys, strict=True)
            )
    if not _has_data(panel):  # only the published lines: the targets, and why no data
        out.append(note)
    out.append("</svg>")
    return "".join(out)


def _swatch(color: str, dash: str) -> str:
    """A short sample of a line, drawn like the line itself."""
    return (
        f'<svg width="24" height="6"><line x1="0" x2="24" y1="3" y2="3" stroke="{color}" '
        f'stroke-width="2" stroke-dasharray="{_DASH[dash]}"/></svg>'
    )


def legend_html(panel: Panel) -> str:
    """The legend under a plot: a line sample per series with data, then the published lines."""
    e = html.escape
    items = [f"<span>{_swatch(s.color, s.dash)}{e(s.label)}</span>" for s in panel.series if s.xs]
    items += [f"<span>{_swatch(h.color, h.dash)}{e(h.label)}</span>" for h in panel.hlines]
    return f'<div class="legend">{"".join(items)}</div>'


# --------------------------------------------------------------------------- PNG (matplotlib)


def write_pngs(plots: list[Panel], out_dir: Path) -> list[Path]:
    """One PNG per panel in out_dir (atomic; matplotlib's Agg canvas, no pyplot state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "PNG plots need matplotlib: pip install 'gpt2repro[report]', or pass --no-png "
            "for report.html alone"
        ) from None
    written = []
    for panel in plots:
        fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(panel.title, loc="left", fontsize=11)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        if _has_data(panel) or panel.hlines:
            for s in panel.series:
                if s.xs:
                    ax.plot(
                        s.xs,
                        s.ys,
                        color=s.color,
                        linestyle=s.dash,
                        linewidth=s.width,
                        marker="o" if s.markers and len(s.xs) <= 200 else None,
                        markersize=3,
                        label=s.label,
                    )
            for h in panel.hlines:
                ax.axhline(h.y, color=h.color, linestyle=h.dash, linewidth=1.1, label=h.label)
            x_hi = max([x for s in panel.series for x in s.xs] + [panel.x_max])
            ax.set_xlim(0, x_hi if x_hi > 0 else 1.0)
            if panel.from_zero:
                ax.set_ylim(bottom=0)
            ax.xaxis.set_major_formatter(lambda v, _pos: format_number(v))
            ax.legend(fontsize=7, loc="best", framealpha=0.85)
            if not _has_data(panel):
                ax.set_ylim(*_limits([h.y for h in panel.hlines], 0.06))
                ax.text(
                    0.5, 0.5, panel.note, ha="center", va="center", transform=ax.transAxes,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9},
                )  # fmt: skip
        else:
            ax.text(0.5, 0.5, panel.note, ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        path = out_dir / f"{panel.key}.png"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", metadata={"Software": GENERATOR})
        written.append(path)
    return written


# --------------------------------------------------------------------------- the page

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:24px;
max-width:1180px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px}
.sub{color:#666;margin:0 0 14px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 9px;border-bottom:1px solid #e3e3e3}
th{background:#f5f5f5;font-weight:600}.summary th{vertical-align:bottom;text-align:right}
.summary td{text-align:right;white-space:nowrap}.summary td:first-child,.summary th:first-child
{text-align:left}.details th{text-align:left;white-space:nowrap}.details td{text-align:left}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.grid-plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px 18px}
figure{margin:0}svg.plot{display:block;background:#fff}
svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}svg .tick{font-size:11px;fill:#666}
svg .axis{font-size:11px;fill:#444}svg .title{font-size:14px;font-weight:600;fill:#222}
svg .note{font-size:13px;fill:#888}
.legend{font-size:12px;color:#444;padding-left:62px}.legend span{margin-right:14px;white-space:nowrap}
.legend svg{margin:0 5px 2px 0;vertical-align:middle}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
.status-done{color:#2a7d2a}.status-live{color:#b36b00}.small{font-size:12px;color:#666}
"""


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    from gpt2repro.metrics import format_duration

    return format_duration(seconds)


def _status(run: Run) -> tuple[str, str]:
    """(text, css class) of a run's state."""
    if run.done:
        return "done", "status-done"
    if run.last_event == "preempted":
        return "preempted (rerun to resume)", "status-live"
    return "in progress (or stopped)", "status-live"


def summary_rows(run: Run) -> dict[str, str]:
    """The summary table's cells for one run, as shown."""
    best = min(
        (r for r in run.evals if _number(r.get("val_loss"))),
        key=lambda r: r["val_loss"],
        default=None,
    )
    hsw = [r for r in run.evals if _number(r.get("hellaswag_acc_norm"))]
    final_hs = "—"
    if hsw:
        last = hsw[-1]
        final_hs = f"{last['hellaswag_acc_norm']:.4f}"
        if _number(last.get("hellaswag_acc_norm_char")):
            final_hs += f" / {last['hellaswag_acc_norm_char']:.4f}"
    skipped = max((r["skipped"] for r in run.train if _number(r.get("skipped"))), default=0)
    max_steps = run.max_steps if isinstance(run.max_steps, int) else None
    steps = f"{run.last_step:,}" + (f" / {max_steps:,}" if max_steps else "")
    wall = _fmt_duration(run.wall_s)
    if run.wall_estimated:
        wall = f"≈{wall} (step times)"
    return {
        "status": _status(run)[0],
        "steps": steps,
        "tokens": f"{run.tokens:,}",
        "best val loss": f"{best['val_loss']:.4f} (step {best['step']:,})" if best else "—",
        "final HellaSwag (token / char)": final_hs,
        "wall time": wall,
        "GPU-hours": f"{run.gpu_hours:.2f}" if run.gpu_hours is not None else "— (no CUDA)",
        "skipped updates": str(int(skipped)),
        "restarts": str(run.restarts),
        "malformed lines": str(run.n_malformed),
    }


def _run_details(run: Run, color: str) -> str:
    e = html.escape
    h = run.header
    versions = ", ".join(f"{k} {v}" for k, v in (h.get("versions") or {}).items())
    gpus = h.get("gpus") or []
    device = f"{h.get('world_size', '?')} x {h.get('device', '?')}" + (
        f" ({gpus[0]})" if gpus else ""
    )
    sha = " → ".join(run.git_shas) or "unknown"
    config = h.get("config")
    config_text = json.dumps(config, indent=2) if config else "(no start record)"
    rows = [
        ("run directory", str(run.dir)),
        ("git SHA", sha),
        ("versions", versions or "—"),
        ("devices", device),
        ("parameters", f"{h['n_params']:,}" if isinstance(h.get("n_params"), int) else "—"),
        ("gradient accumulation", str(h.get("grad_accum", "—"))),
        ("command", " ".join(str(a) for a in h.get("argv", [])) or "—"),
    ]
    if run.n_malformed:
        where = [f"lines {', '.join(str(n) for n in run.malformed[:10])}"] if run.malformed else []
        where += [f"{run.unusable} without a valid step, tokens or header"] if run.unusable else []
        rows.append(("malformed lines skipped", f"{run.n_malformed} ({'; '.join(where)})"))
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return (
        f'<h2><span class="swatch" style="background:{color}"></span>{e(run.label)}</h2>'
        f'<table class="details">{table}</table>'
        f"<details><summary>resolved config</summary><pre>{e(config_text)}</pre></details>"
    )


def render_html(
    runs: Sequence[Run], plots: list[Panel], *, refresh_s: int | None, png_links: bool = False
) -> str:
    """The whole page. `refresh_s`: reload interval for a live page, None for a finished one."""
    e = html.escape
    title = "gpt2repro report: " + ", ".join(r.label for r in runs)
    meta_refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sub = f"written {now} from metrics.jsonl"
    if refresh_s:
        sub += f"; reloads every {int(refresh_s)} s until the run is done"
    cols = list(summary_rows(runs[0]))
    head = "".join(f"<th>{e(c)}</th>" for c in ["run", *cols])
    body = []
    for i, run in enumerate(runs):
        cells = summary_rows(run)
        cls = _status(run)[1]
        color = PALETTE[i % len(PALETTE)]
        tds = "".join(
            f'<td class="{cls}">{e(v)}</td>' if c == "status" else f"<td>{e(v)}</td>"
            for c, v in cells.items()
        )
        body.append(
            f'<tr><td><span class="swatch" style="background:{color}"></span>{e(run.label)}'
            f"</td>{tds}</tr>"
        )
    figures = []
    for p in plots:
        link = f' <a class="small" href="{e(p.key)}.png">PNG</a>' if png_links else ""
        figures.append(f"<figure>{panel_svg(p)}{legend_html(p)}{link}</figure>")
    details = "".join(_run_details(r, PALETTE[i % len(PALETTE)]) for i, r in enumerate(runs))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"{_HTML_MARK.decode()}{meta_refresh}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{e(title)}</h1><p class="sub">{e(sub)}</p>'
        f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'
        '<p class="small">Wall time counts training sessions (start or resume to their last line), '
        "not the gaps between a crash and its restart; GPU-hours multiply it by the CUDA devices. "
        "HellaSwag: acc_norm per token is llm.c/build-nanogpt's convention, per char is "
        "lm-evaluation-harness's; GPT-2 and GPT-3 figures as in docs/reference.md (OpenAI GPT-2 "
        "via llm.c/build-nanogpt and lm-evaluation-harness; GPT-3: Brown et al. 2020, Table H.1)."
        "</p>"
        f'<h2>Plots</h2><div class="grid-plots">{"".join(figures)}</div>'
        f"{details}</body></html>\n"
    )


# --------------------------------------------------------------------------- writing


def is_ours(path: Path) -> bool:
    """Was `path` written by this module (so it may be replaced)? Missing counts as ours.

    Only the exact marks this module writes count, where it writes them: the generator meta tag
    in an HTML head, the `Software` tEXt chunk in a PNG. A user's page or notes that merely
    mention gpt2repro.report in their text are not ours."""
    if not path.exists():
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if head.startswith(_PNG_SIGNATURE):
        return _PNG_MARK in head
    return _HTML_MARK in head.split(b"<body", 1)[0]  # in the page's head, not its text


def _refuse_foreign(paths: list[Path], flag: str) -> None:
    for path in paths:
        if not is_ours(path):
            raise UserError(
                f"{flag}: {path} exists and was not written by {GENERATOR}; choose another "
                f"{flag} or move that file away"
            )


def write_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path, *, pngs: bool = True
) -> list[Path]:
    """The CLI's work: read the runs, check nothing foreign is in the way, write the PNGs and
    report.html (each atomically). Returns the paths written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory (it is created if missing)")
    seen: set[Path] = set()
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise UserError(f"run directory {d} is given twice; pass each run once")
        seen.add(key)
    runs = [load_run(d) for d in run_dirs]
    plots = panels(runs)
    targets = [out / REPORT_HTML] + ([out / f"{p.key}.png" for p in plots] if pngs else [])
    _refuse_foreign(targets, "--out")
    out.mkdir(parents=True, exist_ok=True)
    written = write_pngs(plots, out) if pngs else []
    page = render_html(runs, plots, refresh_s=None, png_links=pngs)
    with atomic_open(out / REPORT_HTML, "w") as fh:
        fh.write(page)
    for run in runs:
        if run.n_malformed:
            first = f" (first: line {run.malformed[0]})" if run.malformed else ""
            print(
                f"note: {run.dir / 'metrics.jsonl'}: {run.n_malformed} malformed line(s) "
                f"skipped{first}",
                file=sys.stderr,
            )
    return [out / REPORT_HTML, *written]


def write_live(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html from RUN_DIR/metrics.jsonl: inline SVG only (no matplotlib), reloading
    itself until RUN_DIR/DONE exists."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_HTML
    _refuse_foreign([path], "log.report")
    run = load_run(run_dir)
    page = render_html([run], panels([run]), refresh_s=None if run.done else REFRESH_S)
    with atomic_open(path, "w") as fh:
        fh.write(page)
    return path


class LiveReport:
    """The trainer's live page (rank 0, `log.report`). `update()` never raises: the first
    failure is printed once as a warning and training goes on."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.warned = False
        self.seconds = 0.0  # total time spent writing the page (docs/benchmarks.md)

    def update(self) -> None:
        if not self.enabled:
            return
        t0 = time.perf_counter()
        try:
            write_live(self.run_dir)
        except Exception as e:  # a report is never worth a lost training run
            if not self.warned:
                self.warned = True
                print(
                    f"warning: live report {self.run_dir / REPORT_HTML} not written "
                    f"({type(e).__name__}: {e}); training goes on, further report errors are not "
                    "shown (switch it off with --log.report=false)",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            self.seconds += time.perf_counter() - t0


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.report",
        description="One self-contained report.html (plus PNG plots) from runs' metrics.jsonl.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories")
    p.add_argument(
        "--out", required=True, help="directory for report.html and the PNGs (created if missing)"
    )
    p.add_argument("--no-png", action="store_true", help="write report.html only (no matplotlib)")
    add_debug_flag(p)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    written = write_report(args.run_dirs, args.out, pngs=not args.no_png)
    print(f"report: {written[0]}")
    if len(written) > 1:
        print(f"plots:  {', '.join(str(p) for p in written[1:])}")
    print(f"view:   open it in a browser, or python -m http.server -d {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
