"""Generation by equivalence: KV cache vs full recompute, ours vs transformers' generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gpt2repro.config import ModelConfig
from gpt2repro.errors import run_cli
from gpt2repro.hf import load_hf
from gpt2repro.model import GPT
from gpt2repro.sample import main, sample

transformers = pytest.importorskip("transformers")


def peaky_gpt(vocab: int = 100, block_size: int = 48, seed: int = 0) -> GPT:
    """A random GPT whose logits are well separated, so argmax is not decided by rounding."""
    torch.manual_seed(seed)
    model = GPT(
        ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=block_size, vocab_size=vocab)
    )
    with torch.no_grad():
        model.transformer.wte.weight.mul_(25.0)
        model.transformer.wpe.weight.mul_(25.0)
    return model.eval()


def hf_dir(tmp_path: Path, vocab: int = 100, seed: int = 0) -> tuple[Path, object]:
    torch.manual_seed(seed)
    eot = 50256 if vocab > 50256 else None
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=vocab, bos_token_id=eot,
        eos_token_id=eot,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(25.0)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


@pytest.mark.parametrize("prompt", [[7], [3, 14, 15, 92, 65], list(range(1, 21))])
def test_greedy_cache_equals_no_cache(prompt: list[int]):
    model = peaky_gpt()
    idx = torch.tensor([prompt])
    n = 48 - len(prompt)  # up to the full context
    with_cache = model.generate(idx, n, temperature=0, use_cache=True)
    without = model.generate(idx, n, temperature=0, use_cache=False)
    assert with_cache.shape == (1, len(prompt) + n)
    assert with_cache.tolist() == without.tolist()


def test_greedy_cache_equals_no_cache_batched():
    model = peaky_gpt(seed=3)
    idx = torch.tensor([[1, 2, 3], [40, 50, 60], [99, 0, 7]])
    a = model.generate(idx, 20, temperature=0, use_cache=True)
    b = model.generate(idx, 20, temperature=0, use_cache=False)
    assert a.tolist() == b.tolist()
    # each row is what it would be alone: batching does not mix sequences
    assert a[1:2].tolist() == model.generate(idx[1:2], 20, temperature=0).tolist()


def test_no_cache_slides_past_block_size():
    model = peaky_gpt(block_size=16)
    out = model.generate(torch.tensor([[1, 2]]), 30, temperature=0, use_cache=False)
    assert out.shape == (1, 32)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.tensor([[1, 2]]), 30, temperature=0, use_cache=True)


def test_kv_cache_forward_matches_full_forward():
    model = peaky_gpt()
    from gpt2repro.model import KVCache

    idx = torch.randint(0, 100, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(model.config, 2, 30, idx.device, torch.float32)
        parts = [model(idx[:, :10], cache=cache)[0]]  # a chunk, then chunks of 1 and 19
        parts.append(model(idx[:, 10:11], cache=cache)[0])
        parts.append(model(idx[:, 11:], cache=cache)[0])
    assert cache.pos == 30
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_transformers_generate(tmp_path: Path, use_cache: bool):
    directory, ref = hf_dir(tmp_path)
    ours = load_hf(str(directory))
    for prompt in ([5], [9, 8, 7, 6, 5, 4, 3]):
        idx = torch.tensor([prompt])
        n = 24
        want = ref.generate(
            idx, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0
        )
        got = ours.generate(idx, n, temperature=0, use_cache=use_cache)
        assert got.tolist() == want.tolist()


def test_seeded_sampling_is_reproducible():
    model = peaky_gpt()
    model.transformer.wte.weight.data.div_(25.0)  # flatter distribution: samples vary by seed
    prompt = [1, 2, 3]
    a = sample(model, prompt, 30, temperature=1.0, top_k=50, num_samples=2, seed=123)
    b = sample(model, prompt, 30, temperature=1.0, top_k=50, num_samples=2, seed=123)
    c = sample(model, prompt, 30, temperature=1.0, top_k=50, num_samples=2, seed=124)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # samples in one batch are independent
    assert all(len(s) == 30 for s in a)


def test_top_k_1_is_greedy():
    model = peaky_gpt()
    got = sample(model, [4, 5], 16, temperature=0.7, top_k=1, seed=0)
    want = sample(model, [4, 5], 16, temperature=0.0, top_k=0)
    assert got == want


def test_cli_json_subprocess(tmp_path: Path):
    directory, _ = hf_dir(tmp_path, vocab=50257)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "gpt2repro.sample", "--hf", str(directory), "--json"]
    cmd += ["--max-new-tokens", "7", "--temperature", "0", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert {"prompt_tokens", "tokens", "text"} <= set(obj)
    assert obj["prompt_tokens"] == [15496, 11, 314, 1101, 257, 3303, 2746, 11]  # default prompt
    assert len(obj["tokens"]) == 7 and all(isinstance(t, int) for t in obj["tokens"])
    from gpt2repro.tokenizer import get_encoding

    assert obj["text"] == get_encoding().decode(obj["tokens"])
    model = load_hf(str(directory))
    assert obj["tokens"] == sample(model, obj["prompt_tokens"], 7, temperature=0, top_k=50)[0]


def test_cli_num_samples_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    directory, _ = hf_dir(tmp_path, vocab=50257)
    argv = ["--hf", str(directory), "--json", "--max-new-tokens", "5", "--num-samples", "3"]
    assert run_cli(main, argv + ["--seed", "1", "--prompt", "Hi"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert len(obj["tokens"]) == 3 and all(len(t) == 5 for t in obj["tokens"])
    assert isinstance(obj["text"], list) and len(obj["text"]) == 3

    assert run_cli(main, ["--hf", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err

    too_long = ["--hf", str(directory), "--max-new-tokens", "100"]
    assert run_cli(main, too_long) == 2
    assert "--no-kv-cache" in capsys.readouterr().err
    assert run_cli(main, too_long + ["--no-kv-cache", "--temperature", "0"]) == 0


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--temperature", "inf"], "--temperature must be a finite number >= 0"),
        (["--device", "tpu"], "--device must be auto, cuda, mps or cpu"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = run_cli(main, ["--hf", str(tmp_path / "missing"), *args])
    err = capsys.readouterr().err
    assert status == 2 and expected in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


@pytest.mark.parametrize("temperature", [1e-7, 1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_not_an_overflow(temperature: float) -> None:
    """logits / 1e-40 overflowed float32 to inf: NaN probabilities and a multinomial error."""
    model = peaky_gpt()
    greedy = sample(model, [3, 14, 15], 8, temperature=0, top_k=0)
    assert sample(model, [3, 14, 15], 8, temperature=temperature, top_k=0, seed=1) == greedy


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--num-samples", "100000000"], "--num-samples must be in [1, 1024], got 100000000"),
        (["--num-samples", "0"], "--num-samples must be in [1, 1024], got 0"),
        (["--seed", str(2**64)], f"--seed must be in [0, {2**63 - 1}], got {2**64}"),
        (["--seed", "-1"], f"--seed must be in [0, {2**63 - 1}], got -1"),
    ],
)
def test_absurd_sample_counts_and_seeds_are_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: a huge batch allocated until the machine ran out of memory; a seed past 64 bits
    was torch's 'Overflow when unpacking long' traceback."""
    status = run_cli(main, ["--hf", str(tmp_path / "missing"), *args])
    err = capsys.readouterr().err
    assert status == 2 and expected in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
