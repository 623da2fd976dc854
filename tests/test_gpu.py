"""CUDA paths against their CPU references: training (compiled, bf16), the fused-AdamW NaN guard,
the pinned-memory loader, bf16 validation loss, KV-cache generation, and a GPT-2 124M smoke.

Every test is marked `gpu` (skipped without CUDA by conftest.py). Each takes well under a minute
on an H100/H200.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import test_train
import torch
from test_train import args_for, run

from gpt2repro.config import ModelConfig, OptimConfig
from gpt2repro.data import TokenLoader
from gpt2repro.dist import DistInfo
from gpt2repro.evaluate import validation_loss
from gpt2repro.hardware import peak_flops_for_name
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer
from gpt2repro.runs import read_metrics, train_losses

pytestmark = pytest.mark.gpu

corpus = test_train.corpus  # the module-scoped shard fixture (vocab 512)
SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
CUDA = torch.device("cuda")


@pytest.fixture
def fp32_matmuls() -> Iterator[None]:
    """Exact fp32 matmuls inside the test (no TF32), whatever an earlier test set."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _train_records(rd: Path) -> dict[int, dict]:
    return {
        r["step"]: r for r in read_metrics(rd / "metrics.jsonl") if "loss" in r and "event" not in r
    }


def test_compiled_bf16_training_on_cuda(corpus: Path, tmp_path: Path) -> None:
    common = ["--train.max_steps=6", "--checkpoint.every=0"]
    gpu = tmp_path / "gpu"
    p = run(args_for(corpus, gpu, *common, "--train.device=cuda", "--train.compile=true"))
    assert "devices: 1 x cuda" in p.stdout
    recs = _train_records(gpu)
    assert sorted(recs) == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in recs.values())
    peak = peak_flops_for_name(torch.cuda.get_device_name())
    for r in recs.values():
        if peak is None:
            assert r["mfu"] is None  # a GPU outside the table: never a guessed number
        else:
            assert r["mfu"] is not None and 0 < r["mfu"] < 1
    # Same init (built on CPU from the seed, then moved) and same data: step 1's loss, before any
    # update, is the fp32 CPU loss up to bf16 rounding.
    cpu = tmp_path / "cpu"
    run(args_for(corpus, cpu, "--train.max_steps=1", "--checkpoint.every=0"))
    ref = train_losses(cpu / "metrics.jsonl")[1]
    assert abs(recs[1]["loss"] - ref) <= 2e-2, (recs[1]["loss"], ref)
    assert recs[6]["loss"] < recs[1]["loss"]


def test_nonfinite_guard_on_cuda_uses_the_fused_skip(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    run(
        args_for(
            corpus,
            rd,
            "--train.max_steps=8",
            "--checkpoint.every=0",
            "--train.device=cuda",
            "--train.compile=false",
        ),
        env={"GPT2REPRO_FAULT": "nan:3"},
    )
    recs = _train_records(rd)
    assert sorted(recs) == list(range(1, 9))
    assert recs[2]["skipped"] == 0 and recs[3]["skipped"] == 1 and recs[8]["skipped"] == 1
    assert math.isnan(recs[3]["loss"])
    assert all(math.isfinite(recs[s]["loss"]) for s in (1, 2, 4, 5, 6, 7, 8))
    assert all(math.isfinite(recs[s]["grad_norm"]) for s in (4, 5, 6, 7, 8))


def test_token_loader_on_cuda_matches_cpu(corpus: Path) -> None:
    kw = dict(batch_size=4, seq_len=32, rank=0, world_size=1, seed=7)
    cpu = TokenLoader(str(corpus), "train", device="cpu", **kw)  # type: ignore[arg-type]
    gpu = TokenLoader(str(corpus), "train", device="cuda", **kw)  # type: ignore[arg-type]
    # Keep every CUDA batch until the end: a reused pinned buffer must not change earlier ones.
    got = [gpu.next_batch() for _ in range(20)]
    want = [tuple(t.clone() for t in cpu.next_batch()) for _ in range(20)]
    for (xg, yg), (xc, yc) in zip(got, want, strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert xg.dtype == torch.int64 and xg.shape == (4, 32)
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    assert gpu.state_dict() == cpu.state_dict()


def _val_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(SMALL)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10)  # sharp logits: a loss far from ln(vocab)
    return model


def test_bf16_validation_loss_on_cuda_matches_fp32_cpu(corpus: Path, fp32_matmuls: None) -> None:
    from gpt2repro.data import load_tokens

    tokens = load_tokens(str(corpus), "val", 64 * 64 + 1)
    model = _val_model()
    ref = validation_loss(model, tokens, 64, 8, DistInfo())  # one process on the CPU
    assert abs(ref - math.log(512)) > 1.0  # not a uniform prediction that any precision gets
    model.to(CUDA)
    on_cuda = DistInfo(device=CUDA)
    fp32 = validation_loss(model, tokens, 64, 8, on_cuda)
    bf16 = validation_loss(model, tokens, 64, 8, on_cuda, torch.bfloat16)
    assert abs(fp32 - ref) <= 1e-4 * abs(ref), (fp32, ref)
    assert abs(bf16 - ref) <= 1e-2, (bf16, ref)
    assert validation_loss(model, tokens, 64, 8, on_cuda, torch.bfloat16) == bf16  # deterministic


def test_kv_cache_generation_on_cuda(fp32_matmuls: None) -> None:
    torch.manual_seed(0)
    model = GPT(SMALL).to(CUDA)
    prompt = torch.randint(0, 512, (2, 5), device=CUDA)
    cached = model.generate(prompt, 40, temperature=0, use_cache=True)
    full = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (2, 45)
    assert torch.equal(cached, full)
    assert torch.equal(cached[:, :5], prompt)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        out = model.generate(prompt, 40, temperature=0, use_cache=True)
        sampled = model.generate(
            prompt,
            40,
            temperature=1.0,
            top_k=50,
            generator=torch.Generator(device=CUDA).manual_seed(0),
        )
    for o in (out, sampled):
        assert o.shape == (2, 45) and o.dtype == torch.int64 and o.device.type == "cuda"
        assert int(o.min()) >= 0 and int(o.max()) < 512


def test_gpt2_124m_compiled_bf16_smoke() -> None:
    """H100-class smoke: GPT-2 124M, bf16 autocast, torch.compile, fused AdamW; prints tokens/s."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        torch.manual_seed(0)
        raw = GPT(ModelConfig(vocab_size=50257, pad_vocab_multiple=128)).to(CUDA)
        opt = build_optimizer(raw, OptimConfig(lr=6e-4), "cuda")
        assert opt.defaults["fused"]
        model = torch.compile(raw)
        B, T = 16, 1024
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, 50257, (5, B, T + 1), generator=gen).to(CUDA)
        losses, times = [], []
        for i in range(5):  # 2 warm-up (compile) steps, 3 timed
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            x, y = data[i, :, :-1], data[i, :, 1:]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_float32_matmul_precision(saved)
    tok_s = B * T * 3 / sum(times[2:])
    print(f"GPT-2 124M bf16 compiled on {torch.cuda.get_device_name()}: {tok_s:,.0f} tok/s")
    assert all(np.isfinite(losses)), losses
    assert abs(losses[0] - math.log(50257)) < 0.5, losses[0]  # init predicts ~uniformly


_CUDA_KERNELS = {
    "flash": "aten::_scaled_dot_product_flash_attention",
    "efficient": "aten::_scaled_dot_product_efficient_attention",
    "cudnn": "aten::_scaled_dot_product_cudnn_attention",
    "math": "aten::_scaled_dot_product_attention_math",
}


def _cuda_sdpa_kernels(
    model: object, x: torch.Tensor, mask: torch.Tensor | None = None
) -> set[str]:
    """Which SDPA kernels (of `_CUDA_KERNELS`) one bf16 forward + backward of `model` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            if mask is None:
                _, loss = model(x, x)  # type: ignore[operator]
            else:
                pos = torch.arange(x.size(1), device=CUDA)
                h = model.hidden_states(x, pos=pos, attn_mask=mask)  # type: ignore[attr-defined]
                loss = h.float().square().mean()
        loss.backward()
        torch.cuda.synchronize()
    keys = {e.key for e in prof.key_averages()}
    return {name for name, op in _CUDA_KERNELS.items() if op in keys}


@pytest.mark.parametrize("name", ["flash", "efficient", "cudnn", "math"])
def test_attention_backend_runs_its_kernel_on_cuda(name: str) -> None:
    """train.attention_backend picks the SDPA kernel (eager, bf16): the named one, or for cudnn
    on a build or GPU without it the documented fallback (flash); losses agree across kernels to
    bf16 rounding. A masked call with flash first falls through to another kernel."""
    torch.manual_seed(0)
    model = GPT(SMALL, attention_backend=name).to(CUDA)
    x = torch.randint(0, 512, (4, 64), device=CUDA)
    ran = _cuda_sdpa_kernels(model, x)
    allowed = {"cudnn", "flash"} if name == "cudnn" else {name}
    assert ran and ran <= allowed, (name, ran)
    torch.manual_seed(0)
    ref = GPT(SMALL).to(CUDA)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        a, b = model(x, x)[1], ref(x, x)[1]
    assert abs(a.item() - b.item()) <= 1e-2 * abs(b.item()), (a.item(), b.item())
    if name == "flash":
        mask = torch.ones(64, 64, dtype=torch.bool, device=CUDA).tril()
        assert "flash" not in _cuda_sdpa_kernels(model, x, mask)


def test_attention_backend_and_compile_mode_reach_the_compiled_graph() -> None:
    """Compiled (inductor, max-autotune-no-cudagraphs as dist.wrap passes it) with the
    memory-efficient kernel first: the compiled step runs that kernel, not torch's default
    flash, and its loss matches eager's."""
    torch.manual_seed(0)
    raw = GPT(SMALL, attention_backend="efficient").to(CUDA)
    x = torch.randint(0, 512, (4, 64), device=CUDA)
    model = torch.compile(raw, mode="max-autotune-no-cudagraphs")
    assert _cuda_sdpa_kernels(model, x) == {"efficient"}
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        a, b = model(x, x)[1], raw(x, x)[1]
    assert abs(a.item() - b.item()) <= 1e-2 * abs(b.item()), (a.item(), b.item())
