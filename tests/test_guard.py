"""The update guard and the training counters, in process (no training subprocess).

Both of the guard's paths run on CPU: the host path with the plain AdamW, the device path with
fused AdamW (torch has a CPU fused kernel that honours `found_inf` like the CUDA one).
"""

from __future__ import annotations

import math

import pytest
import torch

from gpt2repro import dist
from gpt2repro.config import GuardConfig, OptimConfig
from gpt2repro.errors import UserError
from gpt2repro.guard import Guard, is_spike
from gpt2repro.optim import build_optimizer, can_skip_on_device
from gpt2repro.train import TrainState

INFO = dist.DistInfo()  # one process on CPU


def make(guard_cfg: GuardConfig, fused: bool) -> tuple[torch.nn.Linear, Guard]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(model, OptimConfig(lr=0.1, fused=fused), "cpu")
    return model, Guard(guard_cfg, opt, INFO)


def one_update(model: torch.nn.Linear, guard: Guard, state: TrainState, bad: bool) -> None:
    """A backward pass, then the guard with a finite or NaN norm as told."""
    guard.optimizer.zero_grad(set_to_none=True)
    loss = model(torch.ones(2, 4)).square().mean()
    loss.backward()
    norm = torch.tensor(math.nan if bad else 1.0)
    guard.step(loss=loss.detach(), grad_norm=norm, step=state.step + 1)
    state.step += 1


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [False, True])
def test_a_nonfinite_update_is_skipped_and_counted(fused: bool) -> None:
    model, guard = make(GuardConfig(), fused)
    assert guard.on_device == fused
    state = TrainState()
    one_update(model, guard, state, bad=False)
    before = params(model)
    one_update(model, guard, state, bad=True)
    after = params(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    guard.sync()
    assert guard.skipped == 1
    one_update(model, guard, state, bad=False)
    assert not all(torch.equal(a, b) for a, b in zip(after, params(model), strict=True))
    guard.sync()
    assert guard.skipped == 1  # a sync does not count twice


@pytest.mark.parametrize("fused", [False, True])
def test_device_and_host_paths_give_the_same_parameters(fused: bool) -> None:
    """Skipping on the device leaves exactly what skipping on the host leaves."""
    results = []
    for on_device in (False, True):
        model, guard = make(GuardConfig(), fused=on_device)
        state = TrainState()
        for bad in (False, True, False, False, True, False):
            one_update(model, guard, state, bad)
        guard.sync()
        assert guard.skipped == 2
        results.append(params(model))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_stop_names_the_step_that_went_bad(fused: bool) -> None:
    """With guard.nonfinite=stop the error names that very step, on the device path too
    (it reads the flag every step), not a later log point."""
    model, guard = make(GuardConfig(nonfinite="stop"), fused)
    state = TrainState()
    for _ in range(4):
        one_update(model, guard, state, bad=False)
    with pytest.raises(UserError, match=r"^step 5: non-finite loss or gradient norm"):
        one_update(model, guard, state, bad=True)


@pytest.mark.parametrize("fused", [False, True])
def test_max_skipped_names_the_step_that_reached_the_limit(fused: bool) -> None:
    """On the device path the count is read only at sync points (log, checkpoint); the error
    still names the step at which the limit was reached."""
    model, guard = make(GuardConfig(max_skipped=2), fused)
    state = TrainState()
    pattern = (False, True, False, True, False, False)  # the 2nd skip is update 4
    with pytest.raises(UserError, match=r"^step 4: 2 updates skipped \(guard.max_skipped=2\)"):
        for bad in pattern:
            one_update(model, guard, state, bad)
        guard.sync()
    assert guard.skipped == 2
    assert state.step == (6 if fused else 3)  # the host path raises within update 4


def test_a_resumed_skip_count_counts_toward_the_limit() -> None:
    model, guard = make(GuardConfig(max_skipped=3), fused=True)
    state = TrainState(step=10)
    guard.load_state_dict({"skipped": 2})
    one_update(model, guard, state, bad=False)
    one_update(model, guard, state, bad=True)  # update 12: the 3rd skip of the run
    with pytest.raises(UserError, match=r"^step 12: 3 updates skipped"):
        guard.sync()


def test_spike_guard_skips_a_spike_and_learns_a_lasting_shift() -> None:
    model, guard = make(GuardConfig(spike_zscore=3.0, spike_window=20), fused=True)
    assert not guard.on_device  # the spike guard needs the loss on the host
    state = TrainState()
    losses = [5.0 + 0.01 * (i % 3) for i in range(15)]
    for value in losses:
        before = params(model)
        guard.optimizer.zero_grad(set_to_none=True)
        model(torch.ones(1, 4)).sum().backward()
        guard.step(loss=torch.tensor(value), grad_norm=torch.tensor(1.0), step=state.step + 1)
        state.step += 1
        assert not all(torch.equal(a, b) for a, b in zip(before, params(model), strict=True))
    before = params(model)
    guard.step(loss=torch.tensor(50.0), grad_norm=torch.tensor(1.0), step=16)
    assert guard.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, params(model), strict=True))
    assert list(guard.loss_history)[-1] == 50.0  # kept, so a lasting shift is learned
    assert len(guard.loss_history) == 16


def test_is_spike_needs_ten_values_and_flags_nonfinite() -> None:
    assert not is_spike(100.0, [1.0] * 9, 3.0)
    assert is_spike(math.inf, [], 3.0) and is_spike(math.nan, [], 3.0)
    history = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.1, 0.9, 1.0]
    assert is_spike(2.0, history, 3.0) and not is_spike(1.1, history, 3.0)


def test_device_path_is_chosen_only_where_the_kernel_can_skip() -> None:
    model = torch.nn.Linear(2, 2)
    fused = build_optimizer(model, OptimConfig(fused=True), "cpu")
    plain = build_optimizer(model, OptimConfig(fused=False), "cpu")
    assert can_skip_on_device(fused)  # DDP and FSDP2 (tests/test_dist_perf.py runs FSDP2's)
    assert not can_skip_on_device(plain)


def test_counters_round_trip_and_read_old_checkpoints() -> None:
    """The loop's counters (TrainState) and the guard's (skips, loss window) each round-trip
    through their own state_dict; together they are a checkpoint's state.json counters."""
    state = TrainState()
    state.step, state.tokens = 7, 7 * 4096
    _, guard = make(GuardConfig(spike_window=3), fused=False)
    guard.skipped = 2
    guard.loss_history.extend([4.0, 3.5, 3.25, 3.0])  # the window keeps the newest 3
    saved = {**state.state_dict(), **guard.state_dict()}
    assert saved == {"step": 7, "tokens": 28672, "skipped": 2, "loss_history": [3.5, 3.25, 3.0]}
    again = TrainState()
    again.load_state_dict(saved)
    _, again_guard = make(GuardConfig(spike_window=2), fused=False)
    again_guard.load_state_dict(saved)
    assert (again.step, again.tokens, again_guard.skipped) == (7, 28672, 2)
    assert list(again_guard.loss_history) == [3.25, 3.0]  # a smaller window keeps the newest
    old = TrainState()
    old.load_state_dict({"step": 3, "tokens": 12})  # written before skip counts existed
    _, old_guard = make(GuardConfig(), fused=False)
    old_guard.load_state_dict({"step": 3, "tokens": 12})
    assert (old.step, old.tokens, old_guard.skipped, list(old_guard.loss_history)) == (3, 12, 0, [])


def test_a_lowered_limit_after_resume_names_the_skip_that_reached_it() -> None:
    """Resumed with skipped >= max_skipped (the limit lowered): the error names the next skip,
    not the first step after the resume."""
    model, guard = make(GuardConfig(max_skipped=2), fused=True)
    state = TrainState(step=20)
    guard.load_state_dict({"skipped": 3})
    one_update(model, guard, state, bad=False)  # update 21: fine
    one_update(model, guard, state, bad=True)  # update 22: a skip, over the limit
    with pytest.raises(UserError, match=r"^step 22: 4 updates skipped"):
        guard.sync()
