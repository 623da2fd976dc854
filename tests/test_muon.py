"""optim.name = "muon": torch.optim.Muon on the blocks' 2-D matrices, AdamW on the rest, each
group at its own peak learning rate on one schedule; one optimizer whose state dict round-trips
exactly. The training-level checks (2 processes = 1, resume bit-exact) are in test_train.py."""

from __future__ import annotations

import copy

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from gpt2repro.config import ModelConfig, OptimConfig
from gpt2repro.model import GPT
from gpt2repro.optim import MuonWithAdamW, build_optimizer, lr_at, set_lr

MODEL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100, arch="modern")
MUON = OptimConfig(name="muon", lr=1e-3, embed_lr=0.3, head_lr=4e-3, muon_lr=0.02, warmup_steps=2)


def _model(cfg: ModelConfig = MODEL) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg)


def _step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor, step: int) -> float:
    opt.zero_grad(set_to_none=True)
    set_lr(opt, lr_at(step, 10, MUON), MUON)
    _, loss = model(x, x, loss_only=True)
    assert loss is not None
    loss.backward()
    opt.step()
    return loss.item()


def test_groups_muon_takes_the_block_matrices_adamw_the_rest() -> None:
    model = _model()
    opt = build_optimizer(model, MUON, "cpu")
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)]: g["lr"] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.")}
    assert all(p.dim() == 2 for g in opt.muon.param_groups for p in g["params"])
    assert adamw == {"transformer.wte.weight": 0.3, "lm_head.weight": 4e-3}
    assert [g["lr"] for g in opt.muon.param_groups] == [0.02]
    assert opt.param_groups == opt.muon.param_groups + opt.adamw.param_groups
    # GPT-2 with muon: gains and biases go to AdamW at optim.lr
    gpt2 = _model(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100))
    opt2 = build_optimizer(gpt2, MUON, "cpu")
    names2 = {id(p): n for n, p in gpt2.named_parameters()}
    assert isinstance(opt2, MuonWithAdamW)
    adamw2 = {names2[id(p)]: g["lr"] for g in opt2.adamw.param_groups for p in g["params"]}
    # the tied head (wte) at the head's rate; the learned positions at the embeddings', decayed
    assert adamw2["transformer.wte.weight"] == 4e-3 and adamw2["transformer.wpe.weight"] == 0.3
    wpe = gpt2.transformer.wpe.weight
    assert [g["weight_decay"] for g in opt2.param_groups if any(p is wpe for p in g["params"])] == [
        MUON.weight_decay
    ]
    flat = [g for g in opt2.adamw.param_groups if g["lr_key"] == "lr"]
    assert flat and flat[0]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in flat[0]["params"])
    assert sum(len(g["params"]) for g in opt2.param_groups) == len(list(gpt2.parameters()))


def test_adamw_default_keeps_gpt2s_two_groups() -> None:
    opt = build_optimizer(_model(), OptimConfig(), "cpu")
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 2
    assert "lr_key" not in opt.param_groups[0]
    set_lr(opt, 1.234e-4, OptimConfig())
    assert all(g["lr"] == 1.234e-4 for g in opt.param_groups)  # exactly the schedule's value


def test_every_group_follows_the_schedule_at_its_own_peak() -> None:
    opt = build_optimizer(_model(), MUON, "cpu")
    set_lr(opt, MUON.lr / 4, MUON)
    lrs = {g["lr_key"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"muon_lr": 0.005, "embed_lr": 0.075, "head_lr": 1e-3}


def test_loss_falls_and_the_state_dict_round_trips_exactly() -> None:
    model = _model()
    opt = build_optimizer(model, MUON, "cpu")
    x = torch.randint(0, 100, (4, 32))
    losses = [_step(model, opt, x, s) for s in range(6)]
    assert losses[-1] < losses[0] - 0.3
    # a fresh optimizer loaded from a saved (copied) state steps exactly as the original
    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, MUON, "cpu")
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert isinstance(twin_opt, MuonWithAdamW)
    assert twin_opt.muon.state is twin_opt.state and twin_opt.adamw.state is twin_opt.state
    for s in (6, 7):
        assert _step(model, opt, x, s) == _step(twin, twin_opt, x, s)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_distributed_checkpoints_full_state_dict_is_keyed_by_name() -> None:
    """checkpoint.py's path: torch.distributed.checkpoint's full optimizer state dict, keyed by
    parameter name, holds Muon's momentum and AdamW's moments, and loads back."""
    model = _model()
    opt = build_optimizer(model, MUON, "cpu")
    x = torch.randint(0, 100, (4, 32))
    _step(model, opt, x, 0)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    osd = copy.deepcopy(get_optimizer_state_dict(model, opt, options=opts))
    assert set(osd["state"]["transformer.h.0.attn.c_attn.weight"]) == {"momentum_buffer"}
    assert set(osd["state"]["transformer.wte.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, MUON, "cpu")
    set_optimizer_state_dict(twin, twin_opt, osd, options=opts)
    assert _step(model, opt, x, 1) == _step(twin, twin_opt, x, 1)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
