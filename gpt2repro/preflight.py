"""Checks before the first step that need more than the config: the files named, the tokenizer,
the device's memory. Each problem is one line (a UserError) raised before anything expensive is
built, so a run never fails at its first sample step or while allocating its model.

The config's own rules (ranges, empty run.dir, the config file itself) are in config.py; the
launcher's environment and the wait for peers in dist.py (the only reader of those variables).
`train.train()` calls `check` once, on every rank, before the data is read or the model built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from gpt2repro import plan
from gpt2repro.config import Config
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError
from gpt2repro.lock import check_dir_path
from gpt2repro.metrics import package_version
from gpt2repro.tokenizer import EOT, N_VOCAB, get_encoding

GIB = 2**30


def check(cfg: Config, info: DistInfo, device_bytes: int | None = None) -> list[str]:
    """Every start-up check; rank 0 prints the notes, which are returned too. `device_bytes`:
    the accelerator's memory in bytes (None = read it from CUDA; no check off CUDA)."""
    check_paths(cfg)
    check_sample_prompt(cfg)
    check_tensorboard(cfg)
    if device_bytes is None and info.device.type == "cuda":
        device_bytes = torch.cuda.get_device_properties(info.device).total_memory
    notes = warmup_notes(cfg) + learning_rate_notes(cfg)
    if device_bytes is not None:
        notes += check_memory(cfg, info.world_size, device_bytes, str(info.device))
    if info.is_main:
        for note in notes:
            print(note, flush=True)
    return notes


def check_tensorboard(cfg: Config) -> None:
    """`log.tensorboard` needs the tensorboard package (found without importing it)."""
    if cfg.log.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "log.tensorboard=true needs tensorboard: pip install 'gpt2repro[tensorboard]' "
            "(or set --log.tensorboard=false)"
        )


def _kind(path: Path) -> str:
    """What is at `path`, in words: 'a file', 'a directory', 'a link to X, which does not
    exist', 'nothing'."""
    if path.is_symlink() and not path.exists():
        return f"a link to {path.readlink()}, which does not exist"
    if path.is_dir():
        return "a directory"
    if path.is_file():
        return "a file"
    return "something that is neither a file nor a directory" if path.exists() else "nothing"


def check_paths(cfg: Config) -> None:
    """Each path the config names is the kind of thing it must be, where it exists already (a
    missing one is reported by the check that reads it, with its own remedy)."""
    wanted = [
        ("data.dir", cfg.data.dir, "directory"),
        ("run.dir", cfg.run.dir, "directory"),
    ]
    if cfg.eval.hellaswag_every > 0 and cfg.eval.hellaswag_file:
        wanted.append(("eval.hellaswag_file", cfg.eval.hellaswag_file, "file"))
    for key, raw, kind in wanted:
        path = Path(raw).expanduser()
        if kind == "directory":  # it or a parent a file, a link loop, a dangling link: named
            check_dir_path(path, f"--{key}")
            continue
        found = _kind(path)
        if found in ("nothing", f"a {kind}"):
            continue
        raise UserError(
            f"{key}={raw} is {found}, not a {kind}; set --{key} to a {kind}"
            + (" (it is created if missing)" if key == "run.dir" else "")
        )


def check_sample_prompt(cfg: Config) -> None:
    """The training samples' prompt (`log.sample_prompt`) leaves room in the context for at
    least one new token, and its tokens fit the model's vocabulary. Checked only when samples
    will be drawn (train.RunLog.can_sample's conditions)."""
    log, model = cfg.log, cfg.model
    if log.sample_every <= 0 or model.vocab_size < N_VOCAB:
        return
    if package_version("tiktoken") == "not installed":
        return  # no samples: the run log says so at start
    tokens = get_encoding().encode_ordinary(log.sample_prompt) or [EOT]  # as sample.complete
    if len(tokens) >= model.block_size:
        raise UserError(
            f"log.sample_prompt is {len(tokens)} tokens but model.block_size is "
            f"{model.block_size}, leaving no room to sample; shorten --log.sample_prompt "
            "or set --log.sample_every=0"
        )
    if max(tokens) >= model.vocab_size:
        raise UserError(
            f"log.sample_prompt has token id {max(tokens)} but model.vocab_size is "
            f"{model.vocab_size}; change the prompt or set --log.sample_every=0"
        )


def warmup_notes(cfg: Config) -> list[str]:
    """A warmup longer than the run is allowed (a short test run of a long recipe), but said:
    the learning rate never reaches optim.lr."""
    warmup, steps = cfg.optim.warmup_steps, cfg.train.max_steps
    if warmup <= steps:
        return []
    return [
        f"note: optim.warmup_steps={warmup} is beyond train.max_steps={steps}: the learning "
        f"rate peaks at {steps / warmup:.0%} of optim.lr={cfg.optim.lr:g} (its warmup is cut)"
    ]


def learning_rate_notes(cfg: Config) -> list[str]:
    """Learning-rate settings that do nothing here, said: optim.embed_lr where no parameter takes
    it (with a tied head, wte is the head and trains at optim.head_lr, and with rotary positions
    there is no wpe: the fast config with --model.untied_head=false, an ablation), and a
    warm-down (`wsd`) too short to lower the rate (lr x (max_steps - step) / d is below lr only
    from d = 2 steps on)."""
    o, arch, notes = cfg.optim, cfg.model.resolved_arch, []
    if o.embed_lr and not arch.untied_head and arch.rotary:
        notes.append(
            f"note: optim.embed_lr={o.embed_lr:g} applies to no parameter: the head is tied "
            f"(model.untied_head off), so wte is the head and trains at optim.head_lr="
            f"{o.head_lr or o.lr:g}, and rotary positions have no wpe"
        )
    steps = cfg.train.max_steps
    decay = max(1, round(steps * o.decay_frac))
    if o.schedule == "wsd" and min(decay, steps - o.warmup_steps) < 2:
        notes.append(
            f"note: optim.decay_frac={o.decay_frac:g} of train.max_steps={steps} leaves a "
            "warm-down too short to lower the learning rate (it needs 2 steps or more after the "
            "warmup): raise optim.decay_frac, or say optim.schedule=constant"
        )
    return notes


def check_memory(cfg: Config, world: int, device_bytes: int, device: str) -> list[str]:
    """Refuse a model that cannot possibly fit one GPU of `device_bytes`: its weights,
    gradients and AdamW state (the planner's numbers, plan.memory_per_gpu) plus the CUDA
    context already exceed it, whatever the activations. Returns a note when only the planner's
    whole estimate (an upper bound under torch.compile) exceeds it."""
    setup = plan.setup_for(cfg, world, cfg.dist.strategy)
    mem = plan.memory_per_gpu(setup, plan.model_shape(cfg.model))
    states = mem.weights + mem.gradients + mem.optimizer + mem.fsdp_accum_grads
    floor = states + plan.CUDA_CONTEXT_GIB * GIB
    have = device_bytes / GIB
    if floor > device_bytes:
        if setup.sharded:
            fix = "more GPUs"
        elif "fsdp" in plan.strategies(cfg):
            fix = "--dist.strategy=fsdp over several GPUs"
        else:  # Muon: DDP only
            fix = "GPUs with more memory (optim.name=muon trains under DDP only)"
        raise UserError(
            f"the model's weights, gradients and AdamW state alone need {floor / GIB:.1f} GiB "
            f"per GPU, more than {device}'s {have:.1f} GiB; use {fix} or a smaller model "
            "(python -m gpt2repro.plan shows the memory per GPU)"
        )
    if mem.total > device_bytes:
        half = max(1, cfg.train.micro_batch_size // 2)
        return [
            f"note: python -m gpt2repro.plan estimates {mem.total / GIB:.1f} GiB per GPU (eager; "
            f"torch.compile needs less), more than {device}'s {have:.1f} GiB; if it runs out of "
            f"memory, try --train.micro_batch_size={half} or "
            "--train.activation_checkpointing"
        ]
    return []
