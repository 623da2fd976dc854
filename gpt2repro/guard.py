"""The update guard: skip an optimizer step whose gradient norm is non-finite or whose loss spikes,
and stop the run by the `[guard]` rules.

Two ways to skip, chosen once per run:
- on the device: the fused AdamW kernel takes a `found_inf` flag and leaves parameters, moments
  and its step count untouched when it is set. No host synchronisation, so the GPU never waits.
  Skips are counted on the device and folded into `Guard.skipped` by `sync()` (at log and
  checkpoint points). With `guard.nonfinite=stop` the flag is read on the host every step (one
  small device-to-host copy per step) so the stop names the step that went non-finite.
  The same under DDP and FSDP2 (fused AdamW honours `found_inf` with DTensor parameters).
- on the host: everywhere else (the plain AdamW, the default on CPU, or when the spike guard is
  on, which needs the global loss each step anyway): read the flag, then step or skip.

`guard.max_skipped` is checked on the host path at every skip; on the device path the step at
which the count reached the limit is recorded on the device, and `sync()` names that step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from gpt2repro import dist
from gpt2repro.config import GuardConfig
from gpt2repro.errors import UserError
from gpt2repro.optim import can_skip_on_device, step_skipping_if


def is_spike(loss: float, history: Sequence[float], zscore: float) -> bool:
    """`loss` is more than `zscore` standard deviations above the mean of `history` (10+ values)."""
    if not math.isfinite(loss):
        return True
    if len(history) < 10:
        return False
    mean = sum(history) / len(history)
    var = sum((h - mean) ** 2 for h in history) / len(history)
    return loss > mean + zscore * math.sqrt(var)


def nonfinite_stop_error(step: int) -> UserError:
    return UserError(
        f"step {step}: non-finite loss or gradient norm and guard.nonfinite=stop; lower optim.lr, "
        "check the data, or set --guard.nonfinite=skip"
    )


def max_skipped_error(step: int, skipped: int, max_skipped: int) -> UserError:
    return UserError(
        f"step {step}: {skipped} updates skipped (guard.max_skipped={max_skipped}); the run "
        "is diverging: lower optim.lr or resume from an earlier checkpoint"
    )


class Guard:
    """Steps the optimizer unless the update is bad, and owns what that needs to count: updates
    skipped in the run and the spike guard's recent global losses (at most `guard.spike_window`).
    Both travel in every checkpoint through `state_dict()`."""

    def __init__(self, cfg: GuardConfig, optimizer: torch.optim.Optimizer, info: dist.DistInfo):
        self.cfg = cfg
        self.optimizer = optimizer
        self.is_main = info.is_main
        self.skipped = 0  # exact on the host path; call sync() first on the device path
        self.loss_history: deque[float] = deque(maxlen=max(1, cfg.spike_window))
        # The spike guard needs the loss on the host each step, so it always takes the host path.
        self.on_device = can_skip_on_device(optimizer) and cfg.spike_zscore <= 0
        self._pending = torch.zeros((), dtype=torch.int64, device=info.device)  # device skips
        self._limit_step = torch.full((), -1, dtype=torch.int64, device=info.device)

    def state_dict(self) -> dict[str, Any]:
        """The exact counters (folds pending device-side skips in first)."""
        self.sync()
        return {"skipped": self.skipped, "loss_history": list(self.loss_history)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """From a checkpoint's state (older ones lack `skipped` and `loss_history`)."""
        self.skipped = int(saved.get("skipped", 0))
        self.loss_history.clear()
        self.loss_history.extend(saved.get("loss_history", []))  # keeps the newest window

    def step(self, *, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        """Apply or skip update number `step` (1-based). `loss` is this rank's mean loss and
        `grad_norm` the global norm (so every rank decides the same); both are device tensors."""
        bad = ~torch.isfinite(grad_norm)
        if self.on_device:
            step_skipping_if(self.optimizer, bad)
            if self.cfg.nonfinite == "stop":
                if bool(bad.item()):
                    raise nonfinite_stop_error(step)
                return
            self._pending += bad.to(torch.int64)
            # This skip (bad) is the one that brings the count to the limit.
            reached = bad & (self._pending + self.skipped >= self.cfg.max_skipped)
            reached = reached & (self._limit_step < 0)
            self._limit_step = torch.where(reached, step, self._limit_step)
            return
        nonfinite = bool(bad.item())
        spike = False
        if self.cfg.spike_zscore > 0 and not nonfinite:
            # The global loss on the host: one sync per step while this guard is on.
            global_loss = dist.all_reduce_mean(loss.detach().clone()).item()
            spike = is_spike(global_loss, self.loss_history, self.cfg.spike_zscore)
            self.loss_history.append(global_loss)  # spikes too, so a lasting shift is learned
        if not (nonfinite or spike):
            self.optimizer.step()
            return
        self.skipped += 1
        if self.is_main:
            what = "loss spike" if spike else "non-finite loss/grad norm"
            print(f"step {step}: {what}; update skipped", flush=True)
        if nonfinite and self.cfg.nonfinite == "stop":
            raise nonfinite_stop_error(step)
        if self.skipped >= self.cfg.max_skipped:
            raise max_skipped_error(step, self.skipped, self.cfg.max_skipped)

    def sync(self) -> None:
        """Fold device-side skips into `skipped` (a host sync) and apply `max_skipped`."""
        if not self.on_device:
            return
        new = int(self._pending.item())
        if not new:
            return
        self.skipped += new
        self._pending.zero_()
        if self.skipped >= self.cfg.max_skipped:
            at = int(self._limit_step.item())
            raise max_skipped_error(at, self.skipped, self.cfg.max_skipped)
