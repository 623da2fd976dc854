"""Plots without a plotting library: a `Panel` (series and published lines against training
tokens) is laid out once as a `Drawing` (limits, round ticks, thinned lines, legend), which two
thin backends draw: inline SVG for the report page (no scripts, no network, ~2 ms a page) and
matplotlib for PNG files (the optional `report` extra). A plot and its PNG therefore show the
same limits, ticks, lines and legend.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from gpt2repro.atomic import atomic_open
from gpt2repro.errors import UserError

MAX_POINTS = 2000  # per plotted series; longer ones are thinned evenly (the page stays small)
REFERENCE_COLOR = "#555555"
XLABEL = "training tokens"  # every plot's x axis


@dataclass
class Series:
    """One line of data: (training tokens, value) points in one colour and dash."""

    label: str
    color: str
    xs: list[float]
    ys: list[float]
    dash: str = "solid"  # solid, dashed, dotted, dashdot (matplotlib's names); none: markers only
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
class VLine:
    """A moment of the run drawn top to bottom (a resume that changed a setting), at x tokens."""

    x: float
    label: str
    color: str = "#9467bd"


@dataclass
class Panel:
    """One plot as the report means it, before any layout: its series and published lines."""

    key: str  # file name stem of the PNG
    title: str
    ylabel: str
    series: list[Series]
    hlines: list[HLine] = field(default_factory=list)
    note: str = ""  # shown when the panel has no data; a reason, never a blank box
    x_max: float = 0.0  # the x axis reaches at least this far (a live run's planned tokens)
    from_zero: bool = False  # the y axis starts at 0 (rates and sizes: a dip looks its size)
    y_range: tuple[float, float] | None = None  # fixed y limits (a zoom); lines are clipped
    log_x: bool = False  # training tokens on a log scale (from the first positive x)
    vlines: list[VLine] = field(default_factory=list)


def _thin(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list, list]:
    """At most `limit` evenly spaced points, the last one always kept."""
    if len(xs) <= limit:
        return xs, ys
    stride = math.ceil(len(xs) / limit)
    idx = list(range(0, len(xs), stride))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi] (lo > 0); with fewer than three, 1-2-5 steps within them."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    ticks = [10.0**k for k in range(first, last + 1)]
    if len(ticks) < 3:
        ticks = sorted(
            m * 10.0**k
            for k in range(first - 1, last + 1)
            for m in (1, 2, 5)
            if lo <= m * 10.0**k <= hi
        )
    return ticks


def format_number(v: float) -> str:
    """Short tick/table label: 1.5B, 320M, 12k, 0.003, 3.29."""
    a = abs(v)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= scale:
            return f"{v / scale:.3g}{unit}"
    return "0" if v == 0 else f"{v:.3g}"


def _limits(values: list[float], pad: float) -> tuple[float, float]:
    """(lo, hi) around `values`, `pad` x their span more on each side; a flat line gets +-5%."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - max(abs(lo) * 0.05, 1e-9), hi + max(abs(hi) * 0.05, 1e-9)
    span = hi - lo
    return lo - pad * span, hi + pad * span


# --------------------------------------------------------------------------- the drawing


@dataclass
class Drawing:
    """A panel laid out once, in data units: the one description both backends draw (inline SVG
    for the page, matplotlib for the PNGs), so a plot and its PNG show the same limits, ticks,
    lines and legend."""

    panel: Panel  # key, title, y label
    x_lim: tuple[
        float, float
    ]  # training tokens; (0, 1) with no ticks when there is nothing to draw
    y_lim: tuple[float, float]
    x_ticks: list[float]
    y_ticks: list[float]
    lines: list[Series]  # the series with data, thinned to MAX_POINTS
    hlines: list[HLine]
    note: str  # drawn over the axes: why there is no data ("" when there is)
    vlines: list[VLine] = field(default_factory=list)
    log_x: bool = False

    @property
    def empty(self) -> bool:
        return not self.lines and not self.hlines

    @property
    def legend(self) -> list[tuple[str, str, str]]:
        """(label, colour, dash) of each line drawn: the series, then the published lines."""
        drawn: list[Series | HLine] = [*self.lines, *self.hlines]
        out = [(s.label, s.color, s.dash) for s in drawn]
        labels = {v.label: v.color for v in self.vlines}
        return out + [(label, color, "dashed") for label, color in labels.items()]

    def x_fraction(self, x: float) -> float:
        """Where x falls between the x limits, 0 to 1 (log-scaled when log_x)."""
        (x0, x1) = self.x_lim
        if self.log_x:
            return (math.log10(max(x, x0)) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return (x - x0) / (x1 - x0)


def drawing(panel: Panel) -> Drawing:
    """Lay out one panel: x from 0 to the data or the planned tokens (log: from the first
    positive x), y around the data and published lines (from 0 for rates and sizes; the panel's
    fixed range for a zoom), round ticks."""
    series = panel.series
    if panel.log_x:  # log10(0) has no place on the axis: step 0's points are left out
        series = [
            Series(s.label, s.color, [x for x in s.xs if x > 0],
                   [y for x, y in zip(s.xs, s.ys, strict=True) if x > 0], s.dash, s.markers, s.width)
            for s in series
        ]  # fmt: skip
    lines = [Series(s.label, s.color, *_thin(s.xs, s.ys), s.dash, s.markers, s.width)
             for s in series if s.xs]  # fmt: skip
    note = "" if lines else panel.note
    if not lines and not panel.hlines:
        return Drawing(panel, (0.0, 1.0), (0.0, 1.0), [], [], [], [], note)
    xs_all = [x for s in series for x in s.xs]
    ys_all = [y for s in series for y in s.ys] + [h.y for h in panel.hlines]
    x1 = max([*xs_all, panel.x_max])
    x1 = x1 if x1 > 0 else 1.0  # only step-0 evaluations of a run of unknown length
    if panel.y_range is not None:
        y0, y1 = panel.y_range
    else:
        y0, y1 = _limits(ys_all + ([0.0] if panel.from_zero else []), 0.06)
        y0 = 0.0 if panel.from_zero else y0
    vlines = [v for v in panel.vlines if (v.x > 0 or not panel.log_x)]
    if panel.log_x:
        x0 = min([x for x in xs_all if x > 0] or [1.0])
        x1 = max(x1, x0 * 10)
        x_ticks = _log_ticks(x0, x1)
    else:
        x0, x_ticks = 0.0, _ticks(0.0, x1)
    return Drawing(
        panel, (x0, x1), (y0, y1), x_ticks, _ticks(y0, y1), lines, panel.hlines, note,
        vlines, panel.log_x,
    )  # fmt: skip


# --------------------------------------------------------------------------- SVG backend

_DASH = {"solid": "", "dashed": "6 4", "dotted": "2 3", "dashdot": "8 3 2 3", "none": ""}
MARKERS_UP_TO = 200  # points per series; denser ones are drawn as a bare line


def panel_svg(d: Drawing, width: int = 560, height: int = 300) -> str:
    """One drawing as inline SVG. Everything textual is escaped."""
    e = html.escape
    left, right, top, bottom = 62, 14, 30, 40
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg class="plot" data-panel="{e(d.panel.key)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{e(d.panel.title)}">',
        f'<text x="{left}" y="19" class="title">{e(d.panel.title)}</text>',
    ]
    # crisp: exactly one pixel row/column of the frame colour (the browser test finds plots by it)
    frame = (
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame" '
        'shape-rendering="crispEdges"/>'
    )
    note_w = 7 * len(d.note) + 16  # about 7 px a character at 13 px: a backing box
    note = (
        f'<rect x="{left + (pw - note_w) / 2:.0f}" y="{top + ph / 2 - 15:.0f}" width="{note_w}" '
        f'height="22" fill="#fff" opacity="0.92"/>'
        f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" class="note">'
        f"{e(d.note)}</text>"
    )
    if d.empty:
        return "".join([*out, frame, note, "</svg>"])
    y0, y1 = d.y_lim
    sx = lambda x: left + d.x_fraction(x) * pw
    sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph
    clip_id = f"clip-{d.panel.key}"
    out.append(
        f'<clipPath id="{e(clip_id)}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/>'
        "</clipPath>"
    )
    for t in d.y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{e(format_number(t))}</text>"
        )
    for t in d.x_ticks:
        out.append(
            f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">'
            f"{e(format_number(t))}</text>"
        )
    out.append(frame)  # over the grid lines, under the data
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"{XLABEL}</text>"
        f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="axis">{e(d.panel.ylabel)}</text>'
    )
    for h in d.hlines:
        y = sy(h.y)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{h.color}" '
            f'stroke-width="1.2" stroke-dasharray="{_DASH[h.dash]}"><title>{e(h.label)}</title>'
            "</line>"
        )
    for v in d.vlines:
        x = sx(v.x)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="{v.color}" '
            f'stroke-width="1.2" stroke-dasharray="{_DASH["dashed"]}"><title>{e(v.label)}</title>'
            "</line>"
        )
    out.append(f'<g clip-path="url(#{e(clip_id)})">')
    for s in d.lines:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        dash = f' stroke-dasharray="{_DASH[s.dash]}"' if s.dash not in ("solid", "none") else ""
        if s.dash != "none":
            out.append(
                f'<polyline class="series" points="{pts}" fill="none" stroke="{s.color}" '
                f'stroke-width="{s.width}"{dash} stroke-linejoin="round">'
                f"<title>{e(s.label)}</title></polyline>"
            )
        if s.markers and (len(s.xs) <= MARKERS_UP_TO or s.dash == "none"):
            out.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}"/>'
                for x, y in zip(s.xs, s.ys, strict=True)
            )
    out.append("</g>")
    if d.note:  # only the published lines: the targets, and why no data
        out.append(note)
    out.append("</svg>")
    return "".join(out)


def legend_html(d: Drawing) -> str:
    """The legend under a plot: a short sample of each line, drawn like the line, and its label."""
    items = [
        f'<span><svg width="24" height="6"><line x1="0" x2="24" y1="3" y2="3" stroke="{color}" '
        f'stroke-width="2" stroke-dasharray="{_DASH[dash]}"/></svg>{html.escape(label)}</span>'
        for label, color, dash in d.legend
    ]
    return f'<div class="legend">{"".join(items)}</div>'


# --------------------------------------------------------------------------- PNG backend


def write_pngs(drawings: list[Drawing], out_dir: Path, software: str) -> list[Path]:
    """One PNG per drawing in out_dir, named by its panel's key, with `software` in its
    `Software` text chunk (atomic; matplotlib's Agg canvas, no pyplot state)."""
    try:
        from matplotlib.figure import Figure  # optional (the `report` extra); --no-png skips it
    except ImportError:
        raise UserError(
            "PNG plots need matplotlib: pip install 'gpt2repro[report]', or pass --no-png "
            "for report.html alone"
        ) from None
    written = []
    for d in drawings:
        fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(d.panel.title, loc="left", fontsize=11)
        ax.set_xlabel(XLABEL)
        ax.set_ylabel(d.panel.ylabel)
        if d.log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xlim(*d.x_lim)
        ax.set_ylim(*d.y_lim)
        ax.set_xticks(d.x_ticks, [format_number(t) for t in d.x_ticks])
        ax.set_yticks(d.y_ticks, [format_number(t) for t in d.y_ticks])
        ax.grid(True, axis="y", color="#eeeeee", linewidth=0.8)
        for s in d.lines:
            show = s.markers and (len(s.xs) <= MARKERS_UP_TO or s.dash == "none")
            ax.plot(s.xs, s.ys, color=s.color, linestyle=s.dash, linewidth=s.width,
                    marker="o" if show else None, markersize=3.7, label=s.label)  # fmt: skip
        for v in d.vlines:
            ax.axvline(v.x, color=v.color, linestyle="dashed", linewidth=1.2, label=v.label)
        for h in d.hlines:  # under the data, after it in the legend, as on the page
            ax.axhline(
                h.y, color=h.color, linestyle=h.dash, linewidth=1.2, label=h.label, zorder=1.5
            )
        if d.legend:
            ax.legend(fontsize=7, loc="best", framealpha=0.85)
        if d.note:
            ax.text(0.5, 0.5, d.note, ha="center", va="center", transform=ax.transAxes,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9})  # fmt: skip
        path = out_dir / f"{d.panel.key}.png"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", metadata={"Software": software})
        written.append(path)
    return written
