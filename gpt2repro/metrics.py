"""What a run reports: the console line, metrics.jsonl, wandb, and the run header.

`metrics.jsonl` is the complete record of a run (written by rank 0 of `gpt2repro.train`): one
JSON object per line, every one with `step` (completed optimizer steps) and `tokens` (training
tokens seen so far). Four kinds of line:

- events, told apart by `event`:
  `start` (a fresh run) and `resume` (continuing from a checkpoint) also carry the run header
  (`versions`, `gpus`, `device`, `world_size`, `git_sha`, `argv`, `n_params`, `grad_accum`,
  `config`; see `run_header`; a resume that changed a setting also `changed`, each key's was/now);
  `preempted` (stopped by SIGTERM/SIGINT after checkpointing) and `done` (the last step is
  checkpointed) carry nothing more; `crashed` (an error after the start) carries `error`, its
  first line;
- train steps, every `log.every` steps, at the last one and at a preemption: `loss` (the last
  step's), `loss_mean` (the mean over the steps since the previous line), `lr`, `grad_norm`,
  `tok_per_s`, `mfu` (null when the GPU peak is unknown), `step_ms`, `skipped` (updates skipped
  by the guards so far), `mem_gib` (peak CUDA memory; null off CUDA);
- evaluations: `val_loss` and/or `hellaswag_acc`, `hellaswag_acc_norm` (token-normalized),
  `hellaswag_acc_norm_char` (character-normalized, lm-evaluation-harness style), `eval_s` (its
  wall time);
- text samples: `sample`, the prompt and its continuation.

Every line the trainer writes also carries `time` (Unix seconds, when it was written): the report
(`gpt2repro.report`) measures wall time and GPU-hours from it.
After a resume, steps after the checkpoint may appear twice; the later line is the one that counts.
Reading it back (`read_metrics`, `train_losses`, `load_run`) is `gpt2repro.runs`, torch-free.
FLOPs per token, GPU peaks and MFU are `gpt2repro.hardware`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gpt2repro.config import Config, to_dict
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError
from gpt2repro.runs import format_duration
from gpt2repro.tensorboard_log import TensorBoardLogger


def format_count(n: float) -> str:
    """A token count as people read it: 629.1M, 10.24B, 52.4k, 900."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.0f}"


@dataclass
class Progress:
    """What the console line tells beyond its record: where the run is in wall-clock time."""

    max_steps: int
    world_size: int = 1
    on_cuda: bool = False
    elapsed_s: float | None = None  # since this session started (a resume starts a new one)
    eta_s: float | None = None  # from the wall clock; None: only the step time is known yet
    clock: str = ""  # the time of day, for long logs ("14:02:11")


class WallClock:
    """Elapsed time and a wall-clock ETA for the console. The ETA is the wall time per step since
    the session's first log line (so evaluations, samples and checkpoints in between are counted;
    the first step's compile is not) times the steps left."""

    def __init__(self, now: float | None = None) -> None:
        self.start = time.time() if now is None else now
        self.first: tuple[float, int] | None = None  # (time, step) of the first log line

    def progress(
        self, step: int, max_steps: int, now: float | None = None
    ) -> tuple[float, float | None]:
        """(elapsed seconds, ETA seconds or None at the session's first log line)."""
        now = time.time() if now is None else now
        if self.first is None:
            self.first = (now, step)
            return now - self.start, None
        t0, s0 = self.first
        if step <= s0:
            return now - self.start, None
        return now - self.start, (now - t0) / (step - s0) * max(0, max_steps - step)


def console_line(rec: dict[str, Any], p: Progress) -> str:
    """One human line per log step: the time of day, step, loss (the mean over the log interval
    and the last step's), lr, grad norm, step time, tokens/s in all and per device, MFU (only
    where it applies), tokens seen, elapsed, ETA, peak memory, skipped updates."""
    head = f"{p.clock} " if p.clock else ""
    loss = f"loss {rec['loss']:.4f}"
    if rec.get("loss_mean") is not None:
        loss = f"loss {rec['loss_mean']:.4f} (last {rec['loss']:.4f})"
    rate = f"{rec['tok_per_s']:,.0f} tok/s"
    if p.world_size > 1:
        rate += f" ({rec['tok_per_s'] / p.world_size:,.0f}/{'GPU' if p.on_cuda else 'proc'})"
    parts = [
        f"{head}step {rec['step']:>6}/{p.max_steps}",
        loss,
        f"lr {rec['lr']:.2e}",
        f"norm {rec['grad_norm']:.3f}",
        f"{rec['step_ms']:.1f} ms",
        rate,
    ]
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    parts.append(f"{format_count(rec['tokens'])} tokens")
    if p.elapsed_s is not None:
        parts.append(f"elapsed {format_duration(p.elapsed_s)}")
    if p.eta_s is not None:
        parts.append(f"ETA {format_duration(p.eta_s)}")
    else:  # the first log line of a session: only the step time, a lower bound
        steps_left = max(0, p.max_steps - rec["step"])
        parts.append(f"ETA >= {format_duration(rec['step_ms'] / 1000 * steps_left)}")
    if rec.get("mem_gib") is not None:
        parts.append(f"mem {rec['mem_gib']:.1f} GiB")
    if rec.get("skipped"):
        parts.append(f"skipped {rec['skipped']}")
    return " | ".join(parts)


class MetricsLog:
    """Appends JSON lines to run_dir/metrics.jsonl (rank 0 only; other ranks pass enabled=False).

    Each record is one append of its whole line (O_APPEND). A write that fails mid-run (ENOSPC:
    the disk is full; EIO) is one warning on stderr, the first time only: the run goes on, since
    its checkpoints matter more than its log, and later records are tried again, the next one
    that lands starting on a line of its own (a torn fragment stays a malformed line, which the
    report skips and counts)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.failures = 0  # records (or flushes) that could not be written
        self._torn = False  # the file may end mid-line: start the next record on a new one
        self._fd: int | None = None
        if enabled:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if _ends_mid_line(path):
                self._append("\n")  # a kill tore the last line: the next record starts on its own

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            line = json.dumps(record, allow_nan=True) + "\n"
            self._append(("\n" if self._torn else "") + line)

    def _append(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            _write_all(self._fd, text.encode())
            self._torn = False
        except OSError as e:
            self._torn = True
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        self.failures += 1
        if self.failures == 1:
            print(
                f"warning: cannot write {self.path} ({e.strerror or e}); training goes on and "
                "still checkpoints, records are lost while this lasts (not shown again)",
                file=sys.stderr,
                flush=True,
            )

    def flush(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                self._failed(e)

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte of `data` is written (a full disk can take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last byte is not a newline (empty files end cleanly)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class WandbLogger:
    """wandb with the same run id across resumes (id kept in run_dir/wandb_id.txt); rank 0 only.

    The run never dies for its dashboard: wandb not answering within `init_timeout_s` at start
    (no route, a firewall, the server down) is one warning and the run logs offline (upload it
    later with `wandb sync`); a wandb call failing later is one warning and the run goes on
    without wandb (metrics.jsonl holds every number). A login wandb refuses is an input error
    (fix the key; retrying cannot); no login at all is refused earlier, at start-up
    (`services.wandb_problem`).
    """

    def __init__(
        self,
        mode: str,
        project: str,
        name: str,
        run_dir: Path,
        config: dict[str, Any],
        enabled: bool,
        init_timeout_s: float = 30.0,
    ) -> None:
        self.run = None
        self._table: Any = None  # wandb.Table, kept from the import below
        self._samples: list[list[Any]] = []
        if not enabled or mode == "disabled":
            return
        try:
            import wandb  # optional (the `wandb` extra): only a run that logs to it needs it
        except ImportError:
            raise UserError(
                f"log.wandb_mode={mode} needs wandb: pip install 'gpt2repro[wandb]' "
                "(or set --log.wandb_mode=disabled)"
            ) from None
        id_file = run_dir / "wandb_id.txt"
        # Our own id (wandb's generator moved between versions): 8 lowercase hex characters.
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        if not id_file.exists():
            id_file.write_text(run_id + "\n")
        self._table = wandb.Table
        init = {
            "project": project,
            "name": name,
            "id": run_id,
            "resume": "allow",
            "dir": str(run_dir),
            "config": config,
        }
        try:
            self.run = wandb.init(
                mode=mode,  # type: ignore[arg-type]  # a str that LogConfig checks is one of these
                settings=wandb.Settings(init_timeout=init_timeout_s),
                **init,  # type: ignore[arg-type]  # the keyword arguments above, typed by wandb
            )
            return
        except Exception as e:  # no route, a timeout, the server down, a refused key: many types
            failure = e
        if _key_refused(failure):
            raise UserError(
                f"wandb refused to start the run ({_first_line(failure)}); check the key (`wandb "
                "login --relogin`, WANDB_API_KEY, WANDB_BASE_URL), or train with "
                "--log.wandb_mode=offline"
            ) from None
        if mode == "offline":
            _warn(f"wandb failed to start offline ({_first_line(failure)}); going on without wandb")
            return
        where = run_dir / "wandb"
        _warn(
            f"wandb did not start within log.wandb_init_timeout_s={init_timeout_s:g} "
            f"({_first_line(failure)}); logging offline to {where}: upload later with "
            f"`wandb sync {where}/offline-run-*` (docs/wandb.md)"
        )
        try:
            wandb.teardown()  # the service still holds the failed online attempt's run id
            self.run = wandb.init(mode="offline", **init)  # type: ignore[arg-type]  # as above
        except Exception as e:  # the dashboard is never worth the run
            _warn(f"wandb failed to start offline too ({_first_line(e)}); going on without wandb")

    def log(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        data = {k: v for k, v in record.items() if k not in ("step", "event") and v is not None}
        self._call(lambda run: run.log(data, step=int(record["step"])), int(record["step"]))

    def log_sample(self, step: int, text: str) -> None:
        if self.run is None:
            return
        self._samples.append([step, text])
        table = self._table(columns=["step", "text"], data=self._samples)
        self._call(lambda run: run.log({"samples": table}, step=step), step)

    def finish(self) -> None:
        if self.run is not None:
            self._call(lambda run: run.finish(), None)
            self.run = None

    def _call(self, fn: Callable[[Any], object], step: int | None) -> None:
        """`fn(run)`; a failure is one warning and wandb is off for the rest of the run."""
        try:
            fn(self.run)
        except Exception as e:  # wandb's own failures, of any type: never worth the run
            at = f" at step {step}" if step is not None else ""
            _warn(
                f"wandb failed{at} ({_first_line(e)}); the run goes on without wandb "
                "(metrics.jsonl has every number)"
            )
            self.run = None


def _key_refused(e: BaseException) -> bool:
    """Whether wandb failed because the server (or wandb itself) refused the login: a retry or
    going offline would hide a key that needs fixing. wandb-core reports the server's 401/403 as
    a CommError with the status in its text."""
    refused = type(e).__name__ in ("AuthenticationError", "UsageError")
    return refused or re.search(r"\berror (401|403)\b", str(e)) is not None


def _first_line(e: BaseException) -> str:
    """An exception as `Type: its first line` (at most 160 characters), for a one-line warning."""
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _warn(text: str) -> None:
    print(f"warning: {text}", flush=True)


def git_sha(repo: Path | None = None) -> str:
    """HEAD of the source tree (with "-dirty" when it has uncommitted changes), or "unknown"."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def package_version(name: str) -> str:
    """The installed version of an optional package, read from its metadata (without importing
    it), or "not installed": a bare GPU box may lack tiktoken, and training does not need it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


PAGE_EVERY_S = 60.0  # the live page is also redrawn on a train line at most this often
CONFIG_TOML = "config.toml"  # the run's full resolved config, in its run directory


def non_defaults(cfg: Config) -> list[str]:
    """`section.key=value` of every setting that differs from the built-in defaults."""
    default = to_dict(Config())
    return [
        f"{section}.{key}={value!r}" if isinstance(value, str) else f"{section}.{key}={value}"
        for section, values in to_dict(cfg).items()
        for key, value in values.items()
        if default[section].get(key) != value
    ]


def run_header(
    cfg: Config, info: DistInfo, argv: list[str], grad_accum: int, n_params: int
) -> dict[str, Any]:
    """What reproduces a run: versions, GPUs, world size, git SHA, argv, batch math, config."""
    train_cfg = cfg.train
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    record = {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "tiktoken": package_version("tiktoken"),
        },
        "gpus": gpus,
        "device": str(info.device),
        "world_size": info.world_size,
        "git_sha": git_sha(),
        "argv": list(argv),
        "n_params": n_params,
        "grad_accum": grad_accum,
        "config": to_dict(cfg),
    }
    batch = (
        f"batch: {train_cfg.total_batch_tokens:,} tokens/step = {train_cfg.micro_batch_size} seqs x {train_cfg.seq_len} tokens"
        f" x {info.world_size} processes x {grad_accum} accumulation steps"
    )
    changed = non_defaults(cfg)
    text = "\n".join(
        [
            f"gpt2repro | git {record['git_sha']} | torch {torch.__version__} | python {platform.python_version()}",
            f"devices: {info.world_size} x {info.device.type}"
            + (f" ({gpus[0]}, {len(gpus)} visible)" if gpus else ""),
            f"model: {n_params:,} parameters, {cfg.model.n_layer} layers, {cfg.model.n_head} heads, width {cfg.model.n_embd}",
            batch,
            f"steps: {train_cfg.max_steps:,} ({train_cfg.max_steps * train_cfg.total_batch_tokens:,} tokens)",
            f"data: {cfg.data.dir} | run: {cfg.run.dir} (full config: {Path(cfg.run.dir) / CONFIG_TOML})",
            "settings not at their defaults: " + (", ".join(changed) if changed else "none"),
        ]
    )
    return {"record": record, "text": text}


class Page(Protocol):
    """A page drawn from metrics.jsonl (the trainer passes `report.LiveReport`)."""

    def update(self) -> None: ...


class RunLog:
    """Where a training run reports: the console, metrics.jsonl, wandb, and the live page that
    its owner hands over (redrawn after each evaluation and at the end). Every rank makes one
    and calls it alike; only rank 0 prints or writes."""

    def __init__(self, run_dir: Path, cfg: Config, is_main: bool, page: Page | None = None) -> None:
        self.is_main = is_main
        self.page = page
        self.clock = WallClock()
        self.page_time = time.monotonic()  # when the live page was last drawn
        self.tensorboard = TensorBoardLogger(run_dir, enabled=is_main and cfg.log.tensorboard)
        self.world_size, self.on_cuda = 1, False  # the trainer's devices (set_devices)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
        self.wandb = WandbLogger(
            mode=cfg.log.wandb_mode,
            project=cfg.log.wandb_project,
            name=cfg.log.wandb_run_name or cfg.run.name or run_dir.name,
            run_dir=run_dir,
            config=to_dict(cfg),
            enabled=is_main,
            init_timeout_s=cfg.log.wandb_init_timeout_s,
        )

    def set_devices(self, world_size: int, on_cuda: bool) -> None:
        """How many devices train (tokens/s per device on the console) and whether they are GPUs."""
        self.world_size, self.on_cuda = world_size, on_cuda

    def print(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def start(
        self,
        header: dict[str, Any],
        *,
        step: int,
        tokens: int,
        resumed_from: Path | None,
        changed: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """The start-up header on the console and the start/resume event in metrics.jsonl;
        `changed` (setting -> was/now since the checkpoint) marks the resume event, so a report
        can show where the curve's meaning changed."""
        self.print(header["text"])
        event = "start" if resumed_from is None else "resume"
        marks = {"changed": changed} if changed else {}
        self.record(
            {"event": event, "step": step, "tokens": tokens, **marks, **header["record"]},
            wandb=False,
        )
        if resumed_from is not None:
            line = f"resumed from {resumed_from} at step {step} ({tokens:,} tokens)"
            if changed:
                shown = ", ".join(f"{k} {v['was']} -> {v['now']}" for k, v in changed.items())
                line += f"; changed since that checkpoint: {shown}"
            self.print(line)

    def can_sample(self, sample_every: int, vocab_size: int) -> bool:
        """Text samples are on (`log.sample_every`), the model's vocabulary covers GPT-2's
        tokenizer and tiktoken is installed (else a note, at start rather than a failure at the
        first sample: a bare GPU box may train without tiktoken)."""
        if sample_every <= 0:
            return False
        if vocab_size < 50257:
            self.print(
                f"note: no text samples: model.vocab_size={vocab_size} is smaller than "
                "GPT-2's tokenizer"
            )
            return False
        if package_version("tiktoken") == "not installed":
            self.print("note: no text samples: tiktoken is not installed (pip install tiktoken)")
            return False
        return True

    def train(self, record: dict[str, Any], max_steps: int) -> None:
        """A log step's train line (elapsed time and the wall-clock ETA) and its record."""
        elapsed, eta = self.clock.progress(record["step"], max_steps)
        progress = Progress(
            max_steps=max_steps,
            world_size=self.world_size,
            on_cuda=self.on_cuda,
            elapsed_s=elapsed,
            eta_s=eta,
            clock=time.strftime("%H:%M:%S"),
        )
        self.record(record, text=console_line(record, progress))
        if self.page is not None and time.monotonic() - self.page_time >= PAGE_EVERY_S:
            self.page_time = time.monotonic()
            self.page.update()  # the status line's "last record" stays fresh between evaluations

    def evaluation(
        self,
        step: int,
        tokens: int,
        results: dict[str, float],
        seconds: float,
        gpt2_val_loss: float | None = None,
    ) -> None:
        """An evaluation's line (with its duration, and GPT-2 124M's validation loss where it is
        comparable) and record, then the live report page."""
        # per-task numbers (`core/<label>`) go to metrics.jsonl and wandb, not the console line
        shown = " | ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in results.items()
            if "/" not in k
        )
        if gpt2_val_loss is not None and "val_loss" in results:
            shown += f" (GPT-2 124M: {gpt2_val_loss:.4f})"
        self.record(
            {"step": step, "tokens": tokens, **results, "eval_s": round(seconds, 3)},
            text=f"eval step {step:>6} | {shown} | {seconds:.1f} s",
        )
        if self.page is not None:
            self.page.update()  # never raises

    def preempted(
        self, *, step: int, tokens: int, signum: int | None, saved_to: Path, resume_mode: str
    ) -> None:
        """The preemption line (what was saved and how to continue) and its event."""
        signame = signal.Signals(signum).name if signum else "signal"
        how = "rerun the same command"
        if resume_mode != "auto":  # restart or a path would not continue from here
            how = "rerun with --checkpoint.resume=auto"
        self.print(
            f"preempted by {signame} at step {step}: checkpoint saved to {saved_to}; "
            f"{how} to resume"
        )
        self.record({"event": "preempted", "step": step, "tokens": tokens}, wandb=False)

    def crashed(self, step: int, tokens: int, error: BaseException | None) -> None:
        """A run that stopped on an error after it started (rank 0, on the way out): its event
        in metrics.jsonl, with the error's line, so the report says "crashed" and why."""
        if not self.is_main or not isinstance(error, Exception):
            return  # a clean end, a preemption (a return), or an exit
        text = str(error).splitlines()[0] if str(error) else ""
        message = f"{type(error).__name__}: {text}"[:300]
        self.record(
            {"event": "crashed", "step": step, "tokens": tokens, "error": message}, wandb=False
        )
        self.metrics.close()
        if self.page is not None:
            self.page.update()

    def done(self, *, step: int, tokens: int, run_dir: Path) -> None:
        """The end of a finished run: its event, the last line, and closing (see close)."""
        self.record({"event": "done", "step": step, "tokens": tokens}, wandb=False)
        self.print(f"done: {step} steps, {tokens:,} tokens; run directory {run_dir}")
        self.close()

    def record(self, record: dict[str, Any], text: str | None = None, wandb: bool = True) -> None:
        """Print `text` (if any), append `record` to metrics.jsonl and, unless told not, to wandb."""
        if not self.is_main:
            return
        if text is not None:
            print(text, flush=True)
        self.metrics.write({**record, "time": round(time.time(), 3)})
        if wandb:  # the numbers of steps and evaluations (events are not plotted)
            self.wandb.log(record)
            self.tensorboard.log(record)

    def sample(self, step: int, tokens: int, text: str) -> None:
        if not self.is_main:
            return
        rule = "-" * 72
        print(f"sample at step {step}:\n{rule}\n{text}\n{rule}", flush=True)
        self.metrics.write(
            {"step": step, "tokens": tokens, "sample": text, "time": round(time.time(), 3)}
        )
        self.wandb.log_sample(step, text)
        self.tensorboard.log_sample(step, text)

    def close(self) -> None:
        """Flush metrics.jsonl, draw the page a last time (no reloading once DONE exists), and
        finish wandb and TensorBoard."""
        self.metrics.close()
        if self.page is not None:
            self.page.update()
        self.wandb.finish()
        self.tensorboard.finish()
