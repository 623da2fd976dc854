"""Parameter groups, AdamW, and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gpt2repro.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay >= 2-D parameters (matmul weights, embeddings); never biases or LayerNorm gains.

    Tied weights appear once (named_parameters de-duplicates them).
    """
    decay = [p for _, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW (betas, eps from config); fused kernel on CUDA unless optim.fused says otherwise."""
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused,
    )


def can_skip_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Can a non-finite step be skipped inside the optimizer kernel, with no host sync?

    Fused AdamW takes a device-side `found_inf` flag (as GradScaler uses it), with plain
    parameters (DDP) and with FSDP2's DTensor ones alike (the flag is a plain 0-d tensor; tested
    on 2 FSDP2 ranks in tests/test_dist_perf.py).
    """
    return bool(optimizer.defaults.get("fused"))


def step_skipping_if(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """optimizer.step(), which the fused kernel itself skips when the 0-d bool tensor `bad` is
    True (parameters, moments and the step count stay as they were); no host sync. Only for an
    optimizer where `can_skip_on_device` holds."""
    optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # read by the fused step, as GradScaler sets it
    optimizer.step()


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `max_steps`.

    Linear warmup over `warmup_steps` (step 0 gets lr/warmup, as in llm.c), then:
    cosine or linear decay to `min_lr` at the last step; `wsd` holds `lr` until the final
    `decay_frac` of the run and decays linearly to `min_lr`; `constant` holds `lr`.
    """
    lr, min_lr, warmup = cfg.lr, cfg.min_lr, cfg.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    last = max(max_steps - 1, warmup)
    if cfg.schedule == "wsd":
        decay_start = max(warmup, int(round(max_steps * (1.0 - cfg.decay_frac))))
        if step < decay_start:
            return lr
        frac = (step - decay_start) / max(1, last - decay_start)
        return lr + min(1.0, frac) * (min_lr - lr)
    frac = min(1.0, (step - warmup) / max(1, last - warmup))  # 0 -> 1 over the decay
    if cfg.schedule == "linear":
        return lr + frac * (min_lr - lr)
    # cosine
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)
