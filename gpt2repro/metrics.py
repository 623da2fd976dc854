"""What a run reports: FLOP accounting and MFU, the console line, metrics.jsonl, and wandb.

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
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class GPU:
    """One row of the known-GPU table (docs/reference.md "MFU and GPU peaks", with sources).

    name: how the planner prints it; match: substrings of `torch.cuda.get_device_name()` that
    identify it (case ignored); peak_flops: dense bf16 Tensor Core FLOP/s; memory_gib: the memory
    a process can use, in GiB (2**30 bytes), as torch reports it
    (`torch.cuda.get_device_properties().total_memory`, below the datasheet's "80GB": the driver
    keeps some; docs/planning.md "Known GPUs" gives each figure's source); aliases: other names
    `gpt2repro.plan --gpu` accepts.
    """

    name: str
    match: tuple[str, ...]
    peak_flops: float
    memory_gib: float
    aliases: tuple[str, ...] = ()


# Order matters: the first entry with a matching substring wins, so a specific name comes before
# the general name it contains ("H200 NVL" before "H200"; tests/test_metrics.py checks it).
# Memory: torch's total_memory in MiB / 1024, rounded down to 0.1 GiB, as published device
# readouts show it; where none was found, nvidia-smi's total less 0.5 GiB (the gap between the
# two on the H100 SXM and A100 40GB), or the same memory's sibling (docs/planning.md).
GPUS: tuple[GPU, ...] = (
    GPU("H100 PCIe", ("H100 PCIe",), 756e12, 79.1),  # torch: 81,008 MiB
    GPU("H100 NVL", ("H100 NVL",), 835e12, 93.0),  # nvidia-smi: 95,830 MiB, less 0.5 GiB
    GPU("H100 SXM", ("H100",), 989e12, 79.1, ("H100", "H100 80GB HBM3")),  # torch: 81,082 MiB
    GPU("H200 NVL", ("H200 NVL",), 835e12, 139.8),  # the H200 SXM's 141 GB HBM3e; lower power
    GPU("H200 SXM", ("H200",), 989e12, 139.8, ("H200",)),  # torch: 143,156 MiB
    GPU("H800 PCIe", ("H800 PCIe",), 756e12, 79.1),  # the H100 PCIe's export variant, same memory
    GPU("H800 SXM", ("H800",), 989e12, 79.1, ("H800",)),  # the H100 SXM's, same memory
    GPU("A100 40GB", ("A100-SXM4-40GB", "A100-PCIE-40GB"), 312e12, 39.5, ("A100-40GB",)),  # 40,536
    # nvidia-smi: 81,920 MiB, less 0.5 GiB
    GPU("A100 80GB", ("A100",), 312e12, 79.5, ("A100-80GB", "A100 SXM", "A100 PCIe")),
    GPU("L40S", ("L40S",), 362.05e12, 44.5),  # torch: 45,589 MiB
    # GeForce: bf16 with fp32 accumulation (what torch's bf16 matmuls use) runs at half the
    # fp16-accumulate rate the marketing figure quotes. torch: 24,563 MiB.
    GPU("RTX 4090", ("RTX 4090",), 165.2e12, 23.9, ("4090", "GeForce RTX 4090")),
)

# (substring of the device name, dense bf16 peak FLOP/s), first match wins: the MFU lookup's view
# of GPUS.
GPU_PEAK_FLOPS: list[tuple[str, float]] = [(m, g.peak_flops) for g in GPUS for m in g.match]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token, llm.c's convention: 6N + 6·L·C·T (attention at causal half cost)."""
    return 6.0 * n_params + 6.0 * n_layer * n_embd * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this device by name, or None when unknown (CPU, MPS, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops_for_name(name)


def gpu_for_device_name(name: str) -> GPU | None:
    """The GPUS row of a CUDA device name ("NVIDIA H100 80GB HBM3"), or None when unknown."""
    for gpu in GPUS:
        if any(m.lower() in name.lower() for m in gpu.match):
            return gpu
    return None


def peak_flops_for_name(name: str) -> float | None:
    """Dense bf16 peak of a CUDA device name, or None when unknown."""
    gpu = gpu_for_device_name(name)
    return None if gpu is None else gpu.peak_flops


def mfu(
    flops_per_tok: float, tokens_per_s: float, peak_per_device: float | None, n_devices: int
) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (never a guess)."""
    if peak_per_device is None or tokens_per_s <= 0:
        return None
    return flops_per_tok * tokens_per_s / (peak_per_device * n_devices)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


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
        self._samples: list[list[Any]] = []
        if not enabled or mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            from gpt2repro.errors import UserError

            raise UserError(
                f"log.wandb_mode={mode} needs wandb: pip install 'gpt2repro[wandb]' "
                "(or set --log.wandb_mode=disabled)"
            ) from None
        id_file = run_dir / "wandb_id.txt"
        # Our own id (wandb's generator moved between versions): 8 lowercase hex characters.
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        if not id_file.exists():
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            mode=mode,
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
        import wandb

        self._samples.append([step, text])
        self.run.log(
            {"samples": wandb.Table(columns=["step", "text"], data=self._samples)}, step=step
        )

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def git_sha(repo: Path | None = None) -> str:
    """HEAD of the source tree (with "-dirty" when it has uncommitted changes), or "unknown"."""
    import subprocess

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


def run_header(
    cfg: Any, info: Any, argv: list[str], grad_accum: int, n_params: int
) -> dict[str, Any]:
    """What reproduces a run: versions, GPUs, world size, git SHA, argv, batch math, config."""
    import platform

    import numpy as np
    import tiktoken

    from gpt2repro.config import to_dict, to_toml

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
            "tiktoken": tiktoken.__version__,
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


class RunLog:
    """Where a training run reports: the console, metrics.jsonl and wandb. Every rank makes one
    and calls it alike; only rank 0 prints or writes."""

    def __init__(self, run_dir: Path, cfg: Any, is_main: bool) -> None:
        from gpt2repro.config import to_dict
        from gpt2repro.report import LiveReport

        self.is_main = is_main
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
        self.live = LiveReport(run_dir, enabled=is_main and cfg.log.report)
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
        self, header: dict[str, Any], *, step: int, tokens: int, resumed_from: Path | None
    ) -> None:
        """The start-up header on the console and the start/resume event in metrics.jsonl."""
        self.print(header["text"])
        event = "start" if resumed_from is None else "resume"
        self.record(
            {"event": event, "step": step, "tokens": tokens, **header["record"]}, wandb=False
        )
        if resumed_from is not None:
            self.print(f"resumed from {resumed_from} at step {step} ({tokens:,} tokens)")

    def can_sample(self, sample_every: int, vocab_size: int) -> bool:
        """Text samples are on (`log.sample_every`) and the model's vocabulary covers GPT-2's
        tokenizer (else a note)."""
        if sample_every <= 0:
            return False
        if vocab_size < 50257:
            self.print(
                f"note: no text samples: model.vocab_size={vocab_size} is smaller than "
                "GPT-2's tokenizer"
            )
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
        self.report()

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

    def report(self) -> None:
        """Rewrite RUN_DIR/report.html from metrics.jsonl (rank 0, `log.report`); never raises."""
        self.live.update()

    def close(self) -> None:
        """Flush metrics.jsonl, write the final report.html (no reloading once DONE exists), and
        finish wandb."""
        self.metrics.close()
        self.live.update()
        self.wandb.finish()
