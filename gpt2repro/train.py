"""Training: setup -> loop -> teardown, one code path for CPU, one GPU, DDP/FSDP and multi-node.

    python train.py --config configs/shakespeare.toml
    torchrun --standalone --nproc_per_node=8 train.py --config configs/gpt2_124m.toml

Step semantics: `step` counts completed optimizer steps. Evaluation, checkpoints and logs at
"step s" happen after the s-th update (and evaluation also at step 0 of a fresh run).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from gpt2repro import checkpoint, dist, precision
from gpt2repro.config import (
    Config,
    EvalConfig,
    grad_accum_steps,
    help_text,
    load_config,
    reject_unknown_args,
    to_dict,
)
from gpt2repro.errors import UserError, run_cli
from gpt2repro.fault import injected as injected_fault
from gpt2repro.guard import Guard
from gpt2repro.hardware import flops_per_token, mfu, peak_flops
from gpt2repro.metrics import RunLog, console_line, run_header
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer, lr_at
from gpt2repro.report import LiveReport

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped early on a signal; rerun to resume


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python train.py` / `torchrun ... train.py`; returns the exit status."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(help_text("train.py"))
        return 0
    cfg, rest = load_config(argv)
    reject_unknown_args(rest)
    info = dist.setup(cfg.train.device, cfg.dist.backend)
    ok = False
    try:
        status = train(cfg, info)
        ok = True
        return status
    finally:
        dist.teardown(clean=ok)


# --------------------------------------------------------------------------- helpers


@dataclass
class TrainState:
    """What the loop counts, carried by every checkpoint (in state.json): completed optimizer
    steps, tokens trained on, updates the guard skipped, and the spike guard's recent global
    losses (at most `guard.spike_window` of them)."""

    step: int = 0
    tokens: int = 0
    skipped: int = 0
    loss_history: deque[float] = field(default_factory=lambda: deque(maxlen=100))

    @classmethod
    def fresh(cls, loss_window: int) -> TrainState:
        return cls(loss_history=deque(maxlen=max(1, loss_window)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "skipped": self.skipped,
            "loss_history": list(self.loss_history),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """From a checkpoint's state (older ones lack `skipped` and `loss_history`)."""
        self.step, self.tokens = int(saved["step"]), int(saved["tokens"])
        self.skipped = int(saved.get("skipped", 0))
        self.loss_history.clear()
        self.loss_history.extend(saved.get("loss_history", []))  # keeps the newest window


class _Preemption:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signal = signum


def _tune_cpu_allocator() -> None:
    """Keep big freed buffers in the heap instead of returning them to the OS (glibc).

    On CPU each step allocates and frees the [B*T, vocab] logits; by default glibc maps and unmaps
    them every time and the page faults cost more than the math (the demo model's training step
    measured 4.4x slower with glibc's defaults: 3,664 vs 841 ms, docs/benchmarks.md "Training
    (CPU)"). Raising the mmap threshold avoids that. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 2**31 - 1)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        pass


def _check_run_dir(run_dir: Path) -> None:
    """The run directory, and its ckpt/ when present, take new files (before any training)."""
    for directory in (run_dir, run_dir / "ckpt"):
        if directory != run_dir and not directory.exists():
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(
                f"{'run directory' if directory == run_dir else 'checkpoint directory'} "
                f"{directory} is not writable ({e.strerror}); fix its permissions or set "
                "--run.dir to a writable path"
            ) from None


def load_eval_inputs(
    data_dir: str, eval_cfg: EvalConfig
) -> tuple[np.ndarray | None, list[Any] | None]:
    """(validation tokens, HellaSwag examples) for in-loop evaluation, each None when switched
    off; checks the files before anything expensive starts."""
    from gpt2repro import data, evaluate

    data.shard_paths(data_dir, "train")  # the train shards exist and are readable
    val_tokens = None
    if eval_cfg.every > 0:
        val_tokens = data.load_tokens(data_dir, "val", eval_cfg.val_tokens + 1)
    hellaswag = None
    if eval_cfg.hellaswag_every > 0:
        if not eval_cfg.hellaswag_file or not Path(eval_cfg.hellaswag_file).is_file():
            raise UserError(
                f"eval.hellaswag_file={eval_cfg.hellaswag_file!r} does not exist; run "
                "`python data_prep/hellaswag.py` or set --eval.hellaswag_every=0"
            )
        hellaswag = evaluate.load_hellaswag(eval_cfg.hellaswag_file, limit=eval_cfg.hellaswag_limit)
    return val_tokens, hellaswag


# --------------------------------------------------------------------------- the model and step


@dataclass
class Trainable:
    """What one training step needs. `model` is the module to run forward/backward through
    (DDP-wrapped and/or compiled); `raw_model` the bare GPT for state dicts, eval and sampling."""

    raw_model: GPT
    model: nn.Module
    optimizer: torch.optim.Optimizer
    n_params: int  # all parameters, vocab padding included (the FLOP count uses them)
    autocast_dtype: torch.dtype | None  # None = float32
    compiled: bool
    strategy: str  # "ddp" or "fsdp"


def build_model(cfg: Config, info: dist.DistInfo, load_from: Path | None = None) -> Trainable:
    """The model, FSDP sharding, optimizer, checkpoint weights and DDP/compile wrapping, in that
    order (the optimizer must see the sharded parameters; loading precedes wrapping). Seeds torch
    so every rank starts from the same weights. Shared by training and `bench train`."""
    device = info.device
    precision.enable_tf32(device)
    if device.type == "cpu":
        _tune_cpu_allocator()
    compiled = cfg.train.compile if cfg.train.compile is not None else device.type == "cuda"
    torch.manual_seed(cfg.train.seed)
    raw_model = GPT(cfg.model).to(device)
    n_params = raw_model.num_params(exclude_padding=False)
    raw_model.activation_checkpointing = cfg.train.activation_checkpointing
    raw_model.loss_chunk = cfg.train.loss_chunk
    autocast_dtype = precision.autocast_dtype(cfg.train.dtype, device)
    # FSDP2 all-gathers bf16 parameters when the run computes in bf16 anyway (fp32 reduction)
    param_dtype = autocast_dtype if cfg.dist.fsdp_mixed_precision else None
    dist.shard(raw_model, info, cfg.dist.strategy, param_dtype)  # in place, before the optimizer
    optimizer = build_optimizer(raw_model, cfg.optim, device.type)
    if load_from is not None:
        checkpoint.load_into(raw_model, optimizer, load_from)
    return Trainable(
        raw_model=raw_model,
        model=dist.wrap(raw_model, info, cfg.dist, compile=compiled),
        optimizer=optimizer,
        n_params=n_params,
        autocast_dtype=autocast_dtype,
        compiled=compiled,
        strategy=cfg.dist.strategy,
    )


def forward_backward(
    trainable: Trainable,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    grad_accum: int,
    grad_clip: float,
    info: dist.DistInfo,
    poison: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of one optimizer step: `grad_accum` micro-batches, then norm clipping.

    Returns (loss, grad norm) as device tensors: this rank's mean loss over its micro-batches and
    the global gradient norm before clipping. No host synchronisation. The caller zeroes the
    gradients before and steps the optimizer after (train loop and `gpt2repro.bench train`).
    `poison` (fault-injection tests only) multiplies the loss.
    """
    model, raw_model = trainable.model, trainable.raw_model
    loss_accum = torch.zeros((), device=info.device)
    for micro in range(grad_accum):
        x, y = next_batch()  # [B, T] each
        sync = micro == grad_accum - 1  # all-reduce gradients on the last micro-step only
        with dist.grad_sync(model, raw_model, strategy=trainable.strategy, info=info, sync=sync):
            with precision.autocast(info.device, trainable.autocast_dtype):
                _, loss = model(x, y, loss_only=True)  # no [B, T, vocab] logits
            loss = loss / grad_accum  # mean over the whole global batch after DDP's average
            if poison is not None:
                loss = loss * poison
            loss_accum += loss.detach()
            loss.backward()
    clip = grad_clip if grad_clip > 0 else math.inf
    norm = dist.full_tensor(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip))
    return loss_accum, norm


class StepTimer:
    """Wall time per optimizer step since the last reset (CUDA synchronised before reading)."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.cuda = device.type == "cuda"
        self.reset(step)

    def reset(self, step: int, synchronize: bool = False) -> None:
        if synchronize and self.cuda:
            torch.cuda.synchronize()
        self.start, self.start_step = time.perf_counter(), step

    def seconds_per_step(self, step: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - self.start) / max(1, step - self.start_step)


def _due(step: int, every: int, last: bool) -> bool:
    """Is a periodic action (every N steps, 0 = never, and at the last step) due at `step`?"""
    return last or (every > 0 and step % every == 0)


# --------------------------------------------------------------------------- the run


def _check_inputs_and_pick_resume(cfg: Config, info: dist.DistInfo) -> checkpoint.Resume | None:
    """The training data (a window at least, token ids in range), a writable run directory,
    then the checkpoint to resume from (None: start fresh); collective, every rank calls it."""
    from gpt2repro import data

    data.shards_with_a_window(cfg.data.dir, "train", cfg.train.seq_len)
    _check_token_ids(cfg, info)
    dist.on_main(functools.partial(_check_run_dir, Path(cfg.run.dir)))
    dist.barrier()
    return checkpoint.select_resume(
        mode=cfg.checkpoint.resume,
        run_dir=Path(cfg.run.dir),
        config=to_dict(cfg),
        allow_changes=cfg.checkpoint.allow_changes,
        is_main=info.is_main,
    )


def train(cfg: Config, info: dist.DistInfo) -> int:
    """Train per `cfg` on this process's share of the work; returns the exit status."""
    from gpt2repro import data

    train_cfg, log_cfg, eval_cfg = cfg.train, cfg.log, cfg.eval
    run_dir, device = Path(cfg.run.dir), info.device
    done_marker = run_dir / "DONE"

    # ---- checks before anything expensive (batch arithmetic, data, run dir, resume point)
    grad_accum = grad_accum_steps(train_cfg, info.world_size)
    val_tokens, hellaswag = load_eval_inputs(cfg.data.dir, eval_cfg)
    resume = _check_inputs_and_pick_resume(cfg, info)
    if resume is not None and resume.state["step"] >= train_cfg.max_steps and done_marker.exists():
        if info.is_main:
            print(
                f"run already complete ({resume.state['step']} steps, {done_marker}); nothing to do"
            )
        return 0

    # ---- model, optimizer, data position, counters, reporting
    trainable = build_model(cfg, info, load_from=resume.path if resume else None)
    train_loader = data.TokenLoader(
        cfg.data.dir,
        "train",
        batch_size=train_cfg.micro_batch_size,
        seq_len=train_cfg.seq_len,
        rank=info.rank,
        world_size=info.world_size,
        seed=train_cfg.seed,
        device=device,
    )
    state = TrainState.fresh(loss_window=cfg.guard.spike_window)
    if resume is not None:
        state.load_state_dict(resume.state)
        checkpoint.restore_rank(resume.state, train_loader, info)
    guard = Guard(cfg.guard, trainable.optimizer, info=info)
    log = RunLog(run_dir, cfg, info.is_main)
    live = LiveReport(run_dir, enabled=info.is_main and cfg.log.report)  # RUN_DIR/report.html
    header = run_header(
        cfg, info, argv=sys.argv, grad_accum=grad_accum, n_params=trainable.n_params
    )
    _report_start(log, header=header, state=state, resume=resume)
    if info.is_main:
        done_marker.unlink(missing_ok=True)
    can_sample = _can_sample(cfg, log)
    preemption = _Preemption()
    preemption.install()
    fault = injected_fault(info.rank)  # GPT2REPRO_FAULT: the reliability tests' hook

    # ---- the loop: one step; log; every N steps: save, evaluate, sample
    if state.step == 0 and (val_tokens is not None or hellaswag is not None):
        results = _evaluate(
            trainable, cfg, info, step=0, val_tokens=val_tokens, hellaswag=hellaswag
        )
        _log_eval(log, state, results)
        live.update()  # the live dashboard; never raises
    timer = StepTimer(device, state.step)
    first_step, last_saved = state.step, state.step if resume is not None else -1
    while state.step < train_cfg.max_steps:
        lr = lr_at(state.step, train_cfg.max_steps, cfg.optim)
        for group in trainable.optimizer.param_groups:
            group["lr"] = lr
        trainable.optimizer.zero_grad(set_to_none=True)
        loss, grad_norm = forward_backward(
            trainable,
            train_loader.next_batch,
            grad_accum=grad_accum,
            grad_clip=cfg.optim.grad_clip,
            info=info,
            poison=fault.poison(state.step + 1),
        )
        guard.step(loss=loss, grad_norm=grad_norm, step=state.step + 1, state=state)
        state.step += 1
        state.tokens += train_cfg.total_batch_tokens
        if state.step == first_step + 1 and log_cfg.every > 1:
            timer.reset(state.step, synchronize=True)  # leave compilation and warm-up out

        stop = dist.any_rank(preemption.signal is not None)
        last = state.step == train_cfg.max_steps
        if _due(state.step, log_cfg.every, last or stop):
            guard.sync(state)  # the exact skip count (device-side skips)
            _log_train(
                log,
                cfg,
                info,
                trainable,
                state=state,
                loss=loss,
                grad_norm=grad_norm,
                lr=lr,
                timer=timer,
            )
            timer.reset(state.step)
        paused = False  # saving, evaluating and sampling stay out of the step time
        if _due(state.step, cfg.checkpoint.every, last or stop):
            # First: a preempted run has seconds before SIGKILL.
            _save(
                trainable, cfg, info, state=state, guard=guard, loader=train_loader, header=header
            )
            last_saved, paused = state.step, True
        do_val = val_tokens is not None and _due(state.step, eval_cfg.every, last) and not stop
        do_hs = (
            hellaswag is not None and _due(state.step, eval_cfg.hellaswag_every, last) and not stop
        )
        if do_val or do_hs:
            results = _evaluate(
                trainable,
                cfg,
                info,
                step=state.step,
                val_tokens=val_tokens if do_val else None,
                hellaswag=hellaswag if do_hs else None,
            )
            _log_eval(log, state, results)
            live.update()
            paused = True
        if can_sample and _due(state.step, log_cfg.sample_every, last) and not stop:
            log.sample(state.step, state.tokens, _sample_text(trainable, cfg, state.step))
            paused = True
        if paused:
            timer.reset(state.step)
        fault.after_step(state.step)
        if stop:
            _report_preempted(log, cfg, state=state, signum=preemption.signal)
            log.record(
                {"event": "preempted", "step": state.step, "tokens": state.tokens}, wandb=False
            )
            log.close()
            live.update()
            return EXIT_PREEMPTED

    # ---- teardown
    if last_saved != state.step:
        _save(trainable, cfg, info, state=state, guard=guard, loader=train_loader, header=header)
    if info.is_main:
        done_marker.write_text(json.dumps({"step": state.step, "tokens": state.tokens}) + "\n")
    log.record({"event": "done", "step": state.step, "tokens": state.tokens}, wandb=False)
    log.print(f"done: {state.step} steps, {state.tokens:,} tokens; run directory {run_dir}")
    log.close()
    live.update()  # the final page: DONE exists, so it stops reloading
    return 0


# --------------------------------------------------------------------------- what the loop calls


def _check_token_ids(cfg: Config, info: dist.DistInfo) -> None:
    """Every token id fits model.vocab_size (collective: each rank scans its share of shards;
    the val shards only when validation is on)."""
    from gpt2repro import data

    splits = ("train", "val") if cfg.eval.every > 0 else ("train",)
    problem = data.token_id_problem(
        cfg.data.dir, cfg.model.vocab_size, info.rank, info.world_size, splits=splits
    )
    dist.raise_if_any(problem)


def _report_preempted(log: RunLog, cfg: Config, *, state: TrainState, signum: int | None) -> None:
    signame = signal.Signals(signum).name if signum else "signal"
    saved_to = Path(cfg.run.dir) / "ckpt" / checkpoint.step_dir_name(state.step)
    how = "rerun the same command"
    if cfg.checkpoint.resume != "auto":  # restart or a path would not continue from here
        how = "rerun with --checkpoint.resume=auto"
    log.print(
        f"preempted by {signame} at step {state.step}: checkpoint saved to {saved_to}; "
        f"{how} to resume"
    )


def _can_sample(cfg: Config, log: RunLog) -> bool:
    """Text samples are on and the model's vocabulary covers GPT-2's tokenizer (else a note)."""
    if cfg.log.sample_every <= 0:
        return False
    if cfg.model.vocab_size < 50257:
        log.print(
            f"note: no text samples: model.vocab_size={cfg.model.vocab_size} is smaller than "
            "GPT-2's tokenizer"
        )
        return False
    return True


def _report_start(
    log: RunLog, *, header: dict[str, Any], state: TrainState, resume: checkpoint.Resume | None
) -> None:
    """The start-up header on the console and the start/resume event in metrics.jsonl."""
    log.print(header["text"])
    event = "start" if resume is None else "resume"
    record = {"event": event, "step": state.step, "tokens": state.tokens, **header["record"]}
    log.record(record, wandb=False)
    if resume is not None:
        log.print(f"resumed from {resume.path} at step {state.step} ({state.tokens:,} tokens)")


def _log_train(
    log: RunLog,
    cfg: Config,
    info: dist.DistInfo,
    trainable: Trainable,
    *,
    state: TrainState,
    loss: torch.Tensor,
    grad_norm: torch.Tensor,
    lr: float,
    timer: StepTimer,
) -> None:
    """The train line of a log step: console and metrics record (a collective: the loss is
    averaged over ranks)."""
    global_loss = dist.all_reduce_mean(loss.clone()).item()
    seconds = timer.seconds_per_step(state.step)
    tok_per_s = cfg.train.total_batch_tokens / seconds
    flops = flops_per_token(
        n_params=trainable.n_params,
        n_layer=cfg.model.n_layer,
        n_embd=cfg.model.n_embd,
        seq_len=cfg.train.seq_len,
    )
    on_cuda = info.device.type == "cuda"
    record = {
        "step": state.step,
        "loss": global_loss,
        "lr": lr,
        "grad_norm": float(grad_norm.item()),
        "tokens": state.tokens,
        "tok_per_s": tok_per_s,
        "mfu": mfu(
            flops,
            tokens_per_s=tok_per_s,
            peak_per_device=peak_flops(info.device),
            n_devices=info.world_size,
        ),
        "step_ms": 1000 * seconds,
        "skipped": state.skipped,
        "mem_gib": torch.cuda.max_memory_allocated(info.device) / 2**30 if on_cuda else None,
    }
    eta_s = seconds * (cfg.train.max_steps - state.step)
    line = console_line(
        record, max_steps=cfg.train.max_steps, eta_s=eta_s, peak_mem_gib=record["mem_gib"]
    )
    log.record(record, text=line)


def _evaluate(
    trainable: Trainable,
    cfg: Config,
    info: dist.DistInfo,
    *,
    step: int,
    val_tokens: np.ndarray | None,
    hellaswag: list[Any] | None,
) -> dict[str, float]:
    """The in-loop evaluation after step `step` (collective)."""
    from gpt2repro import evaluate

    return evaluate.evaluate_in_loop(
        trainable.raw_model,
        val_tokens=val_tokens,
        hellaswag=hellaswag,
        seq_len=cfg.train.seq_len,
        batch_size=cfg.eval.batch_size or cfg.train.micro_batch_size,
        batch_examples=cfg.eval.batch_examples,
        device=info.device,
        autocast_dtype=trainable.autocast_dtype,
        rank=info.rank,
        world_size=info.world_size,
        on_batch=functools.partial(injected_fault(info.rank).inside, "eval", step),
    )


def _log_eval(log: RunLog, state: TrainState, results: dict[str, float]) -> None:
    shown = " | ".join(f"{k} {v:.4f}" for k, v in results.items())
    record = {"step": state.step, "tokens": state.tokens, **results}
    log.record(record, text=f"eval step {state.step:>6} | {shown}")


def _sample_text(trainable: Trainable, cfg: Config, step: int) -> str:
    """A text sample of the prompt in `log.sample_prompt`, seeded by the step (collective-free)."""
    from gpt2repro.sample import complete

    return complete(
        trainable.raw_model,
        cfg.log.sample_prompt,
        max_new_tokens=cfg.log.sample_tokens,
        temperature=1.0,
        top_k=50,
        seed=cfg.train.seed + step,
        autocast_dtype=trainable.autocast_dtype,
    )


def _save(
    trainable: Trainable,
    cfg: Config,
    info: dist.DistInfo,
    *,
    state: TrainState,
    guard: Guard,
    loader: Any,
    header: dict[str, Any],
) -> Path:
    """Write a checkpoint of the current step (collective) and say where."""
    guard.sync(state)  # the checkpoint must carry the exact skip count
    path = checkpoint.save(
        Path(cfg.run.dir),
        state.step,
        model=trainable.raw_model,
        optimizer=trainable.optimizer,
        state={
            **state.state_dict(),
            "config": to_dict(cfg),
            "git_sha": header["record"]["git_sha"],
        },
        loader_state=loader.state_dict(),
        keep_last=cfg.checkpoint.keep_last,
    )
    if info.is_main:
        print(f"checkpoint: {path}", flush=True)
    return path


if __name__ == "__main__":  # python -m gpt2repro.train (the same as train.py)
    raise SystemExit(main())
