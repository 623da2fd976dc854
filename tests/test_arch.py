"""The architecture switches (model.arch, config.Arch): each alone and the modern preset build and
train, change what they say, sample the same with and without the KV cache, and compile without
graph breaks or recompiles; GPT-2 stays GPT-2. Tiny shapes on CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gpt2repro.config import ARCH_PRESETS, ARCH_SWITCHES, Arch, ModelConfig, load_config
from gpt2repro.errors import UserError
from gpt2repro.hardware import flops_per_token
from gpt2repro.loss import linear_cross_entropy
from gpt2repro.model import GPT, MLP, ReLUSquared
from gpt2repro.plan import model_shape

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": 100}
# Each switch alone on GPT-2, and the preset.
ALONE: dict[str, dict] = {
    **{s: {s: True} for s in ARCH_SWITCHES if s != "logit_softcap"},
    "logit_softcap": {"logit_softcap": 5.0},
    "modern": {"arch": "modern"},
}


def tiny(pad: int = 64, **switches: object) -> ModelConfig:
    return ModelConfig(**TINY, pad_vocab_multiple=pad, **switches)  # type: ignore[arg-type]


def perturbed(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A model whose zero-initialised weights are not zero (so every path carries signal)."""
    torch.manual_seed(seed)
    model = GPT(cfg, loss_chunk=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_gpt2_is_the_default_and_resolves_to_no_switch() -> None:
    assert ModelConfig().arch == "gpt2" and ModelConfig().resolved_arch == Arch()
    assert ModelConfig().is_gpt2 and not tiny(arch="modern").is_gpt2
    # every switch explicitly off is GPT-2 too, parameter for parameter under one seed
    off = {s: (0.0 if s == "logit_softcap" else False) for s in ARCH_SWITCHES}
    torch.manual_seed(0)
    a = GPT(tiny(**off)).state_dict()
    torch.manual_seed(0)
    b = GPT(tiny()).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_preset_then_explicit_switches() -> None:
    modern = tiny(arch="modern").resolved_arch
    assert modern == ARCH_PRESETS["modern"] and modern.logit_softcap == 30.0
    less = tiny(arch="modern", qk_norm=False).resolved_arch
    assert less == dataclasses.replace(modern, qk_norm=False)
    assert tiny(rotary=True).resolved_arch == Arch(rotary=True)


@pytest.mark.parametrize("name", list(ALONE))
def test_each_switch_builds_trains_and_changes_what_it_says(name: str) -> None:
    cfg = tiny(**ALONE[name])
    arch = cfg.resolved_arch
    model = perturbed(cfg)
    names = dict(model.named_parameters())
    assert ("transformer.wpe.weight" in names) == (not arch.rotary)
    assert (model.lm_head.weight is model.transformer.wte.weight) == (not arch.untied_head)
    assert ("lm_head.weight" in names) == arch.untied_head
    has_bias = any(n.endswith(".bias") for n in names)
    assert has_bias == (not arch.no_bias)
    norms = [m for m in model.modules() if isinstance(m, nn.RMSNorm | nn.LayerNorm)]
    assert all(isinstance(m, nn.RMSNorm) == arch.rmsnorm for m in norms)
    mlp = next(m for m in model.modules() if isinstance(m, MLP))
    assert isinstance(mlp.gelu, ReLUSquared) == arch.relu2
    # num_params leaves out the padded rows of wte and of an untied head
    padded = cfg.padded_vocab_size - cfg.vocab_size
    tables = 2 if arch.untied_head else 1
    assert model.num_params() == model.num_params(False) - tables * padded * cfg.n_embd
    # forward, loss and backward
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    logits, loss = model(x, x)
    assert logits is not None and logits.shape == (2, 24, cfg.vocab_size)
    if arch.logit_softcap:
        assert logits.abs().max() < arch.logit_softcap
    assert loss is not None and torch.isfinite(loss)
    _, chunked = model(x, x, loss_only=True)
    assert chunked is not None
    torch.testing.assert_close(chunked, loss)
    chunked.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_zero_init_starts_projections_and_an_untied_head_at_zero() -> None:
    torch.manual_seed(0)
    model = GPT(tiny(zero_init=True, untied_head=True))
    for name, p in model.named_parameters():
        zero = name.endswith("c_proj.weight") or name == "lm_head.weight"
        assert bool((p == 0).all()) == zero or name.endswith(".bias"), name
    torch.manual_seed(0)
    tied = GPT(tiny(zero_init=True))  # a tied head is wte: not zeroed
    assert tied.transformer.wte.weight.abs().sum() > 0


def test_qk_norm_normalises_each_heads_q_and_k() -> None:
    """qk_norm changes the attention (the same weights give other outputs), and rescaling
    c_attn's q, k rows changes nothing with it: the RMSNorm takes the scale out."""
    base = perturbed(tiny())
    normed = perturbed(tiny(qk_norm=True))
    normed.load_state_dict(base.state_dict())
    x = torch.randint(0, 100, (2, 16))
    assert not torch.allclose(base(x)[0], normed(x)[0])  # type: ignore[arg-type]
    before = normed(x)[0]
    with torch.no_grad():
        for block in normed.transformer.h:
            block.attn.c_attn.weight[: 2 * 32] *= 3.0
            block.attn.c_attn.bias[: 2 * 32] *= 3.0
    torch.testing.assert_close(normed(x)[0], before)


@pytest.mark.parametrize("name", ["rotary", "modern"])
def test_kv_cache_sampling_equals_no_cache_sampling(name: str) -> None:
    """Rotary's positions start at the cache's offset: greedy and sampled tokens are equal."""
    model = perturbed(tiny(**ALONE[name]))
    prompt = torch.randint(0, 100, (2, 5))
    for temperature in (0.0, 1.0):
        outs = []
        for use_cache in (True, False):
            gen = torch.Generator().manual_seed(7)
            outs.append(model.generate(prompt, 20, temperature, generator=gen, use_cache=use_cache))
        assert torch.equal(outs[0], outs[1]), temperature


def test_rotary_positions_given_with_a_mask_equal_the_plain_pass() -> None:
    """Packed rows (HellaSwag) pass positions and a mask: the same hidden states as the causal
    pass of one sequence, for rotary positions too ([B, T] positions)."""
    model = perturbed(tiny(arch="modern")).eval()
    x = torch.randint(0, 100, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    mask = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        torch.testing.assert_close(
            model.hidden_states(x, pos=pos, attn_mask=mask), model.hidden_states(x)
        )


@pytest.mark.parametrize("chunk", [7, 64])
def test_soft_capped_chunked_loss_and_gradients_equal_the_plain_path(chunk: int) -> None:
    torch.manual_seed(0)
    h = (3 * torch.randn(40, 16)).requires_grad_()
    w = torch.randn(70, 16, requires_grad=True)
    t = torch.randint(0, 60, (40,))
    t[::9] = -1
    cap = 4.0

    def plain() -> torch.Tensor:
        logits = cap * torch.tanh(torch.nn.functional.linear(h, w)[:, :60] / cap)
        return torch.nn.functional.cross_entropy(logits, t, ignore_index=-1)

    ref = plain()
    ref_g = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, n_valid=60, chunk=chunk, softcap=cap)
    out_g = torch.autograd.grad(out, (h, w))
    torch.testing.assert_close(out, ref)
    for a, b in zip(out_g, ref_g, strict=True):
        torch.testing.assert_close(a, b)
    # the cap does change the loss
    assert abs(linear_cross_entropy(h, w, t, n_valid=60, chunk=chunk).item() - ref.item()) > 1e-3


@pytest.mark.slow  # ~20-35 s on 2 CPU cores: one torch.compile of forward and backward
def test_modern_compiles_without_graph_breaks_or_recompiles() -> None:
    """fullgraph=True fails on a graph break; error_on_recompile on a second compile. The loss
    and gradients equal eager's (the compiled chunk body applies the soft-cap too)."""
    import torch._dynamo  # the compiler's switches, for this test only

    torch._dynamo.reset()
    cfg = tiny(arch="modern")
    eager = perturbed(cfg)
    compiled_model = perturbed(cfg)
    fn = torch.compile(compiled_model, fullgraph=True, dynamic=False)
    x = torch.randint(0, 100, (2, 16))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            _, loss_c = fn(x, x, loss_only=True)
            _, loss_e = eager(x, x, loss_only=True)
            assert loss_c is not None and loss_e is not None
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
            loss_c.backward()
            loss_e.backward()
            for (n, a), b in zip(
                compiled_model.named_parameters(), eager.parameters(), strict=True
            ):
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)
            x = torch.randint(0, 100, (2, 16))  # new data, same shapes: no recompile
    torch._dynamo.reset()


def test_flops_and_plan_count_the_new_shapes() -> None:
    gpt2, modern = tiny(), tiny(arch="modern")
    assert gpt2.lookup_params == 0  # llm.c's 6N unchanged for GPT-2
    assert modern.lookup_params == modern.padded_vocab_size * modern.n_embd
    shape = model_shape(modern)
    assert shape.n_params == GPT(modern).num_params(exclude_padding=False)
    f = flops_per_token(shape.n_params, 2, 32, 32, lookup_params=modern.lookup_params)
    # 6 x (the matmuls' parameters: blocks and head, no wte) + attention
    matmul = shape.n_params - modern.padded_vocab_size * modern.n_embd
    assert f == 6 * matmul + 6 * 2 * 32 * 32


def test_config_switches_from_the_command_line_and_their_refusals() -> None:
    cfg, _ = load_config(["--model.arch=modern", "--model.qk_norm=false", "--run.dir=r"])
    assert cfg.model.resolved_arch == dataclasses.replace(ARCH_PRESETS["modern"], qk_norm=False)
    with pytest.raises(UserError, match="'model.rotary' needs an even head size"):
        load_config(["--model.rotary", "--model.n_embd=30", "--model.n_head=2"])
    with pytest.raises(UserError, match="'model.arch' must be one of gpt2, modern"):
        load_config(["--model.arch=llama"])
    with pytest.raises(UserError) as e:
        load_config(["--optim.name=muon", "--dist.strategy=fsdp"])
    assert "'optim.name' muon is not offered with dist.strategy=fsdp" in str(e.value)
    assert "\n" not in str(e.value)


def test_hf_export_of_another_architecture_is_refused_in_one_line(tmp_path: Path) -> None:
    """No transformers GPT-2 has these switches: refused before anything is written."""
    pytest.importorskip("safetensors")
    from gpt2repro.hf import save_hf

    with pytest.raises(UserError) as e:
        save_hf(GPT(tiny(arch="modern", qk_norm=False)), tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and "model.arch=modern with rotary, rmsnorm, relu2" in message
    assert "qk_norm" not in message and "logit_softcap=30" in message
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_from_before_the_switches_resumes_as_gpt2(tmp_path: Path) -> None:
    """Checkpoints written before model.arch and optim.name existed lack them: they resume as
    the defaults they were trained under; another architecture or optimizer is refused."""
    from fixtures.checkpoints import MODEL, full_config, save

    from gpt2repro import checkpoint
    from gpt2repro.resume import select_resume

    ckpt = save(tmp_path, 3)
    state = checkpoint.read_state(ckpt)
    for key in ARCH_SWITCHES + ("arch",):
        del state["config"]["model"][key]
    for key in ("name", "muon_lr", "muon_momentum", "embed_lr", "head_lr"):
        del state["config"]["optim"][key]
    (ckpt / "state.json").write_text(json.dumps(state))
    assert select_resume(mode="auto", run_dir=tmp_path, config=full_config(MODEL)) is not None
    modern = dataclasses.replace(MODEL, arch="modern")
    with pytest.raises(UserError, match="another model shape: arch=gpt2 \\(config: modern\\)"):
        select_resume(mode="auto", run_dir=tmp_path, config=full_config(modern))
    muon = full_config(MODEL, optim__name="muon")
    with pytest.raises(UserError, match="optim.name=adamw \\(now: muon\\)"):
        select_resume(mode="auto", run_dir=tmp_path, config=muon)
