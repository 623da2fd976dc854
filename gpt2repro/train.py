"""Training: checks -> set-up -> loop -> teardown, one code path for CPU, one GPU, DDP/FSDP and
multi-node.

    python train.py --config configs/shakespeare.toml
    torchrun --standalone --nproc_per_node=8 train.py --config configs/gpt2_124m.toml

Step semantics: `step` counts completed optimizer steps. Evaluation, checkpoints and logs at
"step s" happen after the s-th update (and evaluation also at step 0 of a fresh run).

The loop works over one `TrainContext` (what every step needs) and takes one optimizer step per
`train_step` call; the checkpointer, the in-loop evaluation and the run log each decide for
themselves whether they are due at a step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from gpt2repro import checkpoint, core, data, dist, precision, preflight
from gpt2repro.atomic import write_text
from gpt2repro.config import (
    Config,
    EvalConfig,
    grad_accum_steps,
    help_text,
    load_config,
    reject_unknown_args,
    to_dict,
    to_toml,
)
from gpt2repro.errors import UserError, run_cli
from gpt2repro.evaluate import EvalSettings, evaluate_in_loop
from gpt2repro.fault import injected as injected_fault
from gpt2repro.guard import Guard
from gpt2repro.hardware import flops_per_token, mfu, peak_flops
from gpt2repro.hellaswag import load_hellaswag
from gpt2repro.lock import DirLock
from gpt2repro.metrics import CONFIG_TOML, RunLog, run_header
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer, lr_at, set_hyperparameters, set_lr
from gpt2repro.reference import GPT2_124M_VAL_LOSS, gpt2_val_loss_comparable
from gpt2repro.report import LiveReport
from gpt2repro.resume import Resume, check_resume_flags, restore_rank, select_resume
from gpt2repro.sample import complete
from gpt2repro.scoring import Batching, Example
from gpt2repro.services import wandb_problem
from gpt2repro.tokenizer import N_VOCAB

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped early on a signal; rerun to resume


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python train.py` / `torchrun ... train.py`; returns the exit status."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(help_text("train.py"))
        return 0
    argv, saved = with_run_config(argv)
    cfg, rest = load_config(argv)
    reject_unknown_args(rest)
    info = dist.setup(cfg.train.device, cfg.dist.backend, timeout_s=cfg.dist.init_timeout_s)
    if saved is not None and info.is_main:
        print(f"config: {saved} (the run's saved settings; flags given override them)", flush=True)
    ok = False
    try:
        with contextlib.ExitStack() as held:  # rank 0's lock on the run directory, until exit
            status = train(cfg, info, held)
        ok = True
        return status
    finally:
        dist.teardown(clean=ok)


def with_run_config(argv: list[str]) -> tuple[list[str], Path | None]:
    """`argv` with `--config RUN_DIR/config.toml` in front when no `--config` is given and the
    run directory (`--run.dir`, or the default) holds one, and that file (else None):
    `train.py --run.dir=RUN` alone resumes with the run's saved settings; flags on the command
    line still override them (and the resume rules judge the changes)."""
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv, None
    run_dir = load_config(argv)[0].run.dir  # the command line's run.dir, read as training reads it
    saved = Path(run_dir) / CONFIG_TOML
    if not run_dir or not saved.is_file():
        return argv, None
    return ["--config", str(saved), *argv], saved


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """RUN_DIR/config.toml: the run's full resolved config, rewritten at each start and resume
    (metrics.jsonl keeps every session's copy)."""
    head = (
        "# The resolved config of this run, written by train.py at its latest start or resume.\n"
        "# `python train.py --run.dir=<this directory>` reads it: flags given override it.\n\n"
    )
    write_text(run_dir / CONFIG_TOML, head + to_toml(cfg))


# --------------------------------------------------------------------------- the run


def train(cfg: Config, info: dist.DistInfo, held: contextlib.ExitStack) -> int:
    """Train per `cfg` on this process's share of the work; returns the exit status. Rank 0
    locks the run directory (lock.DirLock) into `held`, which the caller closes at exit."""
    run_dir = Path(cfg.run.dir)

    # ---- checks before anything expensive: paths, prompt, memory; batch arithmetic, wandb,
    # data, run dir, resume point
    preflight.check(cfg, info)
    grad_accum = grad_accum_steps(cfg.train, info.world_size)
    dist.raise_if_any(wandb_problem(cfg.log.wandb_mode) if info.is_main else None)  # rank 0 logs
    data.shard_paths(cfg.data.dir, "train")  # train shards first: their error before val's
    evaluator = InLoopEval(cfg, info)  # reads and checks the validation and HellaSwag inputs
    resume = _check_inputs_and_pick_resume(cfg, info, held)
    if resume and resume.state["step"] >= cfg.train.max_steps and (run_dir / "DONE").exists():
        if info.is_main:
            steps = resume.state["step"]
            print(f"run already complete ({steps} steps, {run_dir / 'DONE'}); nothing to do")
        return 0

    # ---- set-up: model and optimizer, data position, counters, reporting
    loader = data.TokenLoader(
        cfg.data.dir,
        "train",
        batch_size=cfg.train.micro_batch_size,
        seq_len=cfg.train.seq_len,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.train.seed,
        device=info.device,
    )
    run = TrainContext(
        cfg=cfg,
        info=info,
        trainable=build_model(cfg, info, load_from=resume.path if resume else None),
        loader=loader,
        grad_accum=grad_accum,
        log=RunLog(
            run_dir, cfg, info.is_main, LiveReport(run_dir, info.is_main and cfg.log.report)
        ),
    )
    if resume is not None:
        run.state.load_state_dict(resume.state)
        run.guard.load_state_dict(resume.state)
        restore_rank(resume.state, loader, info)
    header = run_header(cfg, info, argv=sys.argv, grad_accum=grad_accum, n_params=run.n_params)
    run.log.start(
        header,
        step=run.state.step,
        tokens=run.state.tokens,
        resumed_from=resume.path if resume else None,
        changed=resume.changed if resume else None,
    )
    if info.is_main:
        (run_dir / "DONE").unlink(missing_ok=True)
        write_run_config(run_dir, cfg)
        held.push(
            lambda _kind, error, _tb: run.log.crashed(run.state.step, run.state.tokens, error)
        )
    run.log.set_devices(info.world_size, info.device.type == "cuda")
    on_disk = run.state.step if resume is not None else -1
    saver = Checkpointer(cfg, loader, git_sha=header["record"]["git_sha"], on_disk=on_disk)
    can_sample = run.log.can_sample(cfg.log.sample_every, cfg.model.vocab_size)
    fault = injected_fault(info.rank)  # GPT2REPRO_FAULT: the reliability tests' hook
    run.preemption.install()

    # ---- the loop: one step; then the log, a checkpoint, an evaluation, a sample when due
    if run.state.step == 0:
        evaluator.maybe_run(run, last=True)  # the untrained model's numbers
    timer = StepTimer(info.device, run.state.step)
    first_step = run.state.step
    losses = LossWindow()
    if run.trainable.compiled:
        run.log.print(
            "compiling (torch.compile) at the first step: it can take a minute or more ..."
        )
    while run.state.step < cfg.train.max_steps:
        out = train_step(run)
        losses.add(out.loss)
        step = run.state.step
        last = step == cfg.train.max_steps
        if step == first_step + 1:
            first = timer.seconds_per_step(step)  # synchronizes: compilation and warm-up
            run.log.print(
                f"first step: {first:.1f} s"
                + (" (compilation included)" if run.trainable.compiled else "")
            )
            if cfg.log.every > 1:
                timer.reset(step, synchronize=True)  # leave compilation and warm-up out
        if _due(step, cfg.log.every, last or out.stop):
            record = _train_record(run, out, timer.seconds_per_step(step))
            run.log.train({**record, "loss_mean": losses.mean()}, cfg.train.max_steps)
            timer.reset(step)
        # Saving, evaluating and sampling stay out of the step time (`paused`).
        paused = saver.maybe_save(run, last or out.stop)  # first: a preempted run has seconds
        if not out.stop:
            paused |= evaluator.maybe_run(run, last)
            if can_sample and _due(step, cfg.log.sample_every, last):
                run.log.sample(step, run.state.tokens, _sample_text(run))
                paused = True
        if paused:
            timer.reset(step)
        fault.after_step(step)
        if out.stop:
            saved_to = run_dir / "ckpt" / checkpoint.step_dir_name(step)
            run.log.preempted(
                step=step,
                tokens=run.state.tokens,
                signum=run.preemption.signal,
                saved_to=saved_to,
                resume_mode=cfg.checkpoint.resume,
            )
            run.log.close()
            return EXIT_PREEMPTED

    # ---- teardown
    saver.maybe_save(run, last=True)  # unless this step is saved already
    if info.is_main:
        state = {"step": run.state.step, "tokens": run.state.tokens}
        (run_dir / "DONE").write_text(json.dumps(state) + "\n")
    run.log.done(step=run.state.step, tokens=run.state.tokens, run_dir=run_dir)
    return 0


# --------------------------------------------------------------------------- one step


class Batches(Protocol):
    """Where micro-batches come from: the token loader in training, a fixed batch in `bench`."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class TrainState:
    """What the loop counts, carried by every checkpoint (in state.json): completed optimizer
    steps and tokens trained on. (The guard's counters travel beside them: `Guard.state_dict`.)"""

    step: int = 0
    tokens: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.step, self.tokens = int(saved["step"]), int(saved["tokens"])


class Preemption:
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


@dataclass
class Trainable:
    """The model and optimizer of one run. `model` is the module to run forward/backward through
    (DDP-wrapped and/or compiled); `raw_model` the bare GPT for state dicts, eval and sampling."""

    raw_model: GPT
    model: nn.Module
    optimizer: torch.optim.Optimizer
    info: dist.DistInfo
    n_params: int  # all parameters, vocab padding included (the FLOP count uses them)
    autocast_dtype: torch.dtype | None  # None = float32
    compiled: bool
    strategy: str  # "ddp" or "fsdp"
    grad_clip: float  # optim.grad_clip: clip the global gradient norm to this; 0 = off
    # dist.fsdp_keep_unsharded: parameters stay gathered between micro-steps (dist.grad_sync)
    fsdp_keep_unsharded: bool = False


@dataclass
class TrainContext:
    """What the loop works with: the run's config and process, the model and optimizer, where
    batches come from, the counters and the guard, and where the run reports."""

    cfg: Config
    info: dist.DistInfo
    trainable: Trainable
    loader: Batches
    grad_accum: int  # micro-steps per optimizer step (config.grad_accum_steps)
    log: RunLog
    state: TrainState = field(default_factory=TrainState)
    preemption: Preemption = field(default_factory=Preemption)
    guard: Guard = field(init=False)  # steps the optimizer (built from the config section)

    def __post_init__(self) -> None:
        self.guard = Guard(self.cfg.guard, self.trainable.optimizer, self.info)

    @property
    def n_params(self) -> int:
        return self.trainable.n_params


@dataclass
class StepOutput:
    """What one optimizer step leaves for the log: this rank's mean loss and the global gradient
    norm (device tensors, not yet read), the learning rate used, and whether any rank was told to
    stop (a preemption signal)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    stop: bool


def train_step(run: TrainContext) -> StepOutput:
    """Exactly one optimizer step: set the learning rate, zero the gradients, run the micro-steps,
    step through the guard, count it, and poll every rank for a stop (collective)."""
    trainable, state = run.trainable, run.state
    lr = lr_at(state.step, run.cfg.train.max_steps, run.cfg.optim)
    set_lr(trainable.optimizer, lr, run.cfg.optim)  # each group its own peak (optim.py)
    trainable.optimizer.zero_grad(set_to_none=True)
    loss, grad_norm = forward_backward(
        trainable, run.loader.next_batch, run.grad_accum, step=state.step + 1
    )
    run.guard.step(loss=loss, grad_norm=grad_norm, step=state.step + 1)
    state.step += 1
    state.tokens += run.cfg.train.total_batch_tokens
    stop = dist.any_rank(run.preemption.signal is not None)
    return StepOutput(loss=loss, grad_norm=grad_norm, lr=lr, stop=stop)


def forward_backward(
    trainable: Trainable,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    grad_accum: int,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of optimizer step `step` (1-based): `grad_accum` micro-batches, then norm
    clipping. Returns (loss, grad norm) as device tensors: this rank's mean loss over its
    micro-batches and the global gradient norm before clipping. No host synchronisation. The
    caller zeroes the gradients before and steps the optimizer after."""
    model, raw_model, info = trainable.model, trainable.raw_model, trainable.info
    loss_factor = injected_fault(info.rank).poison(step)  # None outside the reliability tests
    loss_accum = torch.zeros((), device=info.device)
    for micro in range(grad_accum):
        x, y = next_batch()  # [B, T] each
        sync = micro == grad_accum - 1  # all-reduce gradients on the last micro-step only
        with dist.grad_sync(
            model,
            raw_model,
            strategy=trainable.strategy,
            info=info,
            sync=sync,
            keep_unsharded=trainable.fsdp_keep_unsharded,
        ):
            with precision.autocast(info.device, trainable.autocast_dtype):
                _, loss = model(x, y, loss_only=True)  # no [B, T, vocab] logits
            loss = loss / grad_accum  # mean over the whole global batch after DDP's average
            if loss_factor is not None:
                loss = loss * loss_factor
            loss_accum += loss.detach()
            loss.backward()
    clip = trainable.grad_clip if trainable.grad_clip > 0 else math.inf
    norm = dist.full_tensor(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip))
    return loss_accum, norm


# --------------------------------------------------------------------------- set-up


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
    raw_model = GPT(
        cfg.model,
        activation_checkpointing=cfg.train.activation_checkpointing,
        loss_chunk=cfg.train.loss_chunk,
        attention_backend=cfg.train.attention_backend,  # before compiling: traced into the graph
    ).to(device)
    n_params = raw_model.num_params(exclude_padding=False)
    autocast_dtype = precision.autocast_dtype(cfg.train.dtype, device)
    # FSDP2 all-gathers bf16 parameters when the run computes in bf16 anyway (fp32 reduction)
    param_dtype = autocast_dtype if cfg.dist.fsdp_mixed_precision else None
    dist.shard(raw_model, info, cfg.dist.strategy, param_dtype)  # in place, before the optimizer
    optimizer = build_optimizer(raw_model, cfg.optim, device.type)
    if load_from is not None:
        checkpoint.load_into(raw_model, optimizer, load_from)
        set_hyperparameters(optimizer, cfg.optim)  # an allowed change takes effect
    return Trainable(
        raw_model=raw_model,
        model=dist.wrap(
            raw_model, info, cfg.dist, compile=compiled, compile_mode=cfg.train.compile_mode
        ),
        optimizer=optimizer,
        info=info,
        n_params=n_params,
        autocast_dtype=autocast_dtype,
        compiled=compiled,
        strategy=cfg.dist.strategy,
        grad_clip=cfg.optim.grad_clip,
        fsdp_keep_unsharded=cfg.dist.fsdp_keep_unsharded,
    )


def _tune_cpu_allocator() -> None:
    """Keep big freed buffers in the heap instead of returning them to the OS (glibc).

    On CPU each step allocates and frees the [B*T, vocab] logits; by default glibc maps and unmaps
    them every time and the page faults cost more than the math (the demo model's training step
    measured 4.4x slower with glibc's defaults: 3,664 vs 841 ms, docs/benchmarks.md "Training
    (CPU)"). Raising the mmap threshold avoids that. No-op off glibc.
    """
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


def _check_inputs_and_pick_resume(
    cfg: Config, info: dist.DistInfo, held: contextlib.ExitStack
) -> Resume | None:
    """The training data (a window at least, token ids in range), the run directory locked for
    this job (into `held`) and writable, then the checkpoint to resume from (None: start fresh);
    collective, every rank calls it."""
    data.shards_with_a_window(cfg.data.dir, "train", cfg.train.seq_len)
    splits = ("train", "val") if cfg.eval.every > 0 else ("train",)
    problem = data.token_id_problem(
        cfg.data.dir, cfg.model.vocab_size, info.rank, info.world_size, splits=splits
    )
    dist.raise_if_any(problem)  # every token id fits model.vocab_size (each rank scans a share)
    dist.on_main(lambda: _lock_run_dir(cfg, held))
    if info.is_main:
        _check_run_dir(Path(cfg.run.dir))
    dist.barrier()
    return select_resume(
        mode=cfg.checkpoint.resume,
        run_dir=Path(cfg.run.dir),
        config=to_dict(cfg),
        allow_changes=cfg.checkpoint.allow_changes,
        is_main=info.is_main,
    )


def _lock_run_dir(cfg: Config, held: contextlib.ExitStack) -> None:
    """One job per run directory: rank 0 takes its lock before anything there is written or
    cleaned up (a second job refuses, naming the holder); a resume mode is checked first, so a
    misspelt one leaves nothing behind."""
    check_resume_flags(cfg.checkpoint.resume, cfg.checkpoint.allow_changes)
    held.enter_context(DirLock(cfg.run.dir, "--run.dir"))


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


# --------------------------------------------------------------------------- what the loop calls


def _due(step: int, every: int, last: bool) -> bool:
    """Is a periodic action (every N steps, 0 = never, and at the last step) due at `step`?"""
    return last or (every > 0 and step % every == 0)


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


def _train_record(run: TrainContext, out: StepOutput, seconds: float) -> dict[str, Any]:
    """The train record of a log step (a collective: the loss is averaged over ranks)."""
    cfg, info = run.cfg, run.info
    run.guard.sync()  # the exact skip count (device-side skips folded in)
    tok_per_s = cfg.train.total_batch_tokens / seconds
    flops = flops_per_token(
        n_params=run.n_params,
        n_layer=cfg.model.n_layer,
        n_embd=cfg.model.n_embd,
        seq_len=cfg.train.seq_len,
        lookup_params=cfg.model.lookup_params,
    )
    on_cuda = info.device.type == "cuda"
    return {
        "step": run.state.step,
        "loss": dist.all_reduce_mean(out.loss.clone()).item(),
        "lr": out.lr,
        "grad_norm": float(out.grad_norm.item()),
        "tokens": run.state.tokens,
        "tok_per_s": tok_per_s,
        "mfu": mfu(
            flops,
            tokens_per_s=tok_per_s,
            peak_per_device=peak_flops(info.device),
            n_devices=info.world_size,
        ),
        "step_ms": 1000 * seconds,
        "skipped": run.guard.skipped,
        "mem_gib": torch.cuda.max_memory_allocated(info.device) / 2**30 if on_cuda else None,
    }


class LossWindow:
    """The mean training loss since the last log line, over every step and rank: summed on the
    device (no host sync per step), read at the log step (a collective)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def mean(self) -> float:
        """The mean since the last call (every rank alike), and a fresh window."""
        assert self.total is not None and self.count > 0
        mean = dist.all_reduce_mean(self.total / self.count).item()
        self.total, self.count = None, 0
        return mean


class Checkpointer:
    """Writes a checkpoint when one is due (every `checkpoint.every` steps, at the last step and
    on a stop), never twice for the same step; it stores `loader`'s position with it."""

    def __init__(self, cfg: Config, loader: data.TokenLoader, git_sha: str, on_disk: int) -> None:
        self.cfg = cfg
        self.loader = loader
        self.git_sha = git_sha
        self.data_fingerprint = data.data_fingerprint(cfg.data.dir)  # what resume compares
        self.last_saved = on_disk  # the step already on disk (the resumed one), or -1

    def maybe_save(self, run: TrainContext, last: bool) -> bool:
        """Save step `run.state.step` if due and not saved yet; whether it did (collective)."""
        step = run.state.step
        if step == self.last_saved or not _due(step, self.cfg.checkpoint.every, last):
            return False
        t0 = time.perf_counter()
        path = checkpoint.save(
            Path(self.cfg.run.dir),
            step,
            model=run.trainable.raw_model,
            optimizer=run.trainable.optimizer,
            state={
                **run.state.state_dict(),
                **run.guard.state_dict(),  # the exact skip count
                "config": to_dict(self.cfg),
                "git_sha": self.git_sha,
                "data_fingerprint": self.data_fingerprint,
            },
            loader_state=self.loader.state_dict(),
            keep_last=self.cfg.checkpoint.keep_last,
        )
        self.last_saved = step
        if run.info.is_main:
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**30
            seconds = time.perf_counter() - t0
            print(f"checkpoint: {path} ({size:.2f} GiB in {seconds:.1f} s)", flush=True)
        return True


class InLoopEval:
    """Validation loss, HellaSwag and CORE inside the loop: reads and checks their inputs at
    start-up (before anything expensive), decides when each is due, runs them on every rank,
    logs them."""

    def __init__(self, cfg: Config, info: dist.DistInfo) -> None:
        self.cfg, self.info = cfg, info
        eval_cfg = cfg.eval
        # GPT-2 124M's validation loss beside ours on the eval line, where it is comparable
        comparable = gpt2_val_loss_comparable(cfg.data.dir, cfg.train.seq_len)
        self.gpt2_val_loss = GPT2_124M_VAL_LOSS if comparable else None
        self.val_tokens: np.ndarray | None = None
        if eval_cfg.every > 0:
            self.val_tokens = data.load_tokens(cfg.data.dir, "val", eval_cfg.val_tokens + 1)
        self.hellaswag: list[Example] | None = None
        if eval_cfg.hellaswag_every > 0:
            if not eval_cfg.hellaswag_file or not Path(eval_cfg.hellaswag_file).is_file():
                raise UserError(
                    f"eval.hellaswag_file={eval_cfg.hellaswag_file!r} does not exist; run "
                    "`python data_prep/hellaswag.py` or set --eval.hellaswag_every=0"
                )
            self.hellaswag = load_hellaswag(eval_cfg.hellaswag_file, limit=eval_cfg.hellaswag_limit)
        self.core_tasks: list[core.Task] | None = None
        if eval_cfg.core_every > 0:
            self.core_tasks = load_core_tasks(eval_cfg, cfg.model.vocab_size)

    def maybe_run(self, run: TrainContext, last: bool) -> bool:
        """Evaluate after step `run.state.step` what is due (collective); whether anything ran."""
        step, eval_cfg = run.state.step, self.cfg.eval
        val = self.val_tokens if _due(step, eval_cfg.every, last) else None
        hellaswag = self.hellaswag if _due(step, eval_cfg.hellaswag_every, last) else None
        core_tasks = self.core_tasks if _due(step, eval_cfg.core_every, last) else None
        if val is None and hellaswag is None and core_tasks is None:
            return False
        settings = EvalSettings(
            seq_len=self.cfg.train.seq_len,
            batch_size=eval_cfg.batch_size or self.cfg.train.micro_batch_size,
            batch_examples=eval_cfg.batch_examples,
            autocast_dtype=run.trainable.autocast_dtype,
        )
        t0 = time.perf_counter()
        results = evaluate_in_loop(
            run.trainable.raw_model,
            val_tokens=val,
            hellaswag=hellaswag,
            settings=settings,
            info=self.info,
            step=step,
        )
        if core_tasks is not None:
            # The capped subset in the loop (a tenth of the full CORE's work at 500 per task);
            # the whole bundle once, after the last step: the number comparable with GPT-2's.
            cap = 0 if step == self.cfg.train.max_steps else eval_cfg.core_max_per_task
            results.update(core_record(run, core_tasks, cap, eval_cfg.batch_examples))
        seconds = time.perf_counter() - t0
        run.log.evaluation(step, run.state.tokens, results, seconds, self.gpt2_val_loss)
        return True


def load_core_tasks(eval_cfg: EvalConfig, vocab_size: int) -> list[core.Task]:
    """CORE's tasks for the loop, read and checked at start-up: GPT-2's vocabulary (by the
    config, before the model is built), the bundle (read, every row checked, in the seeded
    order) and the cap (enough examples for each task's shots). One-line errors name the key
    and the fix."""
    off = "or set --eval.core_every=0"
    if vocab_size < N_VOCAB:
        raise UserError(
            f"eval.core_every={eval_cfg.core_every}: CORE's prompts are GPT-2 tokens and need "
            f"its vocabulary ({N_VOCAB}); model.vocab_size={vocab_size}; raise it to {N_VOCAB} "
            f"{off}"
        )
    bundle = Path(eval_cfg.core_bundle)
    if not (bundle / "core.yaml").is_file():
        raise UserError(
            f"eval.core_bundle={eval_cfg.core_bundle!r} holds no CORE bundle (core.yaml); run "
            f"`python data_prep/core.py` (it writes {core.DEFAULT_CORE_BUNDLE}) {off}"
        )
    tasks = core.load_tasks(bundle)
    core.check_cap(eval_cfg.core_max_per_task, tasks, "--eval.core_max_per_task")
    return tasks


def core_record(
    run: TrainContext, tasks: list[core.Task], cap: int, batch_examples: int
) -> dict[str, float]:
    """CORE of the run's model on each task's first `cap` examples in the seeded order (0 = all;
    collective): the metrics record's `core` (the mean centered accuracy), `core/<label>` (each
    task's centered accuracy), `core_n` (examples scored), `core_full` (1 when every task was
    scored whole: on the full eval bundle, comparable with GPT-2's published CORE) and `core_s`
    (seconds)."""
    t0 = time.perf_counter()
    res = core.evaluate_core(
        run.trainable.raw_model,
        tasks,
        run.info,
        max_per_task=cap,
        autocast_dtype=run.trainable.autocast_dtype,
        batching=Batching(batch_examples=batch_examples),
    )
    per_task = res["tasks"]
    out: dict[str, float] = {"core": res["core"]}
    out.update({f"core/{label}": r["centered"] for label, r in per_task.items()})
    out["core_n"] = sum(r["n"] for r in per_task.values())
    out["core_full"] = int(all(per_task[t.spec.label]["n"] == len(t.rows) for t in tasks))
    out["core_s"] = round(time.perf_counter() - t0, 3)
    return out


def _sample_text(run: TrainContext) -> str:
    """A text sample of the prompt in `log.sample_prompt`, seeded by the step (collective-free)."""
    cfg = run.cfg
    return complete(
        run.trainable.raw_model,
        cfg.log.sample_prompt,
        max_new_tokens=cfg.log.sample_tokens,
        temperature=1.0,
        top_k=50,
        seed=cfg.train.seed + run.state.step,
        autocast_dtype=run.trainable.autocast_dtype,
    )


if __name__ == "__main__":  # python -m gpt2repro.train (the same as train.py)
    raise SystemExit(main())
