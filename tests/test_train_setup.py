"""The pieces the training loop is built from, shared with `bench train` and the sample CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from gpt2repro import dist
from gpt2repro.config import Config, ModelConfig, TrainConfig, grad_accum_steps, load_config
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.sample import complete, decode_continuation, sample
from gpt2repro.tokenizer import get_encoding
from gpt2repro.train import build_model


def test_grad_accum_steps_is_exact_or_refused() -> None:
    t = TrainConfig(micro_batch_size=4, seq_len=32, total_batch_tokens=1024)
    assert grad_accum_steps(t, world_size=1) == 8 and grad_accum_steps(t, world_size=2) == 4
    with pytest.raises(UserError, match=r"train.total_batch_tokens=1024 is not a multiple of .* 3"):
        grad_accum_steps(t, world_size=3)


def test_bench_train_refuses_a_batch_training_would_refuse() -> None:
    """It used to floor the accumulation silently and measure another batch than training's."""
    cmd = [
        sys.executable, "-m", "gpt2repro.bench", "train",
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=32",
        "--model.vocab_size=64", "--train.seq_len=32", "--train.micro_batch_size=4",
        "--train.total_batch_tokens=300", "--steps=1", "--warmup=0",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert "train.total_batch_tokens=300 is not a multiple of" in p.stderr


def test_build_model_seeds_loads_and_wraps() -> None:
    cfg, _ = load_config(
        ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.vocab_size=64"]
    )
    a, b = build_model(cfg, dist.DistInfo()), build_model(cfg, dist.DistInfo())
    for (name, pa), pb in zip(
        a.raw_model.named_parameters(), b.raw_model.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name  # same seed, same weights: every rank starts alike
    assert a.model is a.raw_model and not a.compiled  # one CPU process: no DDP, eager
    assert a.autocast_dtype is None and a.strategy == "ddp"
    assert a.n_params == a.raw_model.num_params(exclude_padding=False)
    assert [g["weight_decay"] for g in a.optimizer.param_groups] == [0.1, 0.0]


def test_complete_is_the_prompt_and_the_cli_continuation() -> None:
    """`complete` (training samples, the demo) gives the prompt plus what `sample` generates."""
    torch.manual_seed(0)
    model = GPT(Config(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)).model)
    prompt = "Hello, I'm a language model,"
    text = complete(model, prompt, max_new_tokens=8, temperature=1.0, top_k=50, seed=3)
    enc = get_encoding()
    tokens = enc.encode_ordinary(prompt)
    generated = sample(model, tokens, 8, 1.0, 50, seed=3)[0]
    assert len(generated) == 8
    assert text == prompt + decode_continuation(enc, tokens, generated)
    assert text == enc.decode(tokens + generated)  # what the loop used to log
    full = " a" * 32  # 32 tokens: the whole context, nothing left to generate
    assert len(enc.encode_ordinary(full)) == 32
    assert complete(model, full, max_new_tokens=100, temperature=0, top_k=0) == full
