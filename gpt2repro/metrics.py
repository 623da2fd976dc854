"""What a run reports: the console line, metrics.jsonl, wandb, and the run header.

`metrics.jsonl` is the complete record of a run (written by rank 0 of `gpt2repro.train`): one
JSON object per line, every one with `step` (completed optimizer steps) and `tokens` (training
tokens seen so far). Four kinds of line:

- events, told apart by `event`:
  `start` (a fresh run) and `resume` (continuing from a checkpoint) also carry the run header
  (`versions`, `gpus`, `device`, `world_size`, `git_sha`, `argv`, `n_params`, `grad_accum`,
  `config`; see `run_header`); `preempted` (stopped by SIGTERM/SIGINT after checkpointing) and
  `done` (the last step is checkpointed) carry nothing more;
- train steps, every `log.every` steps, at the last one and at a preemption: `loss`, `lr`, `grad_norm`,
  `tok_per_s`, `mfu` (null when the GPU peak is unknown), `step_ms`, `skipped` (updates skipped
  by the guards so far), `mem_gib` (peak CUDA memory; null off CUDA);
- evaluations: `val_loss` and/or `hellaswag_acc`, `hellaswag_acc_norm` (token-normalized),
  `hellaswag_acc_norm_char` (character-normalized, lm-evaluation-harness style);
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
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gpt2repro.config import Config, to_dict, to_toml
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError
from gpt2repro.runs import format_duration


def console_line(
    rec: dict[str, Any], max_steps: int, eta_s: float | None, peak_mem_gib: float | None
) -> str:
    """One human line per log step."""
    parts = [
        f"step {rec['step']:>6}/{max_steps}",
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"norm {rec['grad_norm']:.3f}",
        f"{rec['step_ms']:.1f} ms",
        f"{rec['tok_per_s']:,.0f} tok/s",
        "MFU n/a" if rec.get("mfu") is None else f"MFU {100 * rec['mfu']:.1f}%",
    ]
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    if peak_mem_gib is not None:
        parts.append(f"mem {peak_mem_gib:.1f} GiB")
    if rec.get("skipped"):
        parts.append(f"skipped {rec['skipped']}")
    return " | ".join(parts)


class MetricsLog:
    """Appends JSON lines to run_dir/metrics.jsonl (rank 0 only; other ranks pass enabled=False)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._fh = open(path, "a", buffering=1) if enabled else None  # noqa: SIM115 (line-buffered, lives with the run)
        if self._fh is not None and _ends_mid_line(path):
            self._fh.write("\n")  # a kill tore the last line: the next record starts on its own

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, allow_nan=True) + "\n")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last byte is not a newline (empty files end cleanly)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class WandbLogger:
    """wandb with the same run id across resumes (id kept in run_dir/wandb_id.txt); rank 0 only."""

    def __init__(
        self,
        mode: str,
        project: str,
        name: str,
        run_dir: Path,
        config: dict[str, Any],
        enabled: bool,
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
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,  # type: ignore[arg-type]  # a str that LogConfig checks is one of these
            dir=str(run_dir),
            config=config,
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        data = {k: v for k, v in record.items() if k not in ("step", "event") and v is not None}
        self.run.log(data, step=int(record["step"]))

    def log_sample(self, step: int, text: str) -> None:
        if self.run is None:
            return
        self._samples.append([step, text])
        self.run.log(
            {"samples": self._table(columns=["step", "text"], data=self._samples)}, step=step
        )

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


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
    text = "\n".join(
        [
            f"gpt2repro | git {record['git_sha']} | torch {torch.__version__} | python {platform.python_version()}",
            f"devices: {info.world_size} x {info.device.type}"
            + (f" ({gpus[0]}, {len(gpus)} visible)" if gpus else ""),
            f"model: {n_params:,} parameters, {cfg.model.n_layer} layers, {cfg.model.n_head} heads, width {cfg.model.n_embd}",
            batch,
            f"steps: {train_cfg.max_steps:,} ({train_cfg.max_steps * train_cfg.total_batch_tokens:,} tokens)",
            "config:",
            "  " + to_toml(cfg).strip().replace("\n", "\n  "),
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
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
        self.wandb = WandbLogger(
            mode=cfg.log.wandb_mode,
            project=cfg.log.wandb_project,
            name=cfg.log.wandb_run_name or cfg.run.name or run_dir.name,
            run_dir=run_dir,
            config=to_dict(cfg),
            enabled=is_main,
        )

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
        """A log step's train line (with the ETA at this step time) and its record."""
        eta_s = record["step_ms"] / 1000 * (max_steps - record["step"])
        line = console_line(
            record, max_steps=max_steps, eta_s=eta_s, peak_mem_gib=record["mem_gib"]
        )
        self.record(record, text=line)

    def evaluation(self, step: int, tokens: int, results: dict[str, float]) -> None:
        """An evaluation's line and record, then the live report page."""
        shown = " | ".join(f"{k} {v:.4f}" for k, v in results.items())
        self.record(
            {"step": step, "tokens": tokens, **results}, text=f"eval step {step:>6} | {shown}"
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
        if wandb:
            self.wandb.log(record)

    def sample(self, step: int, tokens: int, text: str) -> None:
        if not self.is_main:
            return
        print(f"sample step {step}: {text!r}", flush=True)
        self.metrics.write(
            {"step": step, "tokens": tokens, "sample": text, "time": round(time.time(), 3)}
        )
        self.wandb.log_sample(step, text)

    def close(self) -> None:
        """Flush metrics.jsonl, draw the page a last time (no reloading once DONE exists), and
        finish wandb."""
        self.metrics.close()
        if self.page is not None:
            self.page.update()
        self.wandb.finish()
