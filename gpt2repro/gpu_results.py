"""The results folder of bench/gpu_check.sh, read back as one markdown table.

    python -m gpt2repro.bench table OUT_DIR [--md FILE]

The script writes, per step NAME: NAME.json (the result, when the step has one: `bench train
--out`, `bench hellaswag --out`, or the JSON line `bench loader` prints), logs/NAME.log (its output)
and a line of steps.tsv. Numbers come from the JSON results only; a step without one (the gpu
tests, a failed step) is summed up by a line of its log, and a step stopped at its time limit by
its last progress line and the stack it printed (`stopped_at`: its compile time so far).
(bench/gpu_check_more.sh and bench/gpu_multi_check.sh write the same folder layout.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# A line of steps.tsv:
# name, status (ok/failed/timeout/skipped), exit code, seconds, time limit, allowance, plan
# ("kind=train config=gpt2_124m B=64 compile=true loss=chunked vocab=padded").
_STEP_FIELDS = ("name", "status", "rc", "elapsed_s", "timeout_s", "allowance_s", "plan")
_TABLE_COLUMNS = (
    "step", "config", "params", "B", "compile", "compile s", "loss", "vocab", "step ms", "tok/s",
    "MFU", "peak GiB", "wall s", "status", "note",
)  # fmt: skip


_NOTE_LINE = {  # the line of a step's log that sums it up, by kind (steps that write no JSON)
    "tests": r"\d+ (passed|failed|skipped|error)",
    "env": r"^env: ",
    "smoke": r"^compile smoke: ",
}


def hellaswag_note(res: dict[str, Any]) -> str:
    """The table's note for a `bench hellaswag` result (the JSON it prints and writes to --out):
    the packed rate, its batching, the speedup and whether the predictions agreed."""
    same = "yes" if res.get("same_predictions") else "NO"
    return (
        f"packed {res['packed_ex_per_s']:.1f} ex/s ({res['batch_examples']} examples/pass, "
        f"bucket {res['bucket']}), {res['speedup']:.2f}x one example per pass; "
        f"same predictions: {same}"
    )


def core_note(res: dict[str, Any]) -> str:
    """The table's note for a `bench core` result: the packed rate, the speedup over one item
    per pass and whether every item got the same verdict."""
    same = "yes" if res.get("same_verdicts") else "NO"
    return (
        f"core packed {res['packed_ex_per_s']:.1f} items/s, {res['speedup']:.2f}x one item per "
        f"pass; same verdicts: {same}"
    )


def read_steps(results: Path) -> list[dict[str, Any]]:
    """The steps of a gpu_check.sh folder (steps.tsv), then any NAME.json it does not list."""
    steps: list[dict[str, Any]] = []
    tsv = results / "steps.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines():
            if not line.strip():
                continue
            row: dict[str, Any] = dict(zip(_STEP_FIELDS, line.split("\t"), strict=False))
            row["plan"] = dict(kv.split("=", 1) for kv in row.get("plan", "").split() if "=" in kv)
            steps.append(row)
    listed = {s["name"] for s in steps}
    for path in sorted(results.glob("*.json")):
        if path.stem not in listed:  # a result without a step record (e.g. `bench train --out`)
            steps.append({"name": path.stem, "status": "ok", "plan": {}})
    return steps


def _last_line(log: Path, pattern: str = "") -> str:
    """The last non-empty line of a log (matching `pattern`, when given), or ""."""
    if not log.exists():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    if pattern:
        lines = [ln for ln in lines if re.search(pattern, ln)]
    return lines[-1] if lines else ""


# `bench train`'s progress lines ("bench: model built at 12.3 s": seconds since it started) and
# the first frame of the stack faulthandler prints on SIGTERM (innermost first).
_PROGRESS = re.compile(r"^bench: (.*) at ([0-9.]+) s$")
_STACK_HEAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+ .*most recent call first")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+) in (\S+)')


def stopped_at(log: Path, elapsed_s: float | None) -> tuple[str, str]:
    """How far a step stopped at its limit got, from its log: (compile seconds so far, or "";
    a note: its last progress line and where the stack was). A step killed while compiling
    ("model built" its last progress) has compiled for at least its wall time less that line's
    time; one that finished step 1 reports that step's time."""
    if not log.exists():
        return "", ""
    lines = log.read_text(errors="replace").splitlines()
    progress = [m for ln in lines if (m := _PROGRESS.match(ln.strip()))]
    compile_s, note = "", ""
    if progress:
        what, at = progress[-1][1], float(progress[-1][2])
        note = f"stopped after: {what} ({at:.0f} s)"
        if what == "model built" and elapsed_s is not None:
            compile_s = f">{max(0.0, elapsed_s - at):.0f} (stopped)"
        elif m := re.match(r"step 1 done in ([0-9.]+) s", what):
            compile_s = f"<{float(m[1]):.0f}"
    heads = [i for i, ln in enumerate(lines) if _STACK_HEAD.match(ln.strip())]
    current = [i for i in heads if lines[i].lstrip().startswith("Current")]
    for i in current[:1] or heads[:1]:
        frame = next((m for ln in lines[i + 1 :] if (m := _FRAME.match(ln))), None)
        if frame:
            where = f"{Path(frame[1]).name}:{frame[2]} {frame[3]}"
            note = f"{note}; at {where}" if note else f"at {where}"
    return compile_s, note


def table_row(results: Path, step: dict[str, Any]) -> dict[str, str]:
    """One row of the results table: measured numbers from NAME.json where there is one, what the
    step meant to run (its plan) where there is not, and why a step is not ok."""
    name, plan, status = step["name"], step["plan"], step["status"]
    res: dict[str, Any] | None = None
    path = results / f"{name}.json"
    if path.exists():
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError:
            res = None
    res = res or {}
    kind = plan.get("kind") or res.get("bench", "")
    log = results / "logs" / f"{name}.log"
    if status == "ok" and kind == "train" and not res:
        status = "failed"  # exited 0 but left no result
    note, compile_so_far = "", ""
    if status == "timeout":
        elapsed = step.get("elapsed_s")
        compile_so_far, note = stopped_at(log, float(elapsed) if elapsed else None)
        note = note or _last_line(log)
    elif status == "failed":
        note = _last_line(log)
    elif status == "skipped":
        note = plan.get("why", "").replace("_", " ")
    elif kind == "hellaswag" and "packed_ex_per_s" in res:
        note = hellaswag_note(res)
    elif kind == "core" and "packed_ex_per_s" in res:
        note = core_note(res)
    elif isinstance(res.get("note"), str):  # a result that sums itself up (gpu_multi_check)
        note = res["note"]
    elif not res:  # steps that print rather than write JSON: their summary line
        note = _last_line(log, _NOTE_LINE.get(kind, "")) or _last_line(log)

    def num(key: str, fmt: str) -> str:
        value = res.get(key)
        return "" if value is None else format(value, fmt)

    row = {
        "step": name,
        "config": plan.get("config", ""),
        "params": "",
        "B": str(res.get("micro_batch", res.get("B", plan.get("B", "")))),
        "compile": plan.get("compile", ""),
        "compile s": num("compile_s", ".1f") or compile_so_far,
        "loss": plan.get("loss", ""),
        "vocab": plan.get("vocab", ""),
        "step ms": num("step_ms", ".1f") or num("ms_per_batch", ".3f"),
        "tok/s": num("tok_per_s", ",.0f"),
        "MFU": "",
        "peak GiB": num("peak_mem_gib", ".1f"),
        "wall s": str(step.get("elapsed_s", "")),
        "status": status if status != "timeout" else f"timeout ({step.get('timeout_s', '?')} s)",
        "note": note[:120],
    }
    if status == "failed" and step.get("rc"):
        row["status"] = f"failed (rc {step['rc']})"
    if res.get("bench") == "train":
        n = res.get("n_params", 0)
        row["params"] = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        row["compile"] = "true" if res.get("compile") else "false"
        model = res.get("model", {})
        if "vocab_size" in model:
            m = max(1, model.get("pad_vocab_multiple", 1))
            row["vocab"] = str(-(-model["vocab_size"] // m) * m)
        row["MFU"] = "n/a" if res.get("mfu") is None else f"{100 * res['mfu']:.1f}%"
        row["peak GiB"] = row["peak GiB"] or "n/a"
    return row


def results_table(results: Path) -> str:
    """The markdown table of a gpu_check.sh folder: one row per step."""
    rows = [table_row(results, s) for s in read_steps(results)]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(_TABLE_COLUMNS) + " |", "|" + "---|" * len(_TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in _TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)
