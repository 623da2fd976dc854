"""Training: setup -> loop -> teardown, one code path for CPU, one GPU, DDP/FSDP and multi-node.

    python train.py --config configs/shakespeare.toml
    torchrun --standalone --nproc_per_node=8 train.py --config configs/gpt2_124m.toml

Step semantics: `step` counts completed optimizer steps. Evaluation, checkpoints and logs at
"step s" happen after the s-th update (and evaluation also at step 0 of a fresh run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt2repro import checkpoint, dist
from gpt2repro.config import Config, TrainConfig, help_text, load_config, to_dict
from gpt2repro.errors import UserError, run_cli
from gpt2repro.metrics import (
    MetricsLog,
    WandbLogger,
    console_line,
    flops_per_token,
    mfu,
    peak_flops,
    run_header,
)
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer, lr_at, skips_on_device, step_unless_on_device

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped early on a signal; rerun to resume


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python train.py` / `torchrun ... train.py`; returns the exit status."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(help_text("train.py"))
        return 0
    cfg, rest = load_config(argv)
    if rest:
        raise UserError(
            f"unknown argument {rest[0]!r}: options look like --section.key=value (see --help)"
        )
    info = dist.setup(cfg.train.device, cfg.dist.backend)
    ok = False
    try:
        status = train(cfg, info)
        ok = True
        return status
    finally:
        dist.teardown(clean=ok)


# --------------------------------------------------------------------------- helpers


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


class _Fault:
    """Test hook for the fault-injection tests, from GPT2REPRO_FAULT="KIND:STEP[:rank=R]".

    sigkill / sigterm: signal this process after step STEP completed (after any checkpoint);
    nan: make the loss of step STEP non-finite; spike: multiply it by 50 (exercise the guards).
    Unset: does nothing.
    """

    def __init__(self, spec: str | None, rank: int) -> None:
        self.kind, self.step = "", -1
        if not spec:
            return
        parts = spec.split(":")
        if parts[0] not in ("sigkill", "sigterm", "nan", "spike") or len(parts) < 2:
            raise UserError(
                f"GPT2REPRO_FAULT={spec!r}: expected sigkill:N, sigterm:N, nan:N or spike:N[:rank=R]"
            )
        only_rank = int(parts[2].split("=")[1]) if len(parts) > 2 else None
        if only_rank is None or only_rank == rank:
            self.kind, self.step = parts[0], int(parts[1])

    def poison(self, step: int) -> float | None:
        if step != self.step:
            return None
        return {"nan": float("nan"), "spike": 50.0}.get(self.kind)

    def after_step(self, step: int) -> None:
        if step == self.step and self.kind in ("sigkill", "sigterm"):
            os.kill(os.getpid(), signal.SIGKILL if self.kind == "sigkill" else signal.SIGTERM)


def _on_main(info: dist.DistInfo, check: Any) -> None:
    """Run a check on rank 0 and raise its UserError on every rank (no rank is left waiting)."""
    message = None
    if info.is_main:
        try:
            check()
        except UserError as e:
            message = str(e)
    message = dist.broadcast_object(message)
    if message is not None:
        raise UserError(message)


def _tune_cpu_allocator() -> None:
    """Keep big freed buffers in the heap instead of returning them to the OS (glibc).

    On CPU each step allocates and frees the [B*T, vocab] logits; by default glibc maps and unmaps
    them every time and the page faults cost more than the math (measured 1.6x slower on the
    demo, docs/benchmarks.md). Raising the mmap threshold avoids that. No-op off glibc.
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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"run directory {run_dir} is not writable ({e.strerror}); set --run.dir to a writable path"
        ) from None


def _check_model_matches(ckpt: Path, state: dict[str, Any], cfg: Config) -> None:
    saved = state["config"]["model"]
    now = to_dict(cfg)["model"]
    diff = [f"{k}={saved.get(k)} (config: {now[k]})" for k in now if saved.get(k) != now[k]]
    if diff:
        raise UserError(
            f"checkpoint {ckpt} is for another model shape: {', '.join(diff)}; use the same "
            "[model] config, a new --run.dir, or --checkpoint.resume=never"
        )


def _resume_point(cfg: Config, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, verified, or None for a fresh start.

    Never over existing checkpoints: resuming from an older checkpoint of this run moves the
    newer ones aside (`ckpt/.abandoned-...`) so discovery and pruning ignore them.
    """
    mode = cfg.checkpoint.resume
    if mode == "auto":
        return checkpoint.find_latest(run_dir)  # verified
    existing = sorted((run_dir / "ckpt").glob("step_*"))
    if mode == "never":
        if existing:
            raise UserError(
                f"checkpoint.resume=never but {run_dir} already holds checkpoints "
                f"({existing[-1].name}); use a new --run.dir (nothing is overwritten) or resume=auto"
            )
        return None
    ckpt = checkpoint.resolve(mode)
    if existing and run_dir.resolve() not in ckpt.resolve().parents:
        raise UserError(
            f"checkpoint.resume={mode} starts from another run but {run_dir} already holds "
            "checkpoints; use a new --run.dir so they are not overwritten"
        )
    state = checkpoint.read_state(ckpt)
    checkpoint.verify(ckpt, state)
    for src, dest in checkpoint.abandon_after(run_dir, state["step"]):
        print(f"note: moved {src.name} aside to {dest.name}: this run continues from {ckpt.name}")
    return ckpt


def _grad_sync(
    model: torch.nn.Module,
    raw_model: torch.nn.Module,
    strategy: str,
    info: dist.DistInfo,
    sync: bool,
) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-step (DDP no_sync / FSDP2 flag)."""
    if not info.distributed:
        return contextlib.nullcontext()
    if strategy == "fsdp":
        raw_model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        return contextlib.nullcontext()
    ddp = getattr(model, "_orig_mod", model)  # compile(DDP(m)): no_sync lives on the DDP module
    return contextlib.nullcontext() if sync else ddp.no_sync()  # type: ignore[operator]


def _full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2; make it a plain (replicated) tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# --------------------------------------------------------------------------- the step


def forward_backward(
    model: torch.nn.Module,
    raw_model: torch.nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    grad_accum: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    strategy: str,
    info: dist.DistInfo,
    grad_clip: float,
    poison: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of one optimizer step: `grad_accum` micro-batches, then norm clipping.

    Returns (loss, grad norm) as device tensors: this rank's mean loss over its micro-batches and
    the global gradient norm before clipping. No host synchronisation. The caller zeroes the
    gradients before and steps the optimizer after (train loop and `gpt2repro.bench train`).
    `poison` (fault-injection tests only) multiplies the loss.
    """
    loss_accum = torch.zeros((), device=info.device)
    for micro in range(grad_accum):
        x, y = next_batch()  # [B, T] each
        with _grad_sync(model, raw_model, strategy, info, micro == grad_accum - 1):
            with autocast():
                _, loss = model(x, y)
            loss = loss / grad_accum  # mean over the whole global batch after DDP's average
            if poison is not None:
                loss = loss * poison
            loss_accum += loss.detach()
            loss.backward()
    clip = grad_clip if grad_clip > 0 else math.inf
    norm = _full_norm(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip))
    return loss_accum, norm


def speed_settings(t: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, compile?) for this device; switches on TF32 on CUDA.

    auto: bf16 autocast and torch.compile on CUDA; float32 and eager elsewhere.
    """
    use_cuda = device.type == "cuda"
    autocast_dtype = None
    if t.dtype == "bfloat16" or (t.dtype == "auto" and use_cuda):
        autocast_dtype = torch.bfloat16
    if use_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that remain
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        _tune_cpu_allocator()
    use_compile = t.compile if t.compile is not None else use_cuda
    return autocast_dtype, use_compile


def autocast_factory(
    device: torch.device, dtype: torch.dtype | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context (a no-op when dtype is None)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- the run


def train(cfg: Config, info: dist.DistInfo) -> int:
    """Train per `cfg` on this process's share of the work; returns the exit status."""
    from gpt2repro import data, evaluate  # the data and evaluation modules

    t, m, o, e, ck, lg = cfg.train, cfg.model, cfg.optim, cfg.eval, cfg.checkpoint, cfg.log
    run_dir = Path(cfg.run.dir)
    device = info.device

    # ---- checks before anything expensive (STYLE principle 9)
    tokens_per_micro = t.micro_batch_size * t.seq_len * info.world_size
    if t.total_batch_tokens % tokens_per_micro != 0:
        raise UserError(
            f"train.total_batch_tokens={t.total_batch_tokens} is not a multiple of micro_batch_size x "
            f"seq_len x world_size = {t.micro_batch_size} x {t.seq_len} x {info.world_size} = "
            f"{tokens_per_micro}; change train.total_batch_tokens or train.micro_batch_size"
        )
    grad_accum = t.total_batch_tokens // tokens_per_micro
    data.shard_paths(cfg.data.dir, "train")
    val_tokens = None
    if e.every > 0:
        val_tokens = data.load_tokens(cfg.data.dir, "val", e.val_tokens + 1)
    hellaswag = None
    if e.hellaswag_every > 0:
        if not e.hellaswag_file or not Path(e.hellaswag_file).is_file():
            raise UserError(
                f"eval.hellaswag_file={e.hellaswag_file!r} does not exist; run "
                "`python data_prep/hellaswag.py` or set --eval.hellaswag_every=0"
            )
        hellaswag = evaluate.load_hellaswag(e.hellaswag_file, limit=e.hellaswag_limit)
    _on_main(info, lambda: _check_run_dir(run_dir))
    dist.barrier()
    done_marker = run_dir / "DONE"
    # Rank 0 picks and verifies the checkpoint (sha256 once, not per rank) and tells the others,
    # so every rank resumes from the same one even if their views of the filesystem lag.
    found: list[Path | None] = [None]
    _on_main(info, lambda: found.__setitem__(0, _resume_point(cfg, run_dir)))
    ckpt = dist.broadcast_object(found[0])
    state: dict[str, Any] | None = None
    if ckpt is not None:
        state = checkpoint.read_state(ckpt)
        _check_model_matches(ckpt, state, cfg)
        if state["step"] >= t.max_steps and done_marker.exists():
            if info.is_main:
                print(f"run already complete ({state['step']} steps, {done_marker}); nothing to do")
            return 0

    # ---- precision and speed switches
    use_cuda = device.type == "cuda"
    autocast_dtype, use_compile = speed_settings(t, device)
    autocast = autocast_factory(device, autocast_dtype)

    # ---- model, optimizer, data
    torch.manual_seed(t.seed)
    raw_model = GPT(m).to(device)
    n_params = raw_model.num_params(exclude_padding=False)
    raw_model.activation_checkpointing = t.activation_checkpointing
    dist.shard(raw_model, info, cfg.dist.strategy)  # FSDP2 in place, before the optimizer
    optimizer = build_optimizer(raw_model, o, device.type)
    # A NaN/Inf grad norm skips the update without a host sync when the fused kernel can take
    # a device-side flag; elsewhere (CPU, FSDP) the check syncs, which costs nothing on CPU.
    async_guard = (
        skips_on_device(optimizer, cfg.dist.strategy)
        and cfg.guard.spike_zscore <= 0  # the spike guard reads the loss each step anyway
    )
    train_loader = data.TokenLoader(
        cfg.data.dir,
        "train",
        t.micro_batch_size,
        t.seq_len,
        info.rank,
        info.world_size,
        t.seed,
        device,
    )
    step, tokens_seen, skipped = 0, 0, 0
    loss_history: deque[float] = deque(maxlen=max(1, cfg.guard.spike_window))
    if ckpt is not None and state is not None:
        checkpoint.load_into(raw_model, optimizer, ckpt)
        step, tokens_seen, skipped = state["step"], state["tokens"], state.get("skipped", 0)
        loss_history.extend(state.get("loss_history", []))
        ranks = state["ranks"]
        if len(ranks) == info.world_size:
            train_loader.load_state_dict(ranks[info.rank]["loader"])
            checkpoint.set_rng_state(ranks[info.rank]["rng"])
        else:
            # Model and optimizer state are full (unsharded) and the loader position counts
            # windows, so the run continues on the same data; per-rank RNG streams cannot map.
            train_loader.load_state_dict(ranks[0]["loader"])
            if info.is_main:
                print(
                    f"note: checkpoint written by {len(ranks)} processes, resuming with "
                    f"{info.world_size}: same data order and optimizer state, but per-rank RNG "
                    "streams restart, so the losses match only to rounding",
                    flush=True,
                )
    model = dist.wrap(raw_model, info, cfg.dist.strategy, use_compile)

    # ---- reporting
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=info.is_main)
    name = cfg.run.name or run_dir.name
    wandb = WandbLogger(
        lg.wandb_mode,
        lg.wandb_project,
        lg.wandb_run_name or name,
        run_dir,
        to_dict(cfg),
        info.is_main,
    )
    fpt = flops_per_token(n_params, m.n_layer, m.n_embd, t.seq_len)
    peak = peak_flops(device)
    header = run_header(cfg, info, sys.argv, grad_accum, n_params)
    if info.is_main:
        print(header["text"], flush=True)
        metrics.write(
            {
                "event": "start" if ckpt is None else "resume",
                "step": step,
                "tokens": tokens_seen,
                **header["record"],
            }
        )
        if ckpt is not None:
            print(f"resumed from {ckpt} at step {step} ({tokens_seen:,} tokens)", flush=True)
        done_marker.unlink(missing_ok=True)
    can_sample = lg.sample_every > 0 and m.vocab_size >= 50257
    if lg.sample_every > 0 and not can_sample and info.is_main:
        print(
            f"note: no text samples: model.vocab_size={m.vocab_size} is smaller than GPT-2's tokenizer"
        )
    preempt = _Preemption()
    preempt.install()
    fault = _Fault(os.environ.get("GPT2REPRO_FAULT"), info.rank)

    def evaluate_now(at_step: int, do_val: bool, do_hs: bool) -> None:
        rec: dict[str, Any] = {"step": at_step, "tokens": tokens_seen}
        if do_val and val_tokens is not None:
            rec["val_loss"] = evaluate.validation_loss(
                raw_model,
                val_tokens,
                t.seq_len,
                t.micro_batch_size,
                device,
                autocast_dtype,
                info.rank,
                info.world_size,
            )
        if do_hs and hellaswag is not None:
            res = evaluate.score_hellaswag(
                raw_model,
                hellaswag,
                device,
                autocast_dtype,
                info.rank,
                info.world_size,
                e.batch_examples,
            )
            rec.update(
                hellaswag_acc=res["acc"],
                hellaswag_acc_norm=res["acc_norm"],
                hellaswag_acc_norm_char=res["acc_norm_char"],
            )
        if len(rec) > 2 and info.is_main:
            shown = " | ".join(
                f"{k} {v:.4f}" for k, v in rec.items() if k not in ("step", "tokens")
            )
            print(f"eval step {at_step:>6} | {shown}", flush=True)
            metrics.write(rec)
            wandb.log(rec)

    def sample_now(at_step: int) -> None:
        from gpt2repro.tokenizer import get_encoding

        enc = get_encoding()
        prompt = torch.tensor([enc.encode_ordinary(lg.sample_prompt)], device=device)
        gen = torch.Generator(device=device).manual_seed(t.seed + at_step)
        n = min(lg.sample_tokens, m.block_size - prompt.size(1))
        with autocast():
            out = raw_model.generate(prompt, n, temperature=1.0, top_k=50, generator=gen)
        text = enc.decode(out[0].tolist())
        if info.is_main:
            print(f"sample step {at_step}: {text!r}", flush=True)
            metrics.write({"step": at_step, "tokens": tokens_seen, "sample": text})
            wandb.log_sample(at_step, text)

    def sync_skipped() -> int:
        """Fold the device-side skip count (async guard) into `skipped`; check the guard."""
        nonlocal skipped
        new = int(skipped_dev.item())
        if new:
            skipped += new
            skipped_dev.zero_()
            _check_guard(cfg, skipped, step, nonfinite=True)
        return skipped

    def save_now(at_step: int) -> Path:
        if async_guard:
            sync_skipped()  # the checkpoint must carry the exact count
        ckpt_state = {
            "tokens": tokens_seen,
            "skipped": skipped,
            "loss_history": list(loss_history),
            "config": to_dict(cfg),
            "git_sha": header["record"]["git_sha"],
        }
        path = checkpoint.save(
            run_dir,
            at_step,
            raw_model,
            optimizer,
            ckpt_state,
            train_loader.state_dict(),
            ck.keep_last,
            info.is_main,
        )
        if info.is_main:
            print(f"checkpoint: {path}", flush=True)
        return path

    # ---- the loop
    if step == 0 and (val_tokens is not None or hellaswag is not None):
        evaluate_now(0, True, True)
    t_last, step_last = time.perf_counter(), step
    skipped_dev = torch.zeros((), device=device)  # async-guard skips, read at log points
    last_saved = step if ckpt is not None else -1
    first_step = step
    while step < t.max_steps:
        lr = lr_at(step, t.max_steps, o)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss_accum, norm = forward_backward(
            model,
            raw_model,
            train_loader.next_batch,
            grad_accum,
            autocast,
            cfg.dist.strategy,
            info,
            o.grad_clip,
            poison=fault.poison(step + 1),
        )
        bad = ~torch.isfinite(norm)  # the norm is global: every rank decides the same
        if async_guard:
            step_unless_on_device(optimizer, bad)
            skipped_dev += bad.float()
        else:
            spike = False
            nonfinite = bool(bad.item())
            if cfg.guard.spike_zscore > 0 and not nonfinite:
                # Needs the global loss on the host: one sync per step when this guard is on.
                global_loss = dist.all_reduce_mean(loss_accum.clone()).item()
                spike = _is_spike(global_loss, loss_history, cfg.guard.spike_zscore)
                loss_history.append(global_loss)  # spikes too, so a lasting shift is learned
            if nonfinite or spike:
                skipped += 1
                if info.is_main:
                    what = "loss spike" if spike else "non-finite loss/grad norm"
                    print(f"step {step + 1}: {what}; update skipped", flush=True)
                _check_guard(cfg, skipped, step + 1, nonfinite)
            else:
                optimizer.step()
        step += 1
        tokens_seen += t.total_batch_tokens
        if step == first_step + 1 and lg.every > 1:
            # Leave the first step (compilation, cache warm-up) out of the step-time average.
            if use_cuda:
                torch.cuda.synchronize()
            t_last, step_last = time.perf_counter(), step

        stop = dist.any_rank(preempt.signal is not None)
        last = step == t.max_steps
        if step % lg.every == 0 or last or stop:
            loss_val = dist.all_reduce_mean(loss_accum.clone()).item()
            if async_guard:
                skipped = sync_skipped()
            if use_cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            dt = (now - t_last) / max(1, step - step_last)
            tok_s = t.total_batch_tokens / dt
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if use_cuda else None
            rec = {
                "step": step,
                "loss": loss_val,
                "lr": lr,
                "grad_norm": float(norm.item()),
                "tokens": tokens_seen,
                "tok_per_s": tok_s,
                "mfu": mfu(fpt, tok_s, peak, info.world_size),
                "step_ms": 1000 * dt,
                "skipped": skipped,
                "mem_gib": mem,
            }
            if info.is_main:
                print(console_line(rec, t.max_steps, dt * (t.max_steps - step), mem), flush=True)
                metrics.write(rec)
                wandb.log(rec)
            t_last, step_last = time.perf_counter(), step
        timed_out = False
        if (ck.every > 0 and step % ck.every == 0) or last or stop:
            save_now(step)  # first: a preempted run has seconds before SIGKILL
            last_saved = step
            timed_out = True
        do_val = val_tokens is not None and (step % e.every == 0 or last) and not stop
        do_hs = hellaswag is not None and (step % e.hellaswag_every == 0 or last) and not stop
        if do_val or do_hs:
            evaluate_now(step, do_val, do_hs)
            timed_out = True
        if can_sample and (step % lg.sample_every == 0 or last) and not stop:
            sample_now(step)
            timed_out = True
        if timed_out:
            t_last, step_last = time.perf_counter(), step
        fault.after_step(step)
        if stop:
            if info.is_main:
                name_ = signal.Signals(preempt.signal).name if preempt.signal else "signal"
                print(
                    f"preempted by {name_} at step {step}: checkpoint saved to "
                    f"{run_dir / 'ckpt' / checkpoint.step_dir_name(step)}; rerun the same command to resume",
                    flush=True,
                )
                metrics.write({"event": "preempted", "step": step, "tokens": tokens_seen})
                metrics.close()
            wandb.finish()
            return EXIT_PREEMPTED

    # ---- teardown
    if last_saved != step:
        save_now(step)
    if info.is_main:
        done_marker.write_text(json.dumps({"step": step, "tokens": tokens_seen}) + "\n")
        metrics.write({"event": "done", "step": step, "tokens": tokens_seen})
        metrics.close()
        print(f"done: {step} steps, {tokens_seen:,} tokens; run directory {run_dir}", flush=True)
    wandb.finish()
    return 0


def _is_spike(loss: float, history: deque[float], z: float) -> bool:
    """loss is more than z standard deviations above the running mean (needs 10+ samples)."""
    if not math.isfinite(loss):
        return True
    if len(history) < 10:
        return False
    mean = sum(history) / len(history)
    var = sum((h - mean) ** 2 for h in history) / len(history)
    return loss > mean + z * math.sqrt(var)


def _check_guard(cfg: Config, skipped: int, step: int, nonfinite: bool) -> None:
    if nonfinite and cfg.guard.nonfinite == "stop":
        raise UserError(
            f"step {step}: non-finite loss or gradient norm and guard.nonfinite=stop; lower optim.lr, "
            "check the data, or set --guard.nonfinite=skip"
        )
    if skipped >= cfg.guard.max_skipped:
        raise UserError(
            f"step {step}: {skipped} updates skipped (guard.max_skipped={cfg.guard.max_skipped}); the run "
            "is diverging: lower optim.lr or resume from an earlier checkpoint"
        )
