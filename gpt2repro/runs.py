"""A run's record read back: the lines of metrics.jsonl (its format: gpt2repro.metrics, which
writes it), and what one run directory says about its run (`Run`, `load_run`): train and
evaluation records with a resume's re-logged steps merged, wall time, GPU-hours, restarts.

Torch-free, so the report (`gpt2repro.report`) and its `--help` load no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from gpt2repro.errors import UserError

_NUMBER = (int, float)  # a tuple: `int | float` would build a new union object on every check


def format_duration(seconds: float) -> str:
    """A run's length as people read it: "1h05m", or "4m07s" under an hour (seconds, floored)."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def read_metrics(path: str | Path, malformed: list[int] | None = None) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a crash is ignored). Lines that are
    not a JSON object are skipped; their 1-based numbers go to `malformed` when given."""
    out = []
    with open(path, errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                out.append(record)
            elif malformed is not None:
                malformed.append(number)
    return out


def train_losses(path: str | Path) -> dict[int, float]:
    """step -> loss from a metrics.jsonl, the last line for each step winning (resumes re-log)."""
    return {r["step"]: r["loss"] for r in read_metrics(path) if "loss" in r and "event" not in r}


def tokens_to(points: list[tuple[float, float]], target: float) -> float | None:
    """Tokens at which a validation curve, (tokens, loss) at each evaluation, first reaches
    `target`: linear between two evaluations, the first point if it starts there, None if never."""
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if v0 <= target:
            return t0
        if v1 <= target:
            return t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return points[0][0] if len(points) == 1 and points[0][1] <= target else None


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
    samples: list[dict[str, Any]] = field(default_factory=list)  # text sample records, in order
    resumes: list[dict[str, Any]] = field(default_factory=list)  # resume events, in order
    last_time: float | None = None  # the newest record's `time` (Unix seconds)
    last_event_record: dict[str, Any] = field(default_factory=dict)  # the newest event line
    session_train: list[dict[str, Any]] = field(default_factory=list)  # since the last start

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

    @property
    def best_val(self) -> dict[str, Any] | None:
        """The evaluation record with the lowest finite val_loss (None before the first)."""
        vals = [r for r in self.evals if is_finite_number(r.get("val_loss"))]
        return min(vals, key=lambda r: r["val_loss"], default=None)

    @property
    def last_hellaswag(self) -> dict[str, Any] | None:
        """The newest evaluation record with a finite hellaswag_acc_norm (None before the first)."""
        hs = [r for r in self.evals if is_finite_number(r.get("hellaswag_acc_norm"))]
        return hs[-1] if hs else None

    @property
    def record_interval_s(self) -> float | None:
        """The median wall time between the current session's train records (None with fewer
        than two timed records): how often a live run writes."""
        times = [r["time"] for r in self.session_train[-50:] if is_finite_number(r.get("time"))]
        gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
        return gaps[len(gaps) // 2] if gaps else None

    @property
    def eta_s(self) -> float | None:
        """Seconds to the planned tokens at this session's wall-clock rate (tokens per second of
        wall time, so evaluations, samples and checkpoints are counted); None when unknown."""
        timed = [r for r in self.session_train if is_finite_number(r.get("time"))]
        if len(timed) < 2 or not self.planned_tokens or self.done:
            return None
        first, last = timed[max(0, len(timed) - 200)], timed[-1]
        seconds, tokens = last["time"] - first["time"], last["tokens"] - first["tokens"]
        if seconds <= 0 or tokens <= 0:
            return None
        return max(0.0, (self.planned_tokens - self.tokens) / (tokens / seconds))

    @property
    def skipped(self) -> int:
        """Updates the guards skipped: the highest count a train line reports (0 when none)."""
        counts = [r["skipped"] for r in self.train if is_finite_number(r.get("skipped"))]
        return int(max(counts, default=0))


def load_run(run_dir: str | Path) -> Run:
    """Read RUN_DIR/metrics.jsonl into a Run; a missing file or one without records is a
    UserError, a malformed line is skipped and counted."""
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
    last_event_record: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    session_train: list[dict[str, Any]] = []
    for r in records:
        event = r.get("event")
        last_event = event or last_event
        if event:
            last_event_record = r
        if event in ("start", "resume"):
            header = r
            session_train = []
            restarts += event == "resume"
            if event == "resume":
                resumes.append(r)
            sha = r.get("git_sha")
            if sha and sha not in shas:
                shas.append(sha)
        elif event == "preempted":
            preemptions += 1
        elif event is None and "loss" in r:
            train[r["step"]] = r  # the later line of a re-logged step wins
            session_train.append(r)
        elif event is None and isinstance(r.get("sample"), str):
            samples.append(r)
        elif event is None and any(k in r for k in ("val_loss", "hellaswag_acc_norm", "core")):
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
        samples=samples,
        resumes=resumes,
        last_time=max(
            (r["time"] for r in records if is_finite_number(r.get("time"))), default=None
        ),
        last_event_record=last_event_record,
        session_train=session_train,
    )


def is_finite_number(v: object) -> TypeGuard[int | float]:
    """A finite int or float (json reads Infinity and NaN as floats; bools are ints)."""
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)


def _usable(r: dict[str, Any]) -> bool:
    """A record the report can use: a step and token count, and a header of the right types
    (values of a wrong type elsewhere are simply not plotted)."""
    if not (isinstance(r.get("step"), int) and not isinstance(r["step"], bool) and r["step"] >= 0):
        return False
    if "tokens" in r and not is_finite_number(r["tokens"]):
        return False
    if "time" in r and not is_finite_number(r["time"]):
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
        if is_finite_number(t):
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
