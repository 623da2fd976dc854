"""The planner (gpt2repro.plan): its memory model against memory measured on real CPU training
steps, its time arithmetic against llm.c's published 124M run, the GPU table, and bad input.

Memory is measured with the CPU allocator's own running total of bytes in use, as torch's
profiler records it with every allocation and free (`profile_memory=True`; the same records
`torch.profiler`'s memory timeline is built from): deterministic, exact to the byte, and free of
Python's and glibc's own heap (which the process's resident set would mix in). Weights, gradients
and AdamW state are summed from the real tensors after a step.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO

from gpt2repro import plan, precision, preflight
from gpt2repro.config import build_config, load_config
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError, run_cli
from gpt2repro.hardware import GPUS
from gpt2repro.train import build_model, forward_backward

TOLERANCE = 0.03  # activations, loss buffers and the whole step: within 3% of the measurement


def allocator_trace(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """Run fn; return (its result, bytes in use at the end and at the peak, both relative to
    the start), from the CPU allocator's running total as the profiler records it."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()  # garbage from earlier tests must not be freed inside the trace
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
    finally:
        gc.enable()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            events.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
    assert events, "the profiler recorded no allocations"
    events.sort()
    base = events[0][2] - events[0][1]  # in use before the first allocation
    return out, events[-1][2] - base, max(0, max(e[2] for e in events) - base)


def _tensor_bytes(tensors: Any) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


# (name, model, train): small shapes, each a different regime of the memory model. bf16-chunked
# keeps a chunk's n V above V C as at GPT-2 scale (n=1024, V=50304, C=768): with n < C its peak
# is at the add of a bf16 dL/dW product into the fp32 buffer, where a CPU makes an fp32 copy of
# the product that a GPU does not (TensorIterator promotes CPU inputs into temporaries).
SHAPES = [
    ("fp32-chunked", dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, pad_vocab_multiple=128),
     dict(seq_len=64, micro_batch_size=4, loss_chunk=64)),
    ("fp32-full-logits", dict(n_layer=3, n_head=3, n_embd=96, vocab_size=1000),
     dict(seq_len=32, micro_batch_size=8, loss_chunk=0)),
    ("bf16-chunked", dict(n_layer=2, n_head=2, n_embd=64, vocab_size=2000, pad_vocab_multiple=64),
     dict(seq_len=64, micro_batch_size=4, loss_chunk=128, dtype="bfloat16")),
    ("bf16-full-logits", dict(n_layer=2, n_head=4, n_embd=128, vocab_size=1000),
     dict(seq_len=32, micro_batch_size=8, loss_chunk=0, dtype="bfloat16")),
    ("fp32-checkpointing", dict(n_layer=4, n_head=4, n_embd=64, vocab_size=1000, pad_vocab_multiple=128),
     dict(seq_len=64, micro_batch_size=4, loss_chunk=64, activation_checkpointing=True)),
    ("fp32-modern-chunked", dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, pad_vocab_multiple=128,
                                 arch="modern"),
     dict(seq_len=64, micro_batch_size=4, loss_chunk=64)),
    ("bf16-modern-chunked", dict(n_layer=2, n_head=2, n_embd=64, vocab_size=2000, pad_vocab_multiple=64,
                                 arch="modern"),
     dict(seq_len=64, micro_batch_size=4, loss_chunk=128, dtype="bfloat16")),
]  # fmt: skip


def _cfg(model: dict[str, Any], train: dict[str, Any]) -> Any:
    train = {"total_batch_tokens": 2 * train["micro_batch_size"] * train["seq_len"], **train}
    model = {"block_size": train["seq_len"], **model}
    return build_config({"model": model, "train": {"device": "cpu", **train}})


def _setup(cfg: Any) -> plan.Setup:
    """The planner's Setup for this config on one CPU process (its own dtype rule for CPU)."""
    cpu_dtype = precision.autocast_dtype(cfg.train.dtype, torch.device("cpu"))
    return replace(plan.setup_for(cfg, world=1, strategy="ddp"), bf16=cpu_dtype is not None)


def _close(planned: float, measured: float, what: str) -> None:
    print(f"{what}: planned {planned:,.0f} B, measured {measured:,.0f} B")
    assert abs(planned - measured) <= TOLERANCE * measured, (
        f"{what}: planned {planned:,.0f} B, measured {measured:,.0f} B "
        f"({planned / measured - 1:+.1%}, tolerance {TOLERANCE:.0%})"
    )


@pytest.mark.parametrize(("name", "model", "train"), SHAPES, ids=[s[0] for s in SHAPES])
def test_memory_model_matches_measured_cpu_steps(
    name: str, model: dict, train: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every component, and the whole step's peak, against a real training step (2 micro-steps
    of accumulation, so the gradients exist at the second one's peak, as in any long run).

    The planner plans GPU runs, where attention runs in the inputs' dtype; on a CPU, bf16 inputs
    attend in float32 (model.attend, a CPU speed detour that saves float32 copies), so the step
    measured here attends as on a GPU."""
    import torch.nn.functional as F

    from gpt2repro import model as model_module

    def gpu_attend(q, k, v, attn_mask=None, is_causal=False):  # type: ignore[no-untyped-def]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)

    monkeypatch.setattr(model_module, "attend", gpu_attend)
    torch.manual_seed(0)
    cfg = _cfg(model, train)
    info = DistInfo(device=torch.device("cpu"))
    trainable = build_model(cfg, info)
    raw, opt = trainable.raw_model, trainable.optimizer
    s, shape = _setup(cfg), plan.model_shape(cfg.model)
    planned = plan.memory_per_gpu(s, shape)
    B, T, V = cfg.train.micro_batch_size, cfg.train.seq_len, cfg.model.vocab_size
    tokens = torch.randint(0, V, (B, T + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        forward_backward(trainable, lambda: batch, grad_accum=2)
        opt.step()

    step()  # creates the AdamW state
    assert shape.n_params == trainable.n_params
    assert planned.weights == _tensor_bytes(raw.parameters())
    assert planned.gradients == _tensor_bytes(p.grad for p in raw.parameters())
    # exp_avg and exp_avg_sq; the per-tensor `step` counters (4 bytes each) are left out
    moments = [v for st in opt.state.values() for k, v in st.items() if k != "step"]
    assert planned.optimizer == _tensor_bytes(moments)

    device = torch.device("cpu")
    x, y = batch
    with precision.autocast(device, trainable.autocast_dtype):
        h, held, _ = allocator_trace(lambda: raw.hidden_states(x))
    # The token ids (saved by the embedding) were allocated before the trace; h is the output,
    # not saved; a checkpointed block also keeps the CPU RNG state (5,056 bytes of host memory,
    # never on a GPU, so not in the plan).
    rng_states = cfg.model.n_layer * torch.get_rng_state().nbytes if s.checkpointing else 0
    saved = held + x.nbytes - h.nbytes - rng_states
    _close(plan.saved_activation_bytes(s, shape), saved, "saved activations")

    h_leaf = h.detach().requires_grad_()
    del h

    def head() -> None:
        with precision.autocast(device, trainable.autocast_dtype):
            loss = raw.head_loss(h_leaf, y)
        loss.backward()

    _, _, head_peak = allocator_trace(head)
    _close(plan.loss_bytes(s), head_peak + h_leaf.nbytes, "logits / loss buffers")

    # The whole step: what exists before it (weights, AdamW state) plus its peak.
    opt.zero_grad(set_to_none=True)  # frees the gradients outside the trace
    before = _tensor_bytes(raw.parameters()) + _tensor_bytes(moments)
    _, _, step_peak = allocator_trace(step)
    _close(planned.allocated, before + step_peak, "whole step")


def test_checkpointing_and_fsdp_shrink_what_they_should() -> None:
    """Switches move the memory the way they claim: checkpointing only activations, FSDP the
    sharded states by the world size, a chunked loss only the loss buffers."""
    cfg = build_config({"model": {"n_layer": 12}, "train": {"micro_batch_size": 8}})
    shape = plan.model_shape(cfg.model)
    s = plan.setup_for(cfg, world=8, strategy="ddp")
    base = plan.memory_per_gpu(s, shape)
    ckpt = plan.memory_per_gpu(replace(s, checkpointing=True), shape)
    assert ckpt.activations < base.activations / 5 and ckpt.backward > base.backward
    assert (ckpt.weights, ckpt.optimizer, ckpt.loss) == (base.weights, base.optimizer, base.loss)
    fsdp = plan.memory_per_gpu(replace(s, strategy="fsdp"), shape)
    assert fsdp.weights * 8 == base.weights and fsdp.optimizer * 8 == base.optimizer
    one = plan.memory_per_gpu(replace(s, strategy="fsdp", world=1), shape)
    assert one.weights == plan.memory_per_gpu(replace(s, world=1), shape).weights  # no sharding
    full = plan.memory_per_gpu(replace(s, loss_chunk=0), shape)
    assert full.loss > 4 * base.loss and full.activations == base.activations


def test_fsdp_accumulation_counts_the_unsharded_fp32_gradients() -> None:
    """FSDP2 with gradient accumulation holds every gradient un-sharded in fp32 between
    micro-steps (dist.grad_sync): 4 bytes per parameter per GPU, 5.8 GiB at 1.5B, whatever the
    world size; none without accumulation, under DDP, or on one GPU. dist.fsdp_keep_unsharded
    adds every block's gathered parameters (bf16 under the bf16 policy) as a peak of their own
    (after a backward, with no activations alive), and the plan shows both rows."""
    cfg = load_config(["--config", str(REPO / "configs" / "gpt2_1558m.toml")])[0]
    cfg = replace(cfg, train=replace(cfg.train, micro_batch_size=4))
    shape = plan.model_shape(cfg.model)
    s = plan.setup_for(cfg, world=8, strategy="fsdp")
    assert s.grad_accum == cfg.train.total_batch_tokens // (4 * cfg.train.seq_len * 8) > 1
    mem = plan.memory_per_gpu(s, shape)
    assert mem.fsdp_accum_grads == 4 * shape.n_params
    assert round(mem.fsdp_accum_grads / plan.GIB, 1) == 5.8
    assert mem.fsdp_kept_params == 0
    for other in (replace(s, grad_accum=1), replace(s, strategy="ddp"), replace(s, world=1)):
        assert plan.memory_per_gpu(other, shape).fsdp_accum_grads == 0
    no_accum = plan.memory_per_gpu(replace(s, grad_accum=1), shape)
    assert mem.allocated - no_accum.allocated == mem.fsdp_accum_grads
    kept = plan.memory_per_gpu(replace(s, fsdp_keep_unsharded=True), shape)
    assert kept.fsdp_kept_params == 2 * cfg.model.n_layer * shape.block_params  # bf16 policy
    states = kept.weights + kept.gradients + kept.optimizer + kept.fsdp_unsharded
    states += kept.fsdp_accum_grads
    step = kept.activations + max(kept.loss, kept.backward)
    assert kept.allocated == states + max(step, kept.adamw_step, kept.fsdp_kept_params)
    # the rows, and the CLI's setting reaching the plan
    config = str(REPO / "configs" / "gpt2_1558m.toml")
    common = ["--config", config, "--gpus", "8", "--gpu", "H100", "--micro-batch", "4"]
    for keep in ("false", "true"):
        c, req, _ = plan.parse([*common, f"--dist.fsdp_keep_unsharded={keep}"])
        r = plan.make_plan(c, req)
        assert r["chosen_gib"]["fsdp_accum_grads"] == mem.fsdp_accum_grads / plan.GIB
        assert r["memory_gib"]["ddp"]["without_checkpointing"]["fsdp_accum_grads"] == 0
        text = plan.format_plan(r)
        assert "FSDP accum. grads" in text
        assert ("FSDP kept params" in text) == (keep == "true")
    c, req, _ = plan.parse([*common[:-1], "128"])  # 8 GPUs x 128 x 1024: no accumulation
    text = plan.format_plan(plan.make_plan(c, req))
    assert "FSDP accum. grads" not in text and "FSDP un-sharded" in text


def test_foreach_adamw_step_transient_matches_a_measured_step_and_can_be_the_peak() -> None:
    """torch's foreach AdamW (optim.fused=false on CUDA) on the trainer's own parameter groups:
    the peak of a real optimizer.step() above what exists before it is the planner's
    adamw_step; with a tiny micro batch it exceeds the forward/backward's extra memory and
    becomes the step's peak, while the fused kernel adds nothing."""
    from gpt2repro.optim import param_groups

    cfg = _cfg(dict(n_layer=2, n_head=4, n_embd=128, vocab_size=1000),
               dict(seq_len=8, micro_batch_size=1, loss_chunk=8))  # fmt: skip
    cfg = replace(cfg, optim=replace(cfg.optim, fused=False))
    torch.manual_seed(0)
    info = DistInfo(device=torch.device("cpu"))
    raw = build_model(cfg, info).raw_model
    opt = torch.optim.AdamW(param_groups(raw, 0.1), lr=1e-3, foreach=True)
    for p in raw.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # creates the AdamW state
    _, held, peak = allocator_trace(opt.step)
    assert held == 0
    s, shape = _setup(cfg), plan.model_shape(cfg.model)
    assert not s.fused_adamw
    _close(plan.adamw_step_bytes(s, shape), peak, "foreach AdamW step")

    foreach = plan.memory_per_gpu(s, shape)
    fused = plan.memory_per_gpu(replace(s, fused_adamw=True), shape)
    assert fused.adamw_step == 0
    assert foreach.adamw_step > foreach.activations + max(foreach.loss, foreach.backward)
    states = foreach.weights + foreach.gradients + foreach.optimizer
    assert foreach.allocated == states + foreach.adamw_step > fused.allocated
    shown = ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "H100"]
    assert "foreach AdamW step +" not in plan.format_plan(plan_json(*shown))
    assert "foreach AdamW step +" in plan.format_plan(plan_json(*shown, "--optim.fused=false"))


def run_plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt2repro.plan", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def plan_json(*args: str) -> dict[str, Any]:
    """The --json plan of a command line, in this process."""
    return plan.make_plan(*plan.parse(list(args))[:2])


def test_llmc_124m_on_8xh100_at_140ms_per_step_takes_about_45_minutes() -> None:
    """llm.c's measured 124M step on 8xH100 (140 ms, docs/reference.md) for 10B tokens:
    10e9 / 524,288 = 19,073.5, so 19,074 steps (at least the tokens asked for) x 0.14 s = 44.5 min;
    as printed by the command, and as data."""
    args = [
        "--config",
        "configs/gpt2_124m.toml",
        "--gpus",
        "8",
        "--gpu",
        "H100",
        "--tokens",
        "10e9",
    ]
    r = run_plan(*args, "--step-ms", "140", "--price-per-gpu-hour", "2")
    assert r.returncode == 0, r.stderr
    assert "time: 44m30s of training (5.9 GPU-hours" in r.stdout, r.stdout
    assert "cost: $11.87 at $2 per GPU-hour" in r.stdout, r.stdout
    p = plan_json(*args, "--step-ms", "140", "--price-per-gpu-hour", "2")
    assert p["batch"]["steps"] == 19074 and p["batch"]["grad_accum"] == 1
    assert p["wall_seconds"] / 60 == pytest.approx(44.5, abs=0.1)
    assert p["gpu_hours"] == pytest.approx(8 * 44.5 / 60, abs=0.02)
    assert p["cost"] == pytest.approx(2 * p["gpu_hours"])
    assert p["fits"] and p["gpu"]["name"] == "H100 SXM"
    # the same rate as tokens/s gives the same time; the MFU it implies is llm.c's ~38%
    same = plan_json(*args, "--tokens-per-s", str(524288 / 0.14))
    assert same["wall_seconds"] == pytest.approx(p["wall_seconds"])
    assert same["speed"]["mfu"] == pytest.approx(0.38, abs=0.01)
    # and that MFU, given as such, gives it back
    again = plan_json(*args, "--mfu", str(same["speed"]["mfu"]))
    assert again["wall_seconds"] == pytest.approx(p["wall_seconds"])


def test_default_mfu_is_the_best_measured_else_a_stated_assumption(tmp_path: Path) -> None:
    cfg, req = plan.parse(["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "H100"])[
        :2
    ]
    assumed = plan.make_plan(cfg, req, results=tmp_path)["speed"]
    assert assumed["mfu"] == pytest.approx(plan.DEFAULT_MFU)
    assert assumed["source"].startswith("ASSUMED")
    model = {"n_layer": 12, "n_head": 12, "n_embd": 768}
    for name, device, mfu in [("a", "NVIDIA H100 80GB HBM3", 0.45), ("b", "NVIDIA H100 80GB HBM3", 0.52),
                              ("c", "NVIDIA H200", 0.60), ("d", "NVIDIA H100 PCIe", 0.70)]:  # fmt: skip
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"bench": "train", "device": device, "model": model, "mfu": mfu})
        )
    (tmp_path / "e.json").write_text(json.dumps({"bench": "train", "device": "NVIDIA H100 80GB HBM3",
                                                 "model": {**model, "n_layer": 24}, "mfu": 0.9}))  # fmt: skip
    measured = plan.make_plan(cfg, req, results=tmp_path)["speed"]
    assert measured["mfu"] == pytest.approx(0.52)  # same GPU (not H200, not PCIe) and same size
    assert measured["source"].endswith("b.json")


def test_an_oversized_run_says_by_how_much_and_what_fits() -> None:
    """774M at micro batch 32 with DDP on 40 GB cards: over, and each suggestion is a set of
    train.py overrides that fits when applied: parsed by training's own `load_config` (nothing
    left over that train.py would refuse) and planned again; and the planner's own form too."""
    args = ["--config", "configs/gpt2_774m.toml", "--gpus", "8", "--gpu", "A100 40GB",
            "--micro-batch", "32", "--strategy", "ddp"]  # fmt: skip
    cfg, req, _ = plan.parse(args)
    p = plan.make_plan(cfg, req)
    capacity = p["capacity_gib"]
    assert not p["fits"] and p["over_gib"] == pytest.approx(p["chosen_gib"]["total"] - capacity)
    assert p["alternatives"], "no suggestion"
    # what the user trains today, as train.py overrides
    trained = ["--config", "configs/gpt2_774m.toml", "--train.micro_batch_size=32",
               "--dist.strategy=ddp"]  # fmt: skip
    for alt in p["alternatives"]:
        fixed, rest = load_config(trained + alt["flags"].split())
        assert rest == [], f"train.py would refuse {rest} in {alt['flags']!r}"
        again = plan.make_plan(fixed, replace(req, strategy=fixed.dist.strategy))
        assert again["fits"], alt
        assert again["batch"]["micro_batch"] == alt["micro_batch"]
        assert again["batch"]["grad_accum"] == alt["grad_accum"]
        assert 8 * alt["micro_batch"] * 1024 * alt["grad_accum"] == 524288
        replanned = plan.make_plan(*plan.parse(args + alt["plan_flags"].split())[:2])
        assert replanned["fits"] and replanned["chosen_gib"] == again["chosen_gib"], alt
    text = plan.format_plan(p)
    assert (
        "DOES NOT FIT: ddp needs" in text and "fits with train.py --train.micro_batch_size=" in text
    )


@pytest.mark.parametrize(
    ("alias", "name"),
    [("h100", "H100 SXM"), ("H100-PCIe", "H100 PCIe"), ("h100 nvl", "H100 NVL"),
     ("H200", "H200 SXM"), ("h200_nvl", "H200 NVL"), ("a100 40gb", "A100 40GB"),
     ("A100-80GB", "A100 80GB"), ("l40s", "L40S"), ("4090", "RTX 4090"),
     ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
     ("NVIDIA H100 80GB HBM3", "H100 SXM"),
     ("b200", "B200"), ("NVIDIA B200", "B200"), ("GH200", "GH200"), ("gh200-480gb", "GH200"),
     ("NVIDIA GH200 480GB", "GH200"), ("gh200 120gb", "GH200 120GB"), ("a10g", "A10G"),
     ("NVIDIA A10G", "A10G"), ("l4", "L4"), ("NVIDIA L4", "L4"), ("rtx 6000 ada", "RTX 6000 Ada"),
     ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"), ("a6000", "RTX A6000"),
     ("NVIDIA RTX A6000", "RTX A6000"), ("v100 sxm2 32gb", "V100 SXM2 32GB"),
     ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB"), ("Tesla V100-PCIE-16GB", "V100 PCIe 16GB"),
     ("mi300x", "MI300X"), ("AMD Instinct MI300X", "MI300X")],
)  # fmt: skip
def test_gpu_names_and_aliases(alias: str, name: str) -> None:
    assert plan.find_gpu(alias).name == name


def test_every_known_gpu_has_memory_and_a_peak_and_is_in_the_docs() -> None:
    """Each GPU's row in docs/planning.md gives the same usable memory as the code, and it is
    below the datasheet's "NN GB" read as GiB: the planner compares with what torch can use."""
    docs = (REPO / "docs" / "planning.md").read_text()
    for gpu in GPUS:
        assert gpu.memory_gib > 0 and gpu.peak_flops > 0
        row = next((ln for ln in docs.splitlines() if ln.startswith(f"| {gpu.name} |")), None)
        assert row, f"{gpu.name} has no row (and source) in docs/planning.md"
        datasheet, usable, peak = row.split("|")[2:5]
        assert float(usable.split()[0]) == gpu.memory_gib, row
        assert gpu.memory_gib < float(datasheet.split()[0]), row
        assert float(peak.split()[0].replace(",", "")) * 1e12 == gpu.peak_flops, row
        assert (gpu.dtype == "float32") == ("float32" in peak), row  # a float32 peak is marked
    # torch's total_memory on a real H200 is 143,156 MiB (docs/planning.md, "Known GPUs")
    assert plan.find_gpu("H200").memory_gib == pytest.approx(143156 / 1024, abs=0.1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "8", "--gpu", "B300"], "--gpu 'B300' is not a GPU the planner knows; known: B200, GH200 120GB, GH200, H100 PCIe"),
        (["--gpus", "8", "--gpu", "B300"], "or describe it with --gpu-memory-gib GIB (what torch's total_memory reports, in GiB) and --peak-tflops TFLOPS"),
        (["--gpus", "8", "--gpu", "B300", "--peak-tflops", "2500"], "--gpu 'B300' is not a GPU the planner knows: describing it takes --gpu-memory-gib and --peak-tflops, add --gpu-memory-gib; known: B200"),
        (["--gpus", "8", "--gpu", "B300", "--gpu-memory-gib", "180"], "add --peak-tflops; known: B200"),
        (["--gpus", "8", "--gpu", "A100"], "--gpu A100 is ambiguous"),
        (["--gpus", "8", "--gpu", "V100"], "--gpu V100 is ambiguous: say 'V100 SXM2 16GB', 'V100 SXM2 32GB', 'V100 PCIe 16GB' or 'V100 PCIe 32GB'"),
        (["--gpus", "8", "--gpu", "H100", "--gpu-memory-gib", "0"], "--gpu-memory-gib must be a positive number, got 0.0"),
        (["--gpus", "8", "--gpu", "H100", "--gpu-memory-gib", "-80"], "--gpu-memory-gib must be a positive number, got -80.0"),
        (["--gpus", "8", "--gpu", "H100", "--gpu-memory-gib", "nan"], "--gpu-memory-gib must be a positive number, got nan"),
        (["--gpus", "8", "--gpu", "X1", "--gpu-memory-gib", "80", "--peak-tflops", "inf"], "--peak-tflops must be a positive number, got inf"),
        (["--gpus", "8", "--gpu", "H100", "--peak-tflops", "-1"], "--peak-tflops must be a positive number, got -1.0"),
        (["--gpus", "8", "--gpu", "H100", "--gpu-memory-gib", "big"], "argument --gpu-memory-gib: invalid float value: 'big'"),
        (["--gpus", "8", "--gpu", "H100", "--peak-dtype", "float32"], "--peak-dtype is the number format of --peak-tflops: give --peak-tflops too"),
        (["--gpus", "8", "--gpu", "H100", "--peak-tflops", "400", "--peak-dtype", "fp8"], "argument --peak-dtype: invalid choice: 'fp8'"),
        (["--gpus", "0", "--gpu", "H100"], "--gpus must be >= 1, got 0"),
        (["--gpus", "8", "--nodes", "0", "--gpu", "H100"], "--nodes must be >= 1"),
        (["--gpus", "8", "--gpu", "H100", "--micro-batch", "48"], "train.total_batch_tokens=524288 is not a multiple"),
        (["--gpus", "3", "--gpu", "H100"], "train.total_batch_tokens=524288 is not a multiple"),
        (["--gpus", "8", "--gpu", "H100", "--tokens", "0.5"], "--tokens is a count of tokens (10e9 = 10B), at least 1, got 0.5"),
        (["--gpus", "8", "--gpu", "H100", "--mfu", "40"], "--mfu is a fraction"),
        (["--gpus", "8", "--gpu", "H100", "--mfu", "0"], "--mfu must be a positive number"),
        (["--gpus", "8", "--gpu", "H100", "--price-per-gpu-hour", "-1"], "--price-per-gpu-hour must be a positive"),
        (["--gpus", "8", "--gpu", "H100", "--mfu", "0.4", "--step-ms", "100"], "not allowed with argument"),
        (["--gpus", "8", "--gpu", "H100", "--train.learning_rate=1"], "unknown key 'train.learning_rate'"),
        (["--gpus", "8", "--gpu", "H100", "--strategy", "zero3"], "--strategy: 'dist.strategy' must be one of ddp, fsdp, got 'zero3'"),
        (["--gpu", "H100"], "the following arguments are required: --gpus"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    with pytest.raises(UserError) as e:
        plan.parse(["--config", "configs/gpt2_124m.toml", *args])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_gpu_described_plans_as_the_table_row_with_the_same_figures() -> None:
    """--gpu NAME unknown with --gpu-memory-gib and --peak-tflops plans for NAME: the same memory,
    fit, speed and time as the table's H100 SXM when given its figures, and says where they came
    from."""
    base = ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--tokens", "10e9"]
    known = plan_json(*base, "--gpu", "H100")
    cfg, req, _ = plan.parse([*base, "--gpu", "Z100", "--gpu-memory-gib", "79.1",
                              "--peak-tflops", "989"])  # fmt: skip
    assert req.gpu.name == "Z100" and req.gpu.memory_gib == 79.1
    assert req.gpu.peak_flops == 989e12 and req.gpu.dtype == "bfloat16"
    described = plan.make_plan(cfg, req)
    for key in ("memory_gib", "chosen_gib", "capacity_gib", "fits", "speed", "wall_seconds"):
        assert described[key] == known[key], key
    assert described["gpu"] == {
        "name": "Z100", "memory_gib": 79.1, "peak_tflops": 989.0, "peak_dtype": "bfloat16",
        "in_table": False, "given": ["--gpu-memory-gib", "--peak-tflops"], "note": "",
    }  # fmt: skip
    assert known["gpu"]["in_table"] and known["gpu"]["given"] == []
    text = plan.format_plan(described)
    assert (
        "GPUs: 8 x Z100 (79.1 GiB usable, 989 TFLOP/s dense bf16) on 1 node(s); not in the "
        "table: described by --gpu-memory-gib and --peak-tflops" in text
    )
    assert "not in the table" not in plan.format_plan(known)
    # a smaller card by the same flags: the fit follows the memory given
    small = plan_json(*base, "--gpu", "B300", "--gpu-memory-gib", "16", "--peak-tflops", "2500")
    assert not small["fits"] and small["capacity_gib"] == 16 and small["alternatives"]
    # "A100" is ambiguous in the table, but with both figures it is a GPU described
    a100 = plan_json(*base, "--gpu", "A100", "--gpu-memory-gib", "39.5", "--peak-tflops", "312")
    assert a100["gpu"]["name"] == "A100" and not a100["gpu"]["in_table"]


def test_the_flags_replace_a_known_gpus_figures_and_the_header_says_so() -> None:
    base = ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "H100"]
    table = plan_json(*base)
    less = plan_json(*base, "--gpu-memory-gib", "20")
    assert less["gpu"]["name"] == "H100 SXM" and less["gpu"]["peak_tflops"] == 989
    assert less["capacity_gib"] == 20 and table["fits"] and not less["fits"]
    assert less["chosen_gib"] == table["chosen_gib"]  # the memory a run needs is the same
    assert "--gpu-memory-gib given, replacing the table's" in plan.format_plan(less)
    slower = plan_json(*base, "--peak-tflops", "494.5")  # half the peak, the same assumed MFU
    assert slower["speed"]["tokens_per_s"] == pytest.approx(table["speed"]["tokens_per_s"] / 2)
    assert slower["wall_seconds"] == pytest.approx(2 * table["wall_seconds"])
    assert slower["capacity_gib"] == table["capacity_gib"]
    assert "--peak-tflops given, replacing the table's" in plan.format_plan(slower)
    both = plan.format_plan(plan_json(*base, "--gpu-memory-gib", "70", "--peak-tflops", "900"))
    assert "8 x H100 SXM (70 GiB usable, 900 TFLOP/s dense bf16)" in both
    assert "--gpu-memory-gib and --peak-tflops given, replacing the table's" in both


def test_a_v100_plans_with_its_float32_peak_and_says_why() -> None:
    """Volta has no bf16 Tensor Cores: the V100 rows carry a float32 peak, and the plan says that
    its MFU is not comparable and bf16 autocast runs without Tensor Cores there."""
    base = ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "V100 SXM2 32GB"]
    p = plan_json(*base)
    assert p["gpu"]["peak_dtype"] == "float32" and p["gpu"]["peak_tflops"] == 15.7
    text = plan.format_plan(p)
    assert "8 x V100 SXM2 32GB (31.7 GiB usable, 15.7 TFLOP/s dense float32)" in text
    assert "note: Volta has no bf16 Tensor Cores" in text and "--train.dtype=float32" in text
    # a peak given in float32 keeps the note; a bf16 peak given (another card's) drops it
    fp32 = plan_json(*base, "--peak-tflops", "15", "--peak-dtype", "float32")
    assert fp32["gpu"]["peak_dtype"] == "float32" and fp32["gpu"]["note"] == p["gpu"]["note"]
    bf16 = plan_json(*base, "--peak-tflops", "100")
    assert bf16["gpu"]["peak_dtype"] == "bfloat16" and bf16["gpu"]["note"] == ""
    assert "note:" not in plan.format_plan(plan_json("--config", "configs/gpt2_124m.toml",
                                                     "--gpus", "8", "--gpu", "B200"))  # fmt: skip


def test_short_flags_are_the_config_keys() -> None:
    """--micro-batch and --strategy are train.micro_batch_size and dist.strategy spelled short:
    the same plan either way, and the two spellings with different values are refused."""
    base = ["--config", "configs/gpt2_774m.toml", "--gpus", "8", "--gpu", "A100 40GB"]
    short = plan.parse([*base, "--micro-batch", "16", "--strategy", "fsdp"])
    dotted = plan.parse([*base, "--train.micro_batch_size=16", "--dist.strategy", "fsdp"])
    assert short == dotted and short[0].train.micro_batch_size == 16
    assert short[1].strategy == "fsdp" and short[0].dist.strategy == "fsdp"
    with pytest.raises(UserError) as e:
        plan.parse([*base, "--micro-batch", "16", "--train.micro_batch_size=32"])
    assert str(e.value) == (
        "--micro-batch 16 and --train.micro_batch_size=32 set the same setting "
        "(train.micro_batch_size) to different values; give it once"
    )


def test_help_shows_defaults_and_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["--config", "configs/gpt2_124m.toml", "--help"]):
        with pytest.raises(SystemExit) as e:
            run_cli(plan.main, argv)
        out = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0
        assert (
            "--nodes K nodes (>= 1; default: 1)" in out and "--gpus N GPUs per node (>= 1)" in out
        )
        assert "--micro-batch MICRO_BATCH_SIZE, --train.micro_batch_size MICRO_BATCH_SIZE" in out
        assert "--strategy STRATEGY, --dist.strategy STRATEGY" in out
        assert "--optim.lr LR" in out and "default 0.0006" in out


def test_cli_errors_are_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run_plan("--config", str(tmp_path / "missing.toml"), "--gpus", "1", "--gpu", "H100")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "missing.toml does not exist" in r.stderr
    assert run_cli(plan.main, ["--gpus", "1", "--gpu", "H100"]) == 2
    assert "--config is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_cli(plan.main, ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "RTX 4090" in out
    assert (
        run_cli(
            plan.main,
            ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "h200", "--json"],
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["gpu"]["name"] == "H200 SXM"
    # a GPU not in the table, through the command line: planned under its own name
    described = ["--config", "configs/gpt2_124m.toml", "--gpus", "8", "--gpu", "A40",
                 "--gpu-memory-gib", "44.3", "--peak-tflops", "149.7"]  # fmt: skip
    assert run_cli(plan.main, [*described, "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)["gpu"]
    assert gpu["name"] == "A40" and gpu["memory_gib"] == 44.3 and gpu["peak_tflops"] == 149.7
    assert run_cli(plan.main, described[:-4]) == 2  # without the figures: refused in one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --gpu 'A40' is not a GPU the planner")
    assert "--gpu-memory-gib" in err and "--peak-tflops" in err and "L40S" in err


def _gpu_measurements() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted((REPO / "bench" / "results").glob("**/*.json")):
        res = plan.read_bench_result(path)
        if res and res.get("peak_mem_gib") and plan.gpu_for_device_name(str(res.get("device"))):
            out.append((path, res))
    return out


def test_planner_against_gpu_peak_memory_in_bench_results() -> None:
    """Each `bench train` result with a peak CUDA memory: the planner's allocated peak for the same
    model, micro batch, precision and loss path must be within 15% for an eager step; a compiled
    step may save less (inductor recomputes cheap activations), so it must lie between 50% and
    105% of the planner's eager estimate."""
    found = _gpu_measurements()
    if not found:
        pytest.skip(
            "no GPU measurement of peak memory in bench/results/ (run bench/gpu_check.sh on a GPU)"
        )
    for path, res in found:
        model = {k: v for k, v in res["model"].items() if v is not None}
        cfg = build_config({
            "model": model,
            "train": {"seq_len": res["seq_len"], "micro_batch_size": res["micro_batch"],
                      "total_batch_tokens": res["tokens_per_step"] // res["world_size"],
                      "dtype": "bfloat16" if "bfloat16" in res["dtype"] else "float32",
                      "loss_chunk": res.get("loss_chunk", 1024),
                      "activation_checkpointing": res.get("activation_checkpointing", False)},
        })  # fmt: skip
        s = plan.setup_for(cfg, world=res["world_size"], strategy=res["strategy"])
        planned = plan.memory_per_gpu(s, plan.model_shape(cfg.model)).allocated / plan.GIB
        ratio = res["peak_mem_gib"] / planned
        low, high = (0.5, 1.05) if res.get("compile") else (0.85, 1.15)
        assert low <= ratio <= high, (
            f"{path}: measured {res['peak_mem_gib']} GiB, planned {planned:.2f}"
        )


def test_muon_is_planned_under_ddp_only() -> None:
    """Training refuses Muon with FSDP, so the plan neither tables FSDP for it nor suggests it;
    the start-up memory check's advice does not name it either."""
    big = ["--model.n_layer=48", "--model.n_embd=1600", "--model.n_head=25"]
    args = ["--config", "configs/gpt2_124m_fast.toml", "--gpus", "8", "--gpu", "A10G", *big]
    p = plan_json(*args)
    assert list(p["memory_gib"]) == ["ddp"] and not p["fits"]
    text = plan.format_plan(p)
    assert "fsdp" not in text.replace("no fsdp columns", "") and "FSDP un-sharded" not in text
    assert "(no fsdp columns: optim.name=muon trains under DDP only)" in text
    assert "nothing fits, even at micro batch 1 with checkpointing (Muon: DDP only" in text
    fits = plan_json(*args[:6])  # the 124M fast recipe on A10Gs: fits by smaller micro batches
    assert fits["alternatives"] and all("fsdp" not in a["flags"] for a in fits["alternatives"])
    adamw = plan_json(*args, "--optim.name=adamw")  # the same model with AdamW: FSDP offered
    assert "fsdp" in adamw["memory_gib"]
    cfg = load_config(["--config", "configs/gpt2_124m_fast.toml", *big])[0]
    with pytest.raises(UserError, match=r"use GPUs with more memory \(optim.name=muon trains"):
        preflight.check_memory(cfg, 8, 16 * plan.GIB, "cuda:0")
