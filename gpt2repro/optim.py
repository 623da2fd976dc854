"""Parameter groups, AdamW or Muon + AdamW, and learning-rate schedules as pure functions of the
step.

`optim.name = "muon"`: torch's own `torch.optim.Muon` (Newton-Schulz orthogonalised Nesterov
momentum; Jordan et al. 2024, the NanoGPT speedrun's optimizer since its record 3) takes the
blocks' 2-D matrices, and AdamW the rest: the embeddings (optim.embed_lr), the head
(optim.head_lr; a tied head is wte), and the norms' gains and the biases (optim.lr). Both live in one `MuonWithAdamW`, so the loop, the guard and the checkpoints
see one optimizer with one state dict. Each group's learning rate follows the same schedule, scaled to its own peak (`set_lr`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


# A group's "lr_key": the OptimConfig field holding its peak learning rate (absent = optim.lr).
LR_KEY = "lr_key"


def role_groups(model: nn.Module, cfg: OptimConfig) -> tuple[list[dict], list[dict]]:
    """(Muon's groups, AdamW's groups) by what each parameter is, from its name in the GPT.

    Muon: the 2-D matrices of the blocks (transformer.h.*), decayed; with optim.name=adamw they
    join AdamW's decayed group. AdamW: the embeddings (wte, and GPT-2's learned positions wpe;
    optim.embed_lr) and the head (optim.head_lr), decayed; the 1-D gains and biases (optim.lr),
    never decayed. A tied head is wte (named_parameters lists it once as
    transformer.wte.weight): it is the head, and takes the head's rate, as the speedrun's tied
    records did (an embedding's 0.3 would blow up the logits). Learned positions stay with the
    embeddings: on the CPU demo with rotary off, wpe at the embedding rate beat wpe at optim.lr
    by a wide margin (docs/benchmarks.md). Empty groups are left out."""
    head_weight = getattr(getattr(model, "lm_head", None), "weight", None)
    matrices, embeds, head, flat = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            flat.append(p)
        elif name.startswith("transformer.h."):
            matrices.append(p)
        elif name == "lm_head.weight" or p is head_weight:
            head.append(p)
        else:  # wte (untied), wpe
            embeds.append(p)
    wd = cfg.weight_decay
    muon = [{"params": matrices, "weight_decay": wd, LR_KEY: "muon_lr"}]
    adamw = [
        {"params": embeds, "weight_decay": wd, LR_KEY: "embed_lr"},
        {"params": head, "weight_decay": wd, LR_KEY: "head_lr"},
        {"params": flat, "weight_decay": 0.0, LR_KEY: "lr"},
    ]
    if cfg.name != "muon":
        adamw.insert(0, {"params": matrices, "weight_decay": wd, LR_KEY: "lr"})
        muon = []
    return [g for g in muon if g["params"]], [g for g in adamw if g["params"]]


def peak_lr(group: dict, cfg: OptimConfig) -> float:
    """The peak learning rate of a parameter group: its "lr_key" field of `cfg` (0 = optim.lr)."""
    return float(getattr(cfg, group.get(LR_KEY, "lr"))) or cfg.lr


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW stepped together, seen as one optimizer: its
    param_groups are theirs (Muon's first) and one state dict holds both states (parameters are
    disjoint), so state_dict / load_state_dict and torch.distributed.checkpoint's FQN-keyed
    state dicts work as for one optimizer."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self.muon, self.adamw = muon, adamw
        self._share()

    def _share(self) -> None:
        """Point both optimizers at this one's groups and state (after init or a load)."""
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = (
            self.param_groups[:n],
            self.param_groups[n:],
        )
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and self.param_groups
        self._share()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW (betas, eps from config); fused kernel on CUDA unless optim.fused says otherwise.
    optim.name=muon: `MuonWithAdamW` (Muon's momentum from optim.muon_momentum, Nesterov, torch's
    default Newton-Schulz steps and its "original" shape scaling of the learning rate)."""
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    adamw_args: dict[str, Any] = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, "fused": fused}
    if cfg.name == "adamw" and not (cfg.embed_lr or cfg.head_lr):
        # GPT-2's two groups, exactly as ever (no per-role learning rate asked for).
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, **adamw_args)
    muon_groups, adamw_groups = role_groups(model, cfg)
    for g in muon_groups + adamw_groups:
        g["lr"] = peak_lr(g, cfg)
    adamw = torch.optim.AdamW(adamw_groups, lr=cfg.lr, **adamw_args)
    if not muon_groups:
        return adamw
    muon = torch.optim.Muon(
        muon_groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay
    )
    return MuonWithAdamW(muon, adamw)


def set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """The config's weight decay, AdamW betas and eps, and Muon's momentum on every group. Loading
    an optimizer's state puts back the groups as they were saved, so without this a change that
    a resume allowed (`checkpoint.allow_changes=optim.weight_decay`) would not take effect.
    Weight decay only on the groups of >= 2-D parameters, as both optimizers' groups are made."""
    muon = optimizer.muon.param_groups if isinstance(optimizer, MuonWithAdamW) else []
    for group in optimizer.param_groups:
        decays = any(p.dim() >= 2 for p in group["params"])  # a group may be empty
        group["weight_decay"] = cfg.weight_decay if decays else 0.0
        if any(group is g for g in muon):
            group["momentum"] = cfg.muon_momentum
        else:
            group["betas"], group["eps"] = (cfg.beta1, cfg.beta2), cfg.eps


def set_lr(optimizer: torch.optim.Optimizer, lr: float, cfg: OptimConfig) -> None:
    """Set every group's learning rate for a step whose schedule value is `lr` (`lr_at`, which
    follows optim.lr): optim.lr's groups get `lr` itself, a group with its own peak (Muon's, the
    embeddings', the head's) the same fraction of that peak, lr / optim.lr * peak."""
    for group in optimizer.param_groups:
        key = group.get(LR_KEY, "lr")
        group["lr"] = lr if key == "lr" else lr / cfg.lr * peak_lr(group, cfg)


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
    cosine or linear decay to `min_lr` at the last step; `constant` holds `lr`.
    `wsd` holds `lr`, then over the last d = round(decay_frac x max_steps) steps (at least one,
    none before the warmup ends) takes min_lr + (lr - min_lr) x (max_steps - step) / d: the
    NanoGPT speedrun's warm-down, whose first step is still at lr and whose last is at 1/d of
    the way from min_lr to lr (with min_lr = 0 the last step still moves the weights).
    """
    lr, min_lr, warmup = cfg.lr, cfg.min_lr, cfg.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    last = max(max_steps - 1, warmup)
    if cfg.schedule == "wsd":
        decay_start = max(warmup, max_steps - max(1, round(max_steps * cfg.decay_frac)))
        if step < decay_start:
            return lr
        left = max(0, max_steps - step) / max(1, max_steps - decay_start)
        return min_lr + min(1.0, left) * (lr - min_lr)
    frac = min(1.0, (step - warmup) / max(1, last - warmup))  # 0 -> 1 over the decay
    if cfg.schedule == "linear":
        return lr + frac * (min_lr - lr)
    # cosine
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)
