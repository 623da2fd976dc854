"""The GPT module itself: sizes, padding, init, causality, meta construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt2repro.config import ModelConfig
from gpt2repro.model import GPT, GPT2_SIZES, gpt2_config

PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


def tiny(**kw: int) -> GPT:
    torch.manual_seed(0)
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=100)
    return GPT(ModelConfig(**{**base, **kw}))


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_param_counts(name: str):
    with torch.device("meta"):
        model = GPT(gpt2_config(name))
        padded = GPT(gpt2_config(name, pad_vocab_multiple=128))
    assert model.num_params() == PARAMS[name]
    assert model.num_params(exclude_padding=False) == PARAMS[name]
    assert padded.config.padded_vocab_size == 50304
    assert padded.num_params() == PARAMS[name]  # padding is not a parameter of GPT-2
    assert padded.num_params(exclude_padding=False) == PARAMS[name] + 47 * padded.config.n_embd


def test_meta_construction():
    with torch.device("meta"):
        model = GPT(gpt2_config("gpt2-xl"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params() == PARAMS["gpt2-xl"]  # shapes known without allocating 6 GB


def test_tied_head():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted and optimized once


def test_padded_vocab_logits_and_rows():
    model = tiny(pad_vocab_multiple=64)
    assert model.config.padded_vocab_size == 128
    wte = model.transformer.wte.weight
    assert wte.shape == (128, 32)
    assert torch.count_nonzero(wte[100:]) == 0  # padded rows start at exactly zero
    idx = torch.randint(0, 100, (3, 16))
    targets = torch.randint(0, 100, (3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 100)  # padded ids are never predicted
    loss.backward()
    assert torch.count_nonzero(wte.grad[100:]) == 0  # ... so they never learn either
    assert torch.count_nonzero(wte.grad[:100]) > 0


def test_padding_does_not_change_outputs():
    plain = tiny()
    padded = tiny(pad_vocab_multiple=64)
    sd = plain.state_dict()
    wte = torch.zeros(128, 32)
    wte[:100] = sd["transformer.wte.weight"]
    sd["transformer.wte.weight"] = sd["lm_head.weight"] = wte
    padded.load_state_dict(sd)
    idx = torch.randint(0, 100, (2, 20))
    torch.testing.assert_close(padded(idx)[0], plain(idx)[0])


def test_init_std():
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(ModelConfig(n_layer=n_layer, n_head=4, n_embd=256, block_size=64, vocab_size=512))
    resid = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("attn.c_proj.weight") or name.endswith("mlp.c_proj.weight"):
            assert p.std().item() == pytest.approx(resid, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "ln_" in name:
            assert torch.all(p == 1.0), name


def test_loss_is_cross_entropy_with_ignore():
    model = tiny()
    idx = torch.randint(0, 100, (2, 10))
    targets = torch.randint(0, 100, (2, 10))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    want = F.cross_entropy(logits.reshape(-1, 100), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(loss, want)


def test_causal():
    model = tiny().eval()
    idx = torch.randint(0, 100, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 100
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPT(ModelConfig(n_layer=1, n_head=3, n_embd=32, block_size=8, vocab_size=10))
    model = tiny()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_activation_checkpointing_same_grads():
    model = tiny().train()
    idx = torch.randint(0, 100, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing = True
    _, loss2 = model(idx, idx)
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_generate_restores_training_mode_when_it_raises() -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    model.train()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.generate(torch.zeros(1, 6, dtype=torch.long), 5)  # 6 + 5 > 8 with the KV cache
    assert model.training
    model.eval()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
    assert not model.training


def test_attend_on_cpu_in_bf16_computes_in_float32_even_under_autocast():
    """bf16 q, k, v on a CPU attend in float32 (torch's CPU flash kernel is ~4x slower in bf16),
    also inside bf16 autocast, which would otherwise cast the float32 inputs back down; float32
    inputs are untouched."""
    from gpt2repro.model import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g).bfloat16() for _ in range(3))
    expect = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expect.bfloat16())
    in_bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(in_bf16, y)  # the old path rounds inside the kernel: it differs
    torch.testing.assert_close(in_bf16, y, atol=2e-2, rtol=2e-2)  # by bf16 rounding only
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    q32, k32, v32 = q.float(), k.float(), v.float()
    same = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    assert torch.equal(attend(q32, k32, v32, attn_mask=mask), same)


def _sdpa_ops(fn: object, x: torch.Tensor, mask: torch.Tensor | None = None) -> set[str]:
    """The SDPA aten ops that one forward + backward of `fn` (a GPT, compiled or not) runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if mask is None:
            _, loss = fn(x, x)  # type: ignore[operator]
        else:
            h = fn.hidden_states(x, pos=torch.arange(x.size(1)), attn_mask=mask)  # type: ignore[attr-defined]
            loss = h.square().mean()
        loss.backward()
    return {e.key for e in prof.key_averages() if "_scaled_dot_product" in e.key}


FLASH_CPU = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


def test_attention_backend_names_are_the_config_choices() -> None:
    from gpt2repro.config import TrainConfig
    from gpt2repro.model import ATTENTION_BACKENDS

    choices = {f.name: f for f in __import__("dataclasses").fields(TrainConfig)}
    assert tuple(ATTENTION_BACKENDS) == choices["attention_backend"].metadata["choices"]
    with pytest.raises(ValueError, match="attention backend must be one of auto, flash"):
        tiny().set_attention_backend("flash2")


@pytest.mark.parametrize(
    "name, kernel",
    [("auto", FLASH_CPU), ("flash", FLASH_CPU), ("math", MATH), ("cudnn", FLASH_CPU)],
)
def test_attention_backend_picks_the_kernel_eager(name: str, kernel: str) -> None:
    """The priority is in force inside the model: math runs the reference kernel, flash and auto
    CPU's flash kernel, and cudnn (no CPU kernel) falls back to torch's order, as documented.
    The loss is the same function whatever the kernel (math vs flash: to rounding)."""
    x = torch.randint(0, 100, (2, 16))
    model = tiny()
    model.set_attention_backend(name)
    ops = _sdpa_ops(model, x)
    assert kernel in ops and ({FLASH_CPU, MATH} - {kernel}).isdisjoint(ops), ops
    ref = tiny()
    torch.testing.assert_close(model(x, x)[1], ref(x, x)[1], rtol=1e-5, atol=1e-6)
    if name == "cudnn":  # the very same kernel as auto: the same bits
        assert torch.equal(model(x, x)[1], ref(x, x)[1])


def test_attention_backend_flash_falls_back_for_a_mask() -> None:
    """A masked call (HellaSwag's packed rows) with flash first runs and matches auto exactly.
    (CUDA's flash kernel takes no mask: there the call falls through to the next kernel,
    tests/test_gpu.py.)"""
    x = torch.randint(0, 100, (2, 16))
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    model, ref = tiny(), tiny()
    model.set_attention_backend("flash")
    assert _sdpa_ops(model, x, mask)  # it ran, some kernel
    pos = torch.arange(16)
    got = model.hidden_states(x, pos=pos, attn_mask=mask)
    assert torch.equal(got, ref.hidden_states(x, pos=pos, attn_mask=mask))


def test_attention_backend_is_traced_into_a_compiled_graph() -> None:
    """torch.compile traces the kernel priority (entered inside the attention module): math
    compiled runs no flash kernel forward or backward, auto compiled does; no graph break."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randint(0, 100, (2, 16))
    for name, kernel in (("math", MATH), ("auto", FLASH_CPU)):
        model = tiny()
        model.set_attention_backend(name)
        ops = _sdpa_ops(torch.compile(model, backend="aot_eager"), x)
        assert kernel in ops and ({FLASH_CPU, MATH} - {kernel}).isdisjoint(ops), (name, ops)
    assert dict(counters["graph_break"]) == {}
    torch._dynamo.reset()
