"""The run report: one self-contained page (plus PNG plots) from metrics.jsonl alone.

    python -m gpt2repro.report runs/gpt2_124m [runs/other ...] --out report/

writes `report/report.html` (inline SVG plots and CSS, one small inline script, no fonts or
network: it opens from a copied file) and one PNG per plot (matplotlib, the `report` extra).
Several runs are overlaid, one colour each. First a status line per run (running, stalled,
preempted, crashed or done; step, tokens, the last record's time and a wall-clock ETA). The plots
are against training tokens (`--log-x`: on a log scale): train and validation loss, the same
zoomed on the run after its first fifth (where GPT-2's baseline matters), HellaSwag with the
published GPT-2 124M and GPT-3 125M lines (both acc_norm conventions), CORE with GPT-2's four
sizes and nanochat's "GPT-2 capability" bar, gradient norm with skipped
updates marked, learning rate, tokens/s, MFU and peak memory; a resume that changed a setting is
a vertical line on the loss plots. A table sums each run up (best validation loss, final
HellaSwag, tokens, wall time, GPU-hours, skipped updates, restarts); the newest text samples,
and each run's config, git SHA and versions follow. The plots are laid out and drawn by `gpt2repro.plot`.

Live: rank 0 of the trainer rewrites RUN_DIR/report.html after each evaluation and, between
them, on a train line at most once a minute (`LiveReport`, switched by `log.report`). Until RUN_DIR/DONE exists the page reloads itself every
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
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2repro.atomic import atomic_open, check_output_path
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.plot import (
    Drawing,
    HLine,
    Panel,
    Series,
    VLine,
    drawing,
    legend_html,
    panel_svg,
    write_pngs,
)
from gpt2repro.reference import (
    GPT2_124M_VAL_LOSS,
    GPT2_CORE,
    GPT2_CORE_BAR,
    GPT2_SIZES_CORE,
    PUBLISHED,
    gpt2_val_loss_comparable,
)
from gpt2repro.runs import Run, format_duration, is_finite_number, load_run

REPORT_HTML = "report.html"
GENERATOR = "gpt2repro.report"
# The marks is_ours looks for, exactly as this module writes them: the page's generator tag, and
# the PNG tEXt chunk matplotlib writes for metadata={"Software": GENERATOR} (length, type, value).
_HTML_MARK = f'<meta name="generator" content="{GENERATOR}">'.encode()
_PNG_TEXT = f"Software\0{GENERATOR}".encode("latin-1")
_PNG_MARK = len(_PNG_TEXT).to_bytes(4, "big") + b"tEXt" + _PNG_TEXT
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFRESH_S = 30  # seconds between reloads of a live page
# Distinct, colour-blind-friendly run colours (matplotlib's tab10).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


# --------------------------------------------------------------------------- what to plot


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


def core_references() -> list[HLine]:
    """GPT-2's CORE for its four sizes, nanochat's bar for "GPT-2 capability" and chance (a
    centered accuracy of 0); docs/reference.md, "CORE"."""
    dashes = {"124M": "dashed", "355M": "dashdot", "774M": "dotted", "1.5B": "solid"}
    lines = [
        HLine(GPT2_CORE[size], f"GPT-2 {size} ({GPT2_CORE[size]:.4f})", dashes[size])
        for size in GPT2_SIZES_CORE
    ]
    return [
        *lines,
        HLine(GPT2_CORE_BAR, f"GPT-2 capability: CORE > {GPT2_CORE_BAR}", "dashed", "#000000"),
        HLine(0.0, "chance (0)", "dotted", "#aaaaaa"),
    ]


def _column(
    records: list[dict[str, Any]], key: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(tokens, values) of the records that carry a finite `key`. The train loss is the mean over
    each log interval (`loss_mean`) where the record has it, else the logged step's loss."""
    xs, ys = [], []
    for r in records:
        v = r.get(key) if key != "loss" else r.get("loss_mean", r.get("loss"))
        if is_finite_number(v):
            xs.append(float(r.get("tokens", 0)))
            ys.append(float(v) * scale)
    return xs, ys


# Every series a run adds: (panel key, records "train" or "evals", metric, scale, label, dash,
# markers, line width). Evaluations are few: markers show where each one is.
_SERIES: list[tuple[str, str, str, float, str, str, bool, float]] = [
    ("loss", "train", "loss", 1.0, "train", "solid", False, 1.2),
    ("loss", "evals", "val_loss", 1.0, "val", "dashed", True, 2.0),
    ("hellaswag", "evals", "hellaswag_acc_norm", 1.0, "acc_norm per token", "solid", True, 2.0),
    (
        "hellaswag",
        "evals",
        "hellaswag_acc_norm_char",
        1.0,
        "acc_norm per char",
        "dotted",
        True,
        1.5,
    ),
    ("core", "evals", "core", 1.0, "CORE", "solid", True, 2.0),
    ("loss_zoom", "train", "loss", 1.0, "train", "solid", False, 1.2),
    ("loss_zoom", "evals", "val_loss", 1.0, "val", "dashed", True, 2.0),
    ("grad_norm", "train", "grad_norm", 1.0, "grad norm", "solid", False, 1.2),
    ("lr", "train", "lr", 1.0, "lr", "solid", False, 1.5),
    ("tokens_per_s", "train", "tok_per_s", 1.0, "tokens/s", "solid", False, 1.5),
    ("mfu", "train", "mfu", 100.0, "MFU", "solid", False, 1.5),
    ("memory", "train", "mem_gib", 1.0, "peak memory", "solid", False, 1.5),
]


ZOOM_FROM = 0.2  # the zoomed loss panel's range comes from the run after this fraction of it
STALE_AFTER_INTERVALS = 10  # a live page calls a run stalled after this many record intervals...
STALE_AFTER_MIN_S = 600.0  # ...and never sooner (an evaluation or a checkpoint takes minutes)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def zoom_range(runs: Sequence[Run], refs: Sequence[HLine]) -> tuple[float, float] | None:
    """The y limits of the zoomed loss panel: the losses after the first ZOOM_FROM of each run's
    tokens (2nd to 98th percentile of the train losses, so a spike does not set it; every
    validation loss) and the published lines, padded 8%. None before there is a loss."""
    values: list[float] = []
    for run in runs:
        cut = ZOOM_FROM * run.tokens
        _, train = _column([r for r in run.train if r["tokens"] >= cut], "loss")
        if train:
            values += [_percentile(train, 0.02), _percentile(train, 0.98)]
        values += [
            r["val_loss"]
            for r in run.evals
            if r["tokens"] >= cut and is_finite_number(r.get("val_loss"))
        ]
    if not values:
        return None
    lo, hi = min([*values, *(h.y for h in refs)]), max([*values, *(h.y for h in refs)])
    span = max(hi - lo, 0.02 * max(abs(hi), 1.0))
    return lo - 0.08 * span, hi + 0.08 * span


def _changes(run: Run) -> list[VLine]:
    """A line at each resume that changed a setting (the resume record's `changed` keys)."""
    out = []
    for r in run.resumes:
        changed = r.get("changed")
        if isinstance(changed, dict):
            changed = list(changed)
        if isinstance(changed, list) and changed:
            keys = ", ".join(str(k) for k in changed)
            out.append(VLine(float(r.get("tokens", 0)), f"resume at step {r['step']}: {keys}"))
    return out


def _skips(run: Run, color: str) -> Series:
    """Markers on the grad-norm line where the guards skipped an update (the count rose)."""
    xs, ys, prev = [], [], 0
    for r in run.train:
        count = r.get("skipped")
        if is_finite_number(count) and count > prev and is_finite_number(r.get("grad_norm")):
            xs.append(float(r["tokens"]))
            ys.append(float(r["grad_norm"]))
        prev = int(count) if is_finite_number(count) else prev
    return Series("skipped updates", color, xs, ys, "none", True, 1.0)


def panels(runs: Sequence[Run], log_x: bool = False) -> list[Panel]:
    """The nine plots of the report, every run overlaid in its colour; `log_x`: training
    tokens on a log scale."""
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
    hs_note = (
        "no HellaSwag evaluations yet"
        if any(r.section("eval").get("hellaswag_every") for r in runs)
        else "no HellaSwag evaluations (eval.hellaswag_every = 0)"
    )
    core_note = (
        "no CORE evaluations yet"
        if any(r.section("eval").get("core_every") for r in runs)
        else "no CORE evaluations (eval.core_every = 0)"
    )
    no_steps = "no train steps logged yet"
    x_max = float(max(r.planned_tokens for r in runs))
    changes = [v for r in runs for v in _changes(r)]
    # Rates and sizes start at 0 (a dip looks its size); loss and accuracy zoom on the data.
    plots = [
        Panel("loss", "Loss", "cross-entropy (nats/token)", [], loss_refs, "no loss logged yet",
              vlines=changes),
        Panel("loss_zoom", f"Loss, after the first {ZOOM_FROM:.0%} of tokens",
              "cross-entropy (nats/token)", [], loss_refs, "no loss logged yet",
              y_range=zoom_range(runs, loss_refs), vlines=changes),
        Panel("hellaswag", "HellaSwag", "accuracy", [], hellaswag_references(), hs_note),
        Panel("core", "CORE (a capped subset in the loop, the full set at the end)",
              "mean centered accuracy", [], core_references(), core_note),
        Panel("grad_norm", "Gradient norm", "global L2 norm (before clipping)", [], [], no_steps,
              from_zero=True),
        Panel("lr", "Learning rate", "lr", [], [], no_steps, from_zero=True),
        Panel("tokens_per_s", "Throughput", "tokens/s (all ranks)", [], [], no_steps, from_zero=True),
        Panel("mfu", "MFU", "% of dense bf16 peak", [], [],
              "MFU n/a: CPU run or a GPU whose peak is not known", from_zero=True),
        Panel("memory", "Peak memory", "GiB allocated (rank 0)", [], [],
              "no CUDA memory figures (CPU run)", from_zero=True),
    ]  # fmt: skip
    by_key = {p.key: p for p in plots}
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        name = f"{run.label} " if len(runs) > 1 else ""
        for key, kind, metric, scale, label, dash, markers, width in _SERIES:
            xs, ys = _column(run.evals if kind == "evals" else run.train, metric, scale)
            by_key[key].series.append(Series(name + label, color, xs, ys, dash, markers, width))
        skips = _skips(run, "#d62728")
        if skips.xs:
            skips.label = name + skips.label
            by_key["grad_norm"].series.append(skips)
    for p in plots:
        p.x_max = x_max
        p.log_x = log_x
    return plots


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
.status-done{color:#2a7d2a}.status-live{color:#b36b00}.status-bad{color:#c0392b}
.small{font-size:12px;color:#666}p.status{margin:2px 0;font-size:14px}
pre.sample{white-space:pre-wrap;font-family:Georgia,serif;font-size:13px}
"""


def stale_after_s(run: Run) -> float:
    """Seconds without a new record after which a live run counts as stalled."""
    interval = run.record_interval_s or 0.0
    return max(STALE_AFTER_MIN_S, STALE_AFTER_INTERVALS * interval)


def _status(run: Run, now: float | None = None) -> tuple[str, str]:
    """(text, css class) of a run's state at time `now` (Unix seconds; default: the clock)."""
    now = time.time() if now is None else now
    last = run.last_event_record
    if run.done:
        return "done", "status-done"
    if run.last_event == "preempted":
        return f"preempted at step {last.get('step', '?')} (rerun to resume)", "status-live"
    if run.last_event == "crashed":
        return f"crashed at step {last.get('step', '?')}", "status-bad"
    if run.last_time is not None and now - run.last_time > stale_after_s(run):
        return f"stalled: no record for {format_duration(now - run.last_time)}", "status-bad"
    return "running", "status-live"


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def status_line(run: Run, now: float | None = None) -> str:
    """One run's status as the page's first line: its state, step / max, tokens, the last
    record's time, and the ETA from the wall-clock rate; for a live run, the moment after which
    it counts as stalled (the page's script switches the line then; the text says it too)."""
    e = html.escape
    now = time.time() if now is None else now
    text, cls = _status(run, now)
    parts = [f"<b>{e(run.label)}</b>: {e(text)}", e(recipe(run))]
    max_steps = run.max_steps if isinstance(run.max_steps, int) else None
    parts.append(f"step {run.last_step:,}" + (f" / {max_steps:,}" if max_steps else ""))
    parts.append(f"{run.tokens:,} tokens")
    attrs = ""
    if run.last_time is not None:
        parts.append(f"last record {_clock(run.last_time)}")
        if cls == "status-live" and run.last_event != "preempted":
            eta = run.eta_s
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)} (about {_clock(run.last_time + eta)})")
            deadline = run.last_time + stale_after_s(run)
            parts.append(f"stalled if there is no new record by {_clock(deadline)}")
            attrs = f' data-stale-after="{deadline:.0f}" data-last="{e(_clock(run.last_time))}"'
    crashed = run.last_event_record.get("error") if run.last_event == "crashed" else None
    if crashed:
        parts.append(f"error: {e(str(crashed))}")
    return f'<p class="status {cls}"{attrs}>{" · ".join(parts)}</p>'


# Switches a live run's line to "stalled" once its deadline has passed while the page is open
# (the page reloads itself; a trainer that stopped no longer rewrites it). Inline, no network.
_STALE_SCRIPT = (
    "<script>for(const p of document.querySelectorAll('p.status[data-stale-after]')){"
    "if(Date.now()/1000>+p.dataset.staleAfter){p.className='status status-bad';"
    "p.insertAdjacentText('afterbegin','stalled: no record since '+p.dataset.last+"
    "' (the trainer may have stopped: check its log) · ');}}</script>"
)


def samples_html(run: Run, last: int = 3) -> str:
    """The newest text samples, as text (not a repr), each with its step."""
    if not run.samples:
        return ""
    e = html.escape
    items = "".join(
        f'<p class="small">step {r["step"]:,}</p><pre class="sample">{e(r["sample"])}</pre>'
        for r in run.samples[-last:][::-1]
    )
    return f"<h2>Samples: {e(run.label)}</h2>{items}"


_SWITCHES = ("rotary", "rmsnorm", "qk_norm", "relu2", "untied_head", "zero_init", "no_bias")


def recipe(run: Run) -> str:
    """Which recipe a run used, from its config: the faithful GPT-2 or a named architecture
    preset (docs/recipes.md), the switches set apart from the preset, and the optimizer."""
    model, optim = run.section("model"), run.section("optim")
    arch = str(model.get("arch") or "gpt2")
    overrides = [
        f"{k} {'on' if model[k] else 'off'}" for k in _SWITCHES if model.get(k) is not None
    ]
    cap = model.get("logit_softcap")
    if cap is not None:
        overrides.append(f"logit_softcap {cap:g}" if cap else "logit_softcap off")
    faithful = arch == "gpt2" and not any(model.get(k) for k in _SWITCHES) and not cap
    text = "faithful GPT-2" if faithful else f"{arch} architecture"
    if overrides and not faithful:
        text += f" ({', '.join(overrides)})"
    name = str(optim.get("name") or "adamw")
    return text + (
        ", Muon + AdamW" if name == "muon" else f", {'AdamW' if name == 'adamw' else name}"
    )


def summary_rows(run: Run) -> dict[str, str]:
    """The summary table's cells for one run, as shown."""
    best, hs = run.best_val, run.last_hellaswag
    final_hs = "—" if hs is None else f"{hs['hellaswag_acc_norm']:.4f}"
    if hs is not None and is_finite_number(hs.get("hellaswag_acc_norm_char")):
        final_hs += f" / {hs['hellaswag_acc_norm_char']:.4f}"
    max_steps = run.max_steps if isinstance(run.max_steps, int) else None
    steps = f"{run.last_step:,}" + (f" / {max_steps:,}" if max_steps else "")
    wall = "—" if run.wall_s is None else format_duration(run.wall_s)
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
        "skipped updates": str(run.skipped),
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
        ("recipe", recipe(run)),
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
    runs: Sequence[Run], drawings: list[Drawing], *, refresh_s: int | None, png_links: bool = False
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
    for d in drawings:
        link = f' <a class="small" href="{e(d.panel.key)}.png">PNG</a>' if png_links else ""
        figures.append(f"<figure>{panel_svg(d)}{legend_html(d)}{link}</figure>")
    details = "".join(_run_details(r, PALETTE[i % len(PALETTE)]) for i, r in enumerate(runs))
    statuses = "".join(status_line(r) for r in runs)
    samples = "".join(samples_html(r) for r in runs)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"{_HTML_MARK.decode()}{meta_refresh}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{e(title)}</h1><p class="sub">{e(sub)}</p>{statuses}{_STALE_SCRIPT}'
        f'<table class="summary"><tr>{head}</tr>{"".join(body)}</table>'
        '<p class="small">Wall time counts training sessions (start or resume to their last line), '
        "not the gaps between a crash and its restart; GPU-hours multiply it by the CUDA devices. "
        "HellaSwag: acc_norm per token is llm.c/build-nanogpt's convention, per char is "
        "lm-evaluation-harness's; GPT-2 and GPT-3 figures as in docs/reference.md (OpenAI GPT-2 "
        "via llm.c/build-nanogpt and lm-evaluation-harness; GPT-3: Brown et al. 2020, Table H.1)."
        "</p>"
        f'<h2>Plots</h2><div class="grid-plots">{"".join(figures)}</div>'
        f"{samples}{details}</body></html>\n"
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
    run_dirs: Sequence[str | Path], out_dir: str | Path, *, pngs: bool = True, log_x: bool = False
) -> list[Path]:
    """The CLI's work: read the runs, check nothing foreign is in the way, write the PNGs and
    report.html (each atomically). Returns the paths written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory (it is created if missing)")
    check_output_path(out, "--out", directory=True)  # not under a file, and writable
    seen: set[Path] = set()
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise UserError(f"run directory {d} is given twice; pass each run once")
        seen.add(key)
    runs = [load_run(d) for d in run_dirs]
    drawings = [drawing(p) for p in panels(runs, log_x=log_x)]
    targets = [out / f"{d.panel.key}.png" for d in drawings] if pngs else []
    _refuse_foreign([out / REPORT_HTML, *targets], "--out")
    out.mkdir(parents=True, exist_ok=True)
    written = write_pngs(drawings, out, software=GENERATOR) if pngs else []
    page = render_html(runs, drawings, refresh_s=None, png_links=pngs)
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
    drawings = [drawing(p) for p in panels([run])]
    page = render_html([run], drawings, refresh_s=None if run.done else REFRESH_S)
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
    p.add_argument(
        "--log-x", action="store_true", help="training tokens on a log scale (the early steps)"
    )
    add_debug_flag(p)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    written = write_report(args.run_dirs, args.out, pngs=not args.no_png, log_x=args.log_x)
    print(f"report: {written[0]}")
    if len(written) > 1:
        print(f"plots:  {', '.join(str(p) for p in written[1:])}")
    print(f"view:   open it in a browser, or python -m http.server -d {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
