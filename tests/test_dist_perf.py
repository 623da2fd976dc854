"""The distributed wrapping: DDP's bucket views, bucket size and bf16 compression hook; FSDP2's bf16
MixedPrecisionPolicy, per-block compilation and device-side skip. 2 gloo processes on CPU; the
in-process parts run tests/fixtures/dist_worker.py under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_train import args_for, corpus, run  # noqa: F401  (corpus is a fixture)

from gpt2repro import dist
from gpt2repro.config import DistConfig, ModelConfig, build_config, help_text
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.runs import train_losses

WORKER = REPO / "tests" / "fixtures" / "dist_worker.py"


def worker(mode: str, tmp_path: Path) -> dict:
    """Run one mode of the worker on 2 gloo processes; what rank 0 wrote."""
    out = tmp_path / f"{mode}.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), mode, str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_dist_keys_have_help_choices_and_ranges() -> None:
    text = help_text("train.py")
    for key in ("dist.fsdp_mixed_precision", "dist.bucket_cap_mb", "dist.grad_compression"):
        assert f"--{key}" in text
    assert "(none | bf16)" in text
    cfg = build_config()
    assert (cfg.dist.fsdp_mixed_precision, cfg.dist.bucket_cap_mb, cfg.dist.grad_compression) == (
        True,
        25.0,
        "none",
    )
    for key, bad, message in (
        ("dist.bucket_cap_mb", "0", "'dist.bucket_cap_mb' must be >= 1"),
        ("dist.grad_compression", "fp16", "'dist.grad_compression' must be one of none, bf16"),
        ("dist.fsdp_mixed_precision", "maybe", "'dist.fsdp_mixed_precision' must be bool"),
    ):
        with pytest.raises(UserError, match=message):
            build_config(overrides=[(key, bad)])
    with pytest.raises(UserError, match="'dist.grad_compression' .* applies to dist.strategy=ddp"):
        build_config(overrides=[("dist.grad_compression", "bf16"), ("dist.strategy", "fsdp")])


@pytest.mark.parametrize(
    "version,major_minor",
    [
        ("2.5.1+cu121", (2, 5)),
        ("2.6.0", (2, 6)),
        ("2.13.0+cpu", (2, 13)),
        ("2.6.0a0+gitabc", (2, 6)),
    ],
)
def test_torch_version_is_read_as_numbers(version: str, major_minor: tuple[int, int]) -> None:
    assert dist.torch_version(version) == major_minor  # 2.13 > 2.6, which a string compare denies


def test_ddp_compile_and_fsdp_refuse_an_old_torch_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes (no process group needed: the check comes first) on torch 2.5: DDP with
    compile and FSDP2 stop with the fix; one process goes on (neither wraps nor shards)."""
    raw = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    two = DistInfo(rank=0, world_size=2, local_world_size=2, backend="gloo")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(UserError) as e:
        dist.wrap(raw, two, DistConfig(strategy="ddp"), compile=True)
    assert str(e.value) == (
        "torch 2.5.1+cu121 found; DDP with torch.compile and FSDP2 need torch >= 2.6: "
        "pip install 'torch>=2.6' (or run with --train.compile=false)"
    )
    with pytest.raises(UserError, match=r"^torch 2.5.1\+cu121 found; .*--dist.strategy=ddp"):
        dist.shard(raw, two, "fsdp")
    assert dist.wrap(raw, DistInfo(), DistConfig(strategy="ddp"), compile=False) is raw
    dist.shard(raw, DistInfo(), "fsdp")  # one process: no sharding, no check
    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    dist.require_torch_for("--train.compile=false")  # new enough: no error


@pytest.mark.dist
def test_gradient_as_bucket_view_is_bit_identical_to_copying(tmp_path: Path) -> None:
    """Bucket views change where the gradients live, not one addition: the same losses and
    parameters, bit for bit, as DDP copying gradients into its buckets (2 buckets, 2
    accumulation steps under no_sync)."""
    r = worker("bucket_view", tmp_path)
    assert r["copy_buckets"] == r["view_buckets"] == 2
    assert r["copy_losses"] == r["view_losses"]
    assert r["params_equal"]


@pytest.mark.dist
def test_fsdp_bf16_policy_all_gathers_bf16_and_skips_on_the_device(tmp_path: Path) -> None:
    r = worker("fsdp_bf16", tmp_path)
    assert r["forward_param_dtype"] == "torch.bfloat16"  # what a block computes with
    assert r["sharded_param_dtypes"] == r["grad_dtypes"] == ["torch.float32"]  # what is kept
    assert r["param_types"] == ["DTensor"]
    # fused AdamW with DTensor parameters: the NaN update is skipped inside the kernel, the
    # others applied, and the guard reads nothing on the host
    assert r["guard_on_device"] and r["updated"] == [True, False, True] and r["skipped"] == 1
    assert r["host_reads_in_guard_step"] == []


@pytest.mark.dist
def test_fsdp_bf16_policy_matches_ddp_in_bf16(corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    """FSDP2 with bf16 parameters vs DDP under bf16 autocast (fp32 parameters), 8 steps.

    Both compute the matmuls in bf16; FSDP2 also rounds the parameters, embeddings and so the
    residual stream to bf16 (8-bit mantissa: a relative rounding of up to 2^-9 = 0.2% per
    value). Measured over 40 steps of this model the two differ by at most 0.25% (and DDP in
    bf16 vs fp32 by 0.14%, docs/benchmarks.md), so 0.5% per step is a bound with room that a
    wrong reduction (a sum instead of a mean: 2x) or a missing gradient would break. The
    policy must be in effect: the losses differ from FSDP2's fp32 all-gather.
    """
    common = ["--train.max_steps=8", "--checkpoint.every=0", "--train.dtype=bfloat16"]
    ddp, fsdp, fsdp32 = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "fsdp32"
    run(args_for(corpus, ddp, *common, "--dist.strategy=ddp"), nproc=2)
    run(args_for(corpus, fsdp, *common, "--dist.strategy=fsdp"), nproc=2)
    run(
        args_for(
            corpus, fsdp32, *common, "--dist.strategy=fsdp", "--dist.fsdp_mixed_precision=false"
        ),
        nproc=2,
    )
    a, b = train_losses(ddp / "metrics.jsonl"), train_losses(fsdp / "metrics.jsonl")
    c = train_losses(fsdp32 / "metrics.jsonl")
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, 9))
    for k in a:
        assert abs(a[k] - b[k]) <= 5e-3 * abs(a[k]), (k, a[k], b[k])
    assert b != c  # fsdp_mixed_precision=false all-gathers fp32: other rounding


@pytest.mark.dist
@pytest.mark.slow  # ~15 s: one torch.compile per process
def test_compiled_fsdp_has_no_graph_break_and_matches_eager(tmp_path: Path) -> None:
    """Blocks and head + loss compiled one by one under FSDP2 (with activation checkpointing):
    three graphs (all blocks share one, one for the head + loss, one for the loss's chunk body,
    which the loss's op compiles once for its chunk shape), no graph break, eager's losses to
    rounding; a no_grad call through raw_model (evaluation) with another shape compiles
    nothing."""
    r = worker("compile_fsdp", tmp_path)
    assert r["graph_breaks"] == {}
    assert r["unique_graphs"] == 3  # > 0: the counters did see the compilation
    assert r["unique_graphs_after_no_grad_call"] == 3
    for e, c in zip(r["eager_losses"], r["compiled_losses"], strict=True):
        assert abs(e - c) <= 1e-4 * abs(e), (e, c)


@pytest.mark.dist
def test_bf16_grad_compression_trains_like_fp32_all_reduce(corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    """bf16_compress_hook rounds each bucket to bf16 before the all-reduce: the loss curve stays
    within bf16 rounding of the exact one (measured: 1.8e-4 relative over 40 steps) and differs
    from it (the hook is really installed)."""
    common = ["--train.max_steps=12", "--checkpoint.every=0"]
    exact, bf16 = tmp_path / "exact", tmp_path / "bf16"
    run(args_for(corpus, exact, *common), nproc=2)
    run(args_for(corpus, bf16, *common, "--dist.grad_compression=bf16"), nproc=2)
    a, b = train_losses(exact / "metrics.jsonl"), train_losses(bf16 / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a != b
    for k in a:
        assert abs(a[k] - b[k]) <= 2e-3 * abs(a[k]), (k, a[k], b[k])


@pytest.mark.dist
def test_fsdp_keeps_the_last_block_and_optionally_all_between_micro_steps(tmp_path: Path) -> None:
    """FSDP2's all-gathers per step on 2 gloo ranks, 2 blocks. Without accumulation: the root
    once (kept through the step by FSDP2), block 0 twice (forward, backward) and the last block
    once (`reshard_after_forward=False`: its backward comes right after), 4 (5 if the last block
    were re-gathered). With 3 micro-steps: 12; with dist.fsdp_keep_unsharded the later
    micro-steps' forwards gather nothing and their backwards only block 0 again (re-sharded
    after its forward): 4 + 1 + 1 = 6. The switch moves no number: losses and parameters equal
    bit for bit."""
    r = worker("fsdp_keep", tmp_path)
    assert r["gathers_without_accumulation"] == 4
    assert r["gathers_per_step_false"] == 12 and r["gathers_per_step_true"] == 6
    assert r["losses_false"] == r["losses_true"]
    assert r["params_false"] == r["params_true"]


def test_speed_switches_have_help_defaults_and_choices() -> None:
    text = help_text("train.py")
    for key in ("train.attention_backend", "train.compile_mode", "dist.fsdp_keep_unsharded"):
        assert f"--{key}" in text
    assert "(auto | flash | cudnn | efficient | math)" in text
    assert "(default | max-autotune-no-cudagraphs)" in text
    cfg = build_config()
    assert (cfg.train.attention_backend, cfg.train.compile_mode) == ("auto", "default")
    assert cfg.dist.fsdp_keep_unsharded is False
    for key, bad, message in (
        ("train.attention_backend", "flash2", "'train.attention_backend' must be one of auto,"),
        ("train.compile_mode", "reduce-overhead", "'train.compile_mode' must be one of default,"),
        ("dist.fsdp_keep_unsharded", "maybe", "'dist.fsdp_keep_unsharded' must be bool"),
    ):
        with pytest.raises(UserError, match=message):
            build_config(overrides=[(key, bad)])


def test_compile_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile_mode is torch.compile's `mode`, for the whole model (one process, DDP) and
    for FSDP's per-block compile (compile_blocks), and build_model passes the setting on."""
    import torch

    from gpt2repro import dist
    from gpt2repro.model import GPT
    from gpt2repro.train import build_model

    modes: list[object] = []

    def fake_compile(fn: object, **kwargs: object) -> object:
        modes.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = build_config(
        overrides=[
            ("model.n_layer", "2"), ("model.n_head", "2"), ("model.n_embd", "32"),
            ("model.vocab_size", "128"), ("model.block_size", "32"), ("train.seq_len", "32"),
            ("train.device", "cpu"),
            ("train.compile", "true"), ("train.compile_mode", "max-autotune-no-cudagraphs"),
        ]
    )  # fmt: skip
    build_model(cfg, dist.DistInfo())
    assert modes == ["max-autotune-no-cudagraphs"]
    modes.clear()
    dist.compile_blocks(GPT(cfg.model), mode="max-autotune-no-cudagraphs")
    assert modes == ["max-autotune-no-cudagraphs"] * 3  # 2 blocks and the head + loss
