"""Parameter groups and AdamW against a hand-built torch AdamW; LR schedules against their formulas."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import REPO

from gpt2repro.config import ModelConfig, OptimConfig, load_config
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer, lr_at, param_groups

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100)


def _model(cfg: ModelConfig = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def _decay_by_name(name: str) -> bool:
    """The reference rule written from the names, not the shapes: weights of Linear/Embedding."""
    return (
        name.endswith(".weight") and ".ln_" not in name and not name.startswith("transformer.ln_f")
    )


@pytest.mark.parametrize("pad", [1, 64])
def test_param_groups_decay_exactly_the_matrices(pad: int) -> None:
    model = _model(dataclasses.replace(SMALL, pad_vocab_multiple=pad))
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    decay_ids = {id(p) for p in groups[0]["params"]}
    no_decay_ids = {id(p) for p in groups[1]["params"]}
    names = dict(model.named_parameters())  # de-duplicated: lm_head.weight is wte.weight
    assert "lm_head.weight" not in names
    want_decay = {n for n in names if _decay_by_name(n)}
    got_decay = {n for n, p in names.items() if id(p) in decay_ids}
    got_no_decay = {n for n, p in names.items() if id(p) in no_decay_ids}
    assert got_decay == want_decay
    assert got_no_decay == set(names) - want_decay
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= got_decay
    assert "transformer.h.0.attn.c_attn.bias" in got_no_decay
    assert "transformer.h.1.ln_2.weight" in got_no_decay
    assert "transformer.ln_f.weight" in got_no_decay
    # the tied weight is listed once, and the groups partition the parameters
    all_params = groups[0]["params"] + groups[1]["params"]
    assert len(all_params) == len({id(p) for p in all_params}) == len(names)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert id(model.lm_head.weight) in decay_ids
    n_decay = sum(p.numel() for p in groups[0]["params"])
    n_no_decay = sum(p.numel() for p in groups[1]["params"])
    assert n_decay + n_no_decay == model.num_params(exclude_padding=False)
    C, L, V, T = SMALL.n_embd, SMALL.n_layer, model.config.padded_vocab_size, SMALL.block_size
    assert n_decay == V * C + T * C + L * (3 * C * C + C * C + 4 * C * C + 4 * C * C)
    assert n_no_decay == L * (3 * C + C + 4 * C + C + 4 * C) + 2 * C


def test_param_groups_skip_frozen_parameters() -> None:
    model = _model()
    model.transformer.wpe.weight.requires_grad_(False)
    model.transformer.ln_f.bias.requires_grad_(False)
    groups = param_groups(model, 0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(model.transformer.wpe.weight) not in ids
    assert id(model.transformer.ln_f.bias) not in ids


def test_build_optimizer_is_torch_adamw_with_the_recipe() -> None:
    model = _model()
    opt = build_optimizer(model, OptimConfig(), "cpu")
    assert type(opt) is torch.optim.AdamW
    d = opt.defaults
    assert d["betas"] == (0.9, 0.95) and d["eps"] == 1e-8 and d["lr"] == 6e-4
    assert not d["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    forced = build_optimizer(model, OptimConfig(fused=False, beta2=0.99, eps=1e-6), "cuda")
    assert forced.defaults["fused"] is False  # an explicit optim.fused wins over the device
    assert forced.defaults["betas"] == (0.9, 0.99) and forced.defaults["eps"] == 1e-6


def _fake_grads(model: GPT, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def test_steps_equal_a_hand_built_torch_adamw() -> None:
    cfg = OptimConfig(lr=1e-2, weight_decay=0.3)
    ours, ref = _model(seed=1), _model(seed=1)
    opt = build_optimizer(ours, cfg, "cpu")
    named = dict(ref.named_parameters())
    ref_opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named.items() if _decay_by_name(n)], "weight_decay": 0.3},
            {"params": [p for n, p in named.items() if not _decay_by_name(n)], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        foreach=False,
    )
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    for step in range(3):
        for m in (ours, ref):
            _fake_grads(m, seed=step)
        opt.step()
        ref_opt.step()
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), n
        assert not torch.equal(a, before[n]), n  # the step moved every parameter


def test_weight_decay_reaches_only_the_decay_group() -> None:
    """With zero gradients Adam's update is 0, so what is left is exactly p * (1 - lr * wd)."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(lr=0.5, weight_decay=0.1), "cpu")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * (1 - 0.5 * 0.1) if _decay_by_name(n) else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=n)


# --------------------------------------------------------------------------- schedules


def _cfg(**kw: object) -> OptimConfig:
    return OptimConfig(**{"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_warmup_is_linear_from_lr_over_warmup(schedule: str) -> None:
    cfg = _cfg(schedule=schedule)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-3 / 10)
    for s in range(10):
        assert lr_at(s, 100, cfg) == pytest.approx(1e-3 * (s + 1) / 10)
    assert lr_at(9, 100, cfg) == 1e-3
    assert lr_at(10, 100, cfg) == pytest.approx(1e-3)  # the decay starts at lr


def test_cosine_reaches_min_lr_at_the_last_step_and_never_rises() -> None:
    cfg = _cfg()
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[99] == pytest.approx(1e-4, abs=1e-15)
    after = lrs[10:]
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))
    assert all(1e-4 - 1e-15 <= v <= 1e-3 for v in lrs)
    # the formula itself: min + (lr - min) * (1 + cos(pi * t)) / 2, t = (s - warmup) / (last - warmup)
    for s in range(10, 100):
        t = (s - 10) / 89
        assert lrs[s] == pytest.approx(1e-4 + 0.9e-3 * (1 + math.cos(math.pi * t)) / 2)
    # past the end it holds min_lr
    assert lr_at(150, 100, cfg) == pytest.approx(1e-4)


def test_cosine_midpoint_is_the_mean_of_lr_and_min_lr() -> None:
    cfg = _cfg(warmup_steps=2)
    assert lr_at(6, 11, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # decay over steps 2..10


def test_linear_decay() -> None:
    cfg = _cfg(schedule="linear")
    for s in range(10, 101):
        want = 1e-3 + min(1.0, (s - 10) / 89) * (1e-4 - 1e-3)
        assert lr_at(s, 100, cfg) == pytest.approx(want)
    assert lr_at(99, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(55, 100, cfg) == pytest.approx(1e-3 - 0.9e-3 * 45 / 89)


def test_wsd_holds_then_decays_linearly_over_the_last_fraction() -> None:
    """The speedrun's warm-down: lr x (max_steps - step) / d over the last d steps (here with a
    floor), so no step is spent at min_lr."""
    cfg = _cfg(schedule="wsd", decay_frac=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert all(v == 1e-3 for v in lrs[9:81])  # stable phase; the decay's first step is at lr
    for s in range(80, 100):
        assert lrs[s] == pytest.approx(1e-4 + (100 - s) / 20 * (1e-3 - 1e-4))
    assert lrs[99] == pytest.approx(1e-4 + 0.9e-3 / 20)  # the last step still moves
    after = lrs[10:]
    assert all(b < a for a, b in zip(lrs[80:], lrs[81:], strict=False))
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)  # past the end: the floor


def test_wsd_matches_the_speedruns_warmdown() -> None:
    """Record 8's schedule (4,578 steps, 1,308 of warm-down, no floor, no warmup), step by step
    as its train_gpt2.py computes it: lr x (num_iterations - it) / warmdown_iters from
    it = num_iterations - warmdown_iters on. It used to reach 0 at the last step, a step that
    moved nothing."""
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", decay_frac=1308 / 4578)
    for it in (0, 3269, 3270, 3271, 4000, 4576, 4577):
        want = 1.0 if it < 4578 - 1308 else (4578 - it) / 1308
        assert lr_at(it, 4578, cfg) == pytest.approx(want, abs=1e-15), it
    assert lr_at(4577, 4578, cfg) > 0
    # a warm-down of round(decay_frac x steps) <= 1 step never leaves lr (training notes it)
    short = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", decay_frac=0.1)
    assert [lr_at(s, 10, short) for s in range(10)] == [1.0] * 10


def test_constant_after_warmup() -> None:
    cfg = _cfg(schedule="constant")
    assert [lr_at(s, 100, cfg) for s in range(9, 200)] == [1e-3] * 191


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_no_warmup(schedule: str) -> None:
    cfg = _cfg(schedule=schedule, warmup_steps=0)
    assert lr_at(0, 50, cfg) == pytest.approx(1e-3)
    end = {"constant": 1e-3, "wsd": 1e-4 + 0.9e-3 / 10}.get(schedule, 1e-4)  # wsd: 1/d above
    assert lr_at(49, 50, cfg) == pytest.approx(end)
    assert all(math.isfinite(lr_at(s, 50, cfg)) for s in range(60))


def test_gpt2_124m_recipe() -> None:
    cfg, _ = load_config(["--config", str(REPO / "configs" / "gpt2_124m.toml")])
    o, steps = cfg.optim, cfg.train.max_steps
    assert (o.lr, o.min_lr, o.warmup_steps, o.schedule, steps) == (6e-4, 0.0, 700, "cosine", 18865)
    assert lr_at(0, steps, o) == pytest.approx(6e-4 / 700)
    assert lr_at(699, steps, o) == 6e-4
    assert lr_at(700, steps, o) == 6e-4
    assert lr_at(steps - 1, steps, o) == 0.0
    assert lr_at((700 + steps - 1) // 2, steps, o) == pytest.approx(3e-4)  # mid-decay: step 9782
