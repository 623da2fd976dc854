"""Plan a run before renting the GPUs: memory per GPU, whether it fits, wall time and cost.

    python -m gpt2repro.plan --config configs/gpt2_774m.toml --gpus 8 --gpu "A100 40GB"
    python -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 --gpu H100 \\
        --tokens 10e9 --step-ms 140 --price-per-gpu-hour 2.5 --json
    python -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 --gpu A40 \\
        --gpu-memory-gib 44.3 --peak-tflops 149.7

A GPU that is not in the table is described by its usable memory and dense peak (both flags);
the same flags replace a known GPU's figures, and the plan's header says so.

Everything is arithmetic on the config, with the trainer's own rules: the parameter count of the
real `GPT` (built on the meta device, so no memory), `hardware.flops_per_token` and the GPU table
`hardware.GPUS`, `config.grad_accum_steps` (a batch that training refuses is refused here too) and
`precision.autocast_dtype` (bf16 autocast on CUDA unless train.dtype says otherwise).

The memory model counts the bytes the training step holds at its peak, component by component
(docs/planning.md derives each term; tests/test_plan.py measures them on real CPU steps):
weights, gradients and AdamW state (fp32; sharded over the GPUs under FSDP), the activations
autograd saves for one micro-batch (with and without activation checkpointing), the language-model
head's loss buffers (one chunk of logits with train.loss_chunk > 0, the full logits with 0), and,
under FSDP, the parameters and gradients it un-shards for the block at hand, and with gradient
accumulation the un-sharded gradients it accumulates (and, with dist.fsdp_keep_unsharded, the
parameters it keeps gathered between micro-steps). That sum is what
`torch.cuda.max_memory_allocated` reports for the eager step (torch.compile usually saves fewer
activations, so it is an upper bound there); the CUDA context, NCCL and the caching allocator's
slack come on top as a stated overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from gpt2repro import precision
from gpt2repro.config import (
    AT_LEAST_1,
    DTYPES,
    POSITIVE,
    Config,
    ModelConfig,
    ShowDefaults,
    add_option,
    grad_accum_steps,
    parse_verb_args,
)
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.hardware import GPU, GPUS, flops_per_token, gpu_for_device_name
from gpt2repro.model import GPT
from gpt2repro.runs import format_duration

GIB = 2**30
DEFAULT_MFU = 0.40  # the assumption when bench/results/ has no measurement for this GPU and size
# What the caching allocator's tensors do not include (docs/planning.md, "Overhead"):
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces, compiled kernels
NCCL_GIB = 0.5  # NCCL's communicators and buffers, when there is more than one GPU
FRAGMENTATION = 0.10  # the caching allocator's reserved-but-unused share of what it hands out
RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"
# What a peak can count: the formats training computes in (train.dtype without "auto").
PEAK_DTYPES = tuple(d for d in DTYPES if d != "auto")


# --------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of the real GPT (padded vocabulary rows included, tied weights once)."""

    n_params: int  # everything: what the optimizer holds and the FLOP count uses
    block_params: int  # one transformer block (an FSDP unit)
    block_matmul_weights: int  # one block's nn.Linear weights (what autocast copies to bf16)
    root_params: int  # wte (= lm_head), wpe, ln_f: the root FSDP unit
    largest_group: int  # the larger AdamW parameter group (decayed >= 2-D or not: optim.py)


def model_shape(model_cfg: ModelConfig) -> ModelShape:
    """Count parameters on the meta device: the same module as training, no memory, no init."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    block = model.transformer.h[0]
    n_params = model.num_params(exclude_padding=False)
    block_params = sum(p.numel() for p in block.parameters())
    matmul = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    decay = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    return ModelShape(
        n_params=n_params,
        block_params=block_params,
        block_matmul_weights=matmul,
        root_params=n_params - model_cfg.n_layer * block_params,
        largest_group=max(decay, n_params - decay),
    )


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Setup:
    """What decides the memory of one GPU: the model, the micro batch and how the step runs."""

    model: ModelConfig
    micro_batch: int  # B, sequences per micro-step
    seq_len: int  # T
    world: int  # GPUs in the run
    strategy: str  # "ddp" or "fsdp"
    bf16: bool  # bf16 autocast (fp32 weights, gradients and AdamW state either way)
    fsdp_bf16_params: bool  # FSDP2 all-gathers bf16 parameters (dist.fsdp_mixed_precision)
    checkpointing: bool  # train.activation_checkpointing
    loss_chunk: int  # train.loss_chunk (0 = full logits)
    fused_adamw: bool  # fused kernel; else foreach, with a transient at the step (adamw_step)
    grad_accum: int = 1  # micro-steps per optimizer step (config.grad_accum_steps)
    fsdp_keep_unsharded: bool = False  # dist.fsdp_keep_unsharded: gathered between micro-steps

    @property
    def sharded(self) -> bool:
        """FSDP2 shards only across several processes (dist.shard is a no-op for one)."""
        return self.strategy == "fsdp" and self.world > 1

    @property
    def bf16_everywhere(self) -> bool:
        """FSDP2's bf16 policy computes the embeddings and residual stream in bf16 too."""
        return self.sharded and self.bf16 and self.fsdp_bf16_params

    @property
    def accumulates_unsharded(self) -> bool:
        """FSDP2 skips the reduce-scatter on all but the last micro-step (dist.grad_sync) and
        accumulates the whole model's gradients un-sharded meanwhile."""
        return self.sharded and self.grad_accum > 1


@dataclass(frozen=True)
class Memory:
    """Bytes one GPU holds at the step's peak, by component."""

    weights: float
    gradients: float
    optimizer: float  # AdamW exp_avg and exp_avg_sq
    activations: float  # saved for backward, one micro-batch
    backward: float  # in a block's backward: gradients in flight (+ its recompute, with ckpt)
    loss: float  # the head's input, its saved gradients and its live logits at their peak
    fsdp_unsharded: float  # FSDP2: all-gathered parameters and un-sharded gradients in flight
    fsdp_accum_grads: float  # FSDP2 with accumulation: every gradient un-sharded, fp32
    fsdp_kept_params: float  # dist.fsdp_keep_unsharded: every block's gathered parameters
    adamw_step: float  # foreach AdamW's transient at optimizer.step (0 for the fused kernel)
    overhead: float  # CUDA context, NCCL, allocator slack (not in max_memory_allocated)

    @property
    def allocated(self) -> float:
        """What `torch.cuda.max_memory_allocated` should report for the eager step. The head's
        peak (end of the forward) and a block's backward (later) never coincide: the larger of
        the two counts. The optimizer step comes after the backward has freed the activations:
        its transient is a peak of its own, on top of the states only. The blocks' parameters
        kept gathered between micro-steps are all alive only where the activations are not (end
        of a backward, start of the next forward, which frees each block's after its forward):
        a peak of their own too."""
        states = self.weights + self.gradients + self.optimizer + self.fsdp_unsharded
        states += self.fsdp_accum_grads
        step = self.activations + max(self.loss, self.backward)
        return states + max(step, self.adamw_step, self.fsdp_kept_params)

    @property
    def total(self) -> float:
        return self.allocated + self.overhead


def block_activation_bytes(s: Setup) -> float:
    """Bytes autograd saves in one block's forward (eager), per micro-batch.

    For N = B*T tokens, width C: the residual stream x and x + attn (r bytes each, inputs of the
    two LayerNorms, with their mean and rstd in fp32), the LayerNorm outputs (inputs of c_attn
    and c_fc), q/k/v, the attention output (c_proj's input, one storage), the MLP's c_fc output
    (GELU's input) and GELU's output (4C wide each): 2r + 14a bytes per token and channel, where
    a is the compute dtype's size; plus the attention's log-sum-exp (fp32 per token and head).

    The architecture switches (config.Arch): RMSNorm keeps one fp32 statistic per token (rstd)
    where LayerNorm keeps two; rotary or QK-norm hand the attention new q and k tensors (2C more,
    the c_attn output staying alive for v); QK-norm keeps its rstd per token and head for q and
    k, and under autocast the fp32 copies of q and k it normalises (2C at 4 bytes); ReLU^2 saves its ReLU output and the square (as GELU's input and output: the same bytes).
    Biases and an untied head change no activation.
    """
    B, T, C, nh = s.micro_batch, s.seq_len, s.model.n_embd, s.model.n_head
    N = B * T
    a = 2 if s.bf16 else 4
    r = 2 if s.bf16_everywhere else 4
    arch = s.model.resolved_arch
    stats = 4 if arch.rmsnorm else 8  # per token, for each of the block's two norms
    new_qk = 2 * a * C if arch.rotary or arch.qk_norm else 0
    qk_stats = 2 * 4 * nh + (2 * 4 * C if a == 2 else 0) if arch.qk_norm else 0
    return N * C * (2 * r + 14 * a) + N * (2 * stats + new_qk + qk_stats) + 4 * N * nh


def saved_activation_bytes(s: Setup, shape: ModelShape) -> float:
    """What autograd holds between the forward and the backward of one micro-batch, from the
    embeddings to ln_f: every block's activations, plus under autocast the bf16 copies of the
    blocks' matmul weights (cached for the backward); with activation checkpointing, each
    block's input only. Both: the token ids and positions (int64) of the embeddings, and ln_f's
    input with its statistics. With rotary: no positions looked up, and the cos and sin of the
    rotary angles (fp32 [T, head_dim / 2] each) shared by every block."""
    L, N, C, T = s.model.n_layer, s.micro_batch * s.seq_len, s.model.n_embd, s.seq_len
    r = 2 if s.bf16_everywhere else 4
    arch = s.model.resolved_arch
    if s.checkpointing:
        blocks: float = L * r * N * C
    else:
        blocks = L * (block_activation_bytes(s) + _weight_copies(s, shape))
    positions = 4 * T * (C // s.model.n_head) if arch.rotary else 8 * T
    ln_f_stats = 4 * N if arch.rmsnorm else 8 * N
    return blocks + 8 * N + positions + r * N * C + ln_f_stats


def backward_bytes(s: Setup, shape: ModelShape) -> float:
    """A block's backward at its widest, the MLP: the incoming gradient of the residual stream
    (fp32, unless FSDP's bf16 policy) and the gradients of GELU's output and input (4C wide, in
    the compute dtype). With checkpointing, plus the block's activations, recomputed."""
    N, C = s.micro_batch * s.seq_len, s.model.n_embd
    a = 2 if s.bf16 else 4
    r = 2 if s.bf16_everywhere else 4
    grads = (r + 8 * a) * N * C
    if s.checkpointing:
        return grads + block_activation_bytes(s) + _weight_copies(s, shape)
    return grads


def _weight_copies(s: Setup, shape: ModelShape) -> float:
    """bf16 copies of one block's matmul weights that autocast makes and the backward keeps."""
    return 2 * shape.block_matmul_weights if s.bf16 and not s.bf16_everywhere else 0


def loss_bytes(s: Setup) -> float:
    """The head's peak: its input h, the loss's saved gradients and the logits alive at once.

    Chunked (train.loss_chunk = n > 0, gpt2repro/loss.py): dL/dh ([N, C], h's dtype) and dL/dW
    ([V, C], fp32) are computed in the forward and kept; per chunk, the larger of two moments:
    the fp32 logits and their fp32 log-softmax (8 n V bytes), or, at the dL/dW matmul, the
    chunk's gradient in the matmuls' dtype, its dL/dh rows and one [V, C] product (added in place
    into dL/dW, so one at a time whatever the number of chunks). Under autocast one bf16 copy of
    W is held through the loop. Full logits (loss_chunk = 0): the [N, vocab] logits, their fp32
    log-softmax and its gradient, 12 N vocab bytes.
    The eager chunk body; the compiled one fuses the elementwise steps (no more than this). A
    soft-cap on the full-logits path (its fp32 tanh, kept for the backward) is not modelled.
    Measured on CPU (tests/test_plan.py); V is the padded vocabulary, vocab the real one.
    """
    N, C = s.micro_batch * s.seq_len, s.model.n_embd
    V, vocab = s.model.padded_vocab_size, s.model.vocab_size
    h = (2 if s.bf16_everywhere else 4) * N * C  # the head's input, [N, C]
    if s.loss_chunk <= 0:
        return h + 12 * N * vocab + (2 * V * C if s.bf16 and not s.bf16_everywhere else 0)
    n = min(s.loss_chunk, N)
    saved = h + 4 * V * C  # dL/dh (h's shape and dtype) and dL/dW (fp32)
    mm = 2 if s.bf16 else 4  # the matmuls' dtype
    # A logit soft-cap keeps tanh's output beside the capped logits and their log-softmax.
    logits = (12 if s.model.resolved_arch.logit_softcap > 0 else 8) * n * V
    chunk = max(logits, mm * (n * V + n * C + V * C))
    w_copy = 2 * V * C if s.bf16 and not s.bf16_everywhere else 0  # autocast's bf16 W
    return h + saved + w_copy + chunk


def adamw_step_bytes(s: Setup, shape: ModelShape) -> float:
    """The optimizer step's transient. torch's foreach AdamW (`optim.fused=false` on CUDA) takes
    the square root of exp_avg_sq into a new fp32 tensor list for a whole parameter group
    (torch._foreach_sqrt in torch/optim/adam.py), freed before the next group: 4 bytes per
    element of the larger group, of this GPU's shard. The fused kernel works in place: 0."""
    if s.fused_adamw:
        return 0.0
    return 4 * shape.largest_group / (s.world if s.sharded else 1)


def memory_per_gpu(s: Setup, shape: ModelShape) -> Memory:
    """The peak bytes of one GPU in a training step, by component (see the module docstring)."""
    P = shape.n_params
    shards = s.world if s.sharded else 1
    fsdp = 0.0
    if s.sharded:
        # The root unit (embeddings = head, ln_f) stays gathered through forward and backward;
        # blocks are gathered one at a time, the next one prefetched. Their gradients exist
        # un-sharded until reduce-scattered in fp32 (computed in the parameters' dtype first).
        p_bytes = 2 if s.bf16_everywhere else 4
        g_bytes = 4 + (2 if s.bf16_everywhere else 0)
        fsdp = (shape.root_params + 2 * shape.block_params) * (p_bytes + g_bytes)
    accum_grads = kept = 0.0
    if s.accumulates_unsharded:
        # FSDP2 upcasts each micro-step's un-sharded gradient to the reduce dtype (fp32) and adds
        # the next ones to it (FSDPParam.unsharded_accumulated_grad) until the last micro-step
        # reduce-scatters: 4 bytes per parameter on every GPU, whatever the world size.
        accum_grads = 4.0 * P
        if s.fsdp_keep_unsharded:
            kept = (2 if s.bf16_everywhere else 4) * s.model.n_layer * shape.block_params
    memory = Memory(
        weights=4 * P / shards,
        gradients=4 * P / shards,
        optimizer=8 * P / shards,
        activations=saved_activation_bytes(s, shape),
        backward=backward_bytes(s, shape),
        loss=loss_bytes(s),
        fsdp_unsharded=fsdp,
        fsdp_accum_grads=accum_grads,
        fsdp_kept_params=kept,
        adamw_step=adamw_step_bytes(s, shape),
        overhead=0.0,
    )
    context = CUDA_CONTEXT_GIB * GIB + (NCCL_GIB * GIB if s.world > 1 else 0)
    return replace(memory, overhead=context + FRAGMENTATION * memory.allocated)


# --------------------------------------------------------------------------- GPUs and speed


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower().removeprefix("nvidia").strip())


def find_gpu(name: str) -> GPU:
    """A GPUS row by its name, an alias or a CUDA device name, ignoring case, spaces and dashes."""
    gpu = lookup_gpu(name)
    if gpu is None:
        raise UserError(
            f"--gpu {name!r} is not a GPU the planner knows; {_KNOWN}; or describe it with "
            + _DESCRIBE
        )
    return gpu


def lookup_gpu(name: str) -> GPU | None:
    """The GPUS row of a name, an alias or a CUDA device name, or None when unknown; refuses a
    name that is the start of several rows' names ("A100": the memory decides the fit)."""
    wanted = _norm(name)
    for gpu in GPUS:
        if wanted in {_norm(n) for n in (gpu.name, *gpu.aliases)}:
            return gpu
    starts = [g.name for g in GPUS if len(wanted) >= 3 and _norm(g.name).startswith(wanted)]
    if len(starts) > 1:
        choices = ", ".join(f"'{n}'" for n in starts[:-1]) + f" or '{starts[-1]}'"
        raise UserError(
            f"--gpu {name} is ambiguous: say {choices} (each has its own memory and peak), or describe "
            "it with --gpu-memory-gib and --peak-tflops"
        )
    return gpu_for_device_name(name) if len(wanted) >= 2 else None


_KNOWN = "known: " + ", ".join(g.name for g in GPUS)
_DESCRIBE = (
    "--gpu-memory-gib GIB (what torch's total_memory reports, in GiB) and --peak-tflops TFLOPS "
    "(its dense bf16 Tensor Core peak)"
)


def gpu_for_request(
    name: str, memory_gib: float | None, peak_tflops: float | None, peak_dtype: str | None
) -> tuple[GPU, list[str]]:
    """The GPU to plan for and the flags that gave its figures (not the table): a known GPU,
    with --gpu-memory-gib / --peak-tflops (--peak-dtype) overriding its figures, or an unknown
    one described by both. Refuses an unknown GPU without both figures, and --peak-dtype without
    --peak-tflops (it says what that figure counts)."""
    if peak_dtype is not None and peak_tflops is None:
        raise UserError(
            "--peak-dtype is the number format of --peak-tflops: give --peak-tflops too"
        )
    described = memory_gib is not None and peak_tflops is not None
    try:
        known = lookup_gpu(name)
    except UserError:
        if not described:
            raise
        known = None  # "A100" with both figures: the figures decide, under the name given
    given = [
        f
        for f, v in (("--gpu-memory-gib", memory_gib), ("--peak-tflops", peak_tflops))
        if v is not None
    ]
    if known is None:
        if not given:
            find_gpu(name)  # raises the refusal of an unknown name alone
        if not described:
            missing = "--peak-tflops" if memory_gib is not None else "--gpu-memory-gib"
            raise UserError(
                f"--gpu {name!r} is not a GPU the planner knows: describing it takes "
                f"--gpu-memory-gib and --peak-tflops, add {missing}; {_KNOWN}"
            )
        assert memory_gib is not None and peak_tflops is not None  # described
        gpu = GPU(name, (), peak_tflops * 1e12, memory_gib, dtype=peak_dtype or "bfloat16")
        return gpu, given
    gpu = known
    if memory_gib is not None:
        gpu = replace(gpu, memory_gib=memory_gib)
    if peak_tflops is not None:
        # a peak given replaces the row's, and its dtype (bf16 unless --peak-dtype says), and so
        # its note, which was about the table's peak
        dtype = peak_dtype or "bfloat16"
        note = gpu.note if dtype == gpu.dtype else ""
        gpu = replace(gpu, peak_flops=peak_tflops * 1e12, dtype=dtype, note=note)
    return gpu, given


def measured_mfu(
    gpu: GPU, model_cfg: ModelConfig, results: Path = RESULTS_DIR
) -> tuple[float, str] | None:
    """The best MFU that `gpt2repro.bench train` recorded in results/ for this GPU and model
    size, with the file it came from; None when there is none."""
    best: tuple[float, str] | None = None
    for path in sorted(results.glob("**/*.json")):
        res = read_bench_result(path)
        if res is None or res.get("mfu") is None:
            continue
        found = gpu_for_device_name(str(res.get("device", "")))
        if (
            found is None or found.name != gpu.name
        ):  # by name: the table's figures may be overridden
            continue
        if not _same_model(res.get("model", {}), model_cfg):
            continue
        if best is None or res["mfu"] > best[0]:
            shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
            best = (float(res["mfu"]), str(shown))
    return best


def read_bench_result(path: Path) -> dict[str, Any] | None:
    """A `bench train` result file, or None for any other JSON."""
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return res if isinstance(res, dict) and res.get("bench") == "train" else None


def _same_model(model: dict[str, Any], model_cfg: ModelConfig) -> bool:
    keys = ("n_layer", "n_head", "n_embd")
    return all(model.get(k) == getattr(model_cfg, k) for k in keys)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Request:
    """The planner's command line, parsed."""

    gpu: GPU  # the table's row, with the figures given on the command line, or one described there
    gpus_per_node: int
    nodes: int
    strategy: str
    tokens: int | None  # None = train.max_steps x train.total_batch_tokens
    mfu: float | None
    tokens_per_s: float | None
    step_ms: float | None
    price_per_gpu_hour: float | None
    gpu_given: tuple[str, ...] = ()  # the flags that gave the GPU's figures (not the table)

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


def setup_for(cfg: Config, world: int, strategy: str) -> Setup:
    """The Setup of a config on `world` CUDA GPUs, by training's own precision rule."""
    bf16 = precision.autocast_dtype(cfg.train.dtype, torch.device("cuda")) is not None
    return Setup(
        model=cfg.model,
        micro_batch=cfg.train.micro_batch_size,
        seq_len=cfg.train.seq_len,
        world=world,
        strategy=strategy,
        bf16=bf16,
        fsdp_bf16_params=cfg.dist.fsdp_mixed_precision,
        checkpointing=cfg.train.activation_checkpointing,
        loss_chunk=cfg.train.loss_chunk,
        fused_adamw=cfg.optim.fused is not False,  # unset = fused on CUDA
        grad_accum=grad_accum(cfg, cfg.train.micro_batch_size, world),
        fsdp_keep_unsharded=cfg.dist.fsdp_keep_unsharded,
    )


def strategies(cfg: Config) -> tuple[str, ...]:
    """The data-parallel strategies training takes with this config: Muon runs under DDP only
    (config.py refuses it with FSDP), so the planner neither tables nor suggests FSDP for it."""
    return ("ddp",) if cfg.optim.name == "muon" else ("ddp", "fsdp")


def grad_accum(cfg: Config, micro_batch: int, world: int) -> int:
    """Training's rule (config.grad_accum_steps): refuses what training would refuse."""
    return grad_accum_steps(replace(cfg.train, micro_batch_size=micro_batch), world)


def fitting_alternatives(
    cfg: Config, s: Setup, shape: ModelShape, capacity: float
) -> list[dict[str, Any]]:
    """Settings that make the run fit, each a dict of training overrides (`flags`, as train.py
    takes them), accumulation and memory: the largest
    micro batch that fits with the switches as they are, with activation checkpointing, with FSDP
    (several GPUs), and with both; the fastest first (larger micro batch, no recomputation)."""
    options: list[dict[str, Any]] = []
    switches: list[dict[str, Any]] = [dict(checkpointing=s.checkpointing, strategy=s.strategy)]
    if not s.checkpointing:
        switches.append(dict(checkpointing=True, strategy=s.strategy))
    if s.strategy != "fsdp" and s.world > 1 and "fsdp" in strategies(cfg):
        switches.append(dict(checkpointing=s.checkpointing, strategy="fsdp"))
        if not s.checkpointing:
            switches.append(dict(checkpointing=True, strategy="fsdp"))
    for sw in switches:
        b = s.micro_batch
        while b >= 1:
            if _divides(cfg, b, s.world):
                trial = replace(s, micro_batch=b, grad_accum=grad_accum(cfg, b, s.world), **sw)
                mem = memory_per_gpu(trial, shape)
                if mem.total <= capacity:
                    # The training form (train.py's own overrides, pasted as is); the planner
                    # takes it too.
                    flags = []
                    if b != s.micro_batch:
                        flags.append(f"--train.micro_batch_size={b}")
                    if sw["strategy"] != s.strategy:
                        flags.append(f"--dist.strategy={sw['strategy']}")
                    if sw["checkpointing"] != s.checkpointing:
                        flags.append("--train.activation_checkpointing=true")
                    # The planner's own form, to plan again a command that spelled them
                    # --micro-batch and --strategy: a later alias replaces an earlier one,
                    # while the dotted key beside a different alias value is refused.
                    plan_flags = [f"--micro-batch {b}", f"--strategy {sw['strategy']}"]
                    if sw["checkpointing"] != s.checkpointing:
                        plan_flags.append("--train.activation_checkpointing=true")
                    options.append(
                        {
                            "flags": " ".join(flags),
                            "plan_flags": " ".join(plan_flags),
                            "micro_batch": b,
                            "grad_accum": grad_accum(cfg, b, s.world),
                            "total_gib": mem.total / GIB,
                            "recompute": sw["checkpointing"],
                        }
                    )
                    break
            b //= 2
    options.sort(key=lambda o: (o["recompute"], -o["micro_batch"]))
    return options


def _divides(cfg: Config, micro_batch: int, world: int) -> bool:
    return cfg.train.total_batch_tokens % (micro_batch * cfg.train.seq_len * world) == 0


def make_plan(cfg: Config, req: Request, results: Path = RESULTS_DIR) -> dict[str, Any]:
    """The whole plan as plain data (what --json prints)."""
    world = req.world
    accum = grad_accum(cfg, cfg.train.micro_batch_size, world)
    shape = model_shape(cfg.model)
    flops = flops_per_token(
        shape.n_params,
        cfg.model.n_layer,
        cfg.model.n_embd,
        cfg.train.seq_len,
        lookup_params=cfg.model.lookup_params,
    )
    batch = cfg.train.total_batch_tokens
    steps = cfg.train.max_steps if req.tokens is None else max(1, math.ceil(req.tokens / batch))
    tokens = steps * batch
    capacity = req.gpu.memory_gib * GIB

    memory = {}
    for strategy in strategies(cfg):
        s = setup_for(cfg, world, strategy)
        with_ckpt = memory_per_gpu(replace(s, checkpointing=True), shape)
        without = memory_per_gpu(replace(s, checkpointing=False), shape)
        memory[strategy] = {
            "with_checkpointing": _gib(with_ckpt),
            "without_checkpointing": _gib(without),
        }
    chosen = setup_for(cfg, world, req.strategy)
    mem = memory_per_gpu(chosen, shape)
    fits = mem.total <= capacity

    speed = _speed(req, cfg.model, flops, batch, results)
    seconds = tokens / speed["tokens_per_s"]
    gpu_hours = seconds / 3600 * world
    return {
        "config": {
            "n_layer": cfg.model.n_layer,
            "n_head": cfg.model.n_head,
            "n_embd": cfg.model.n_embd,
            "vocab": cfg.model.padded_vocab_size,
            "seq_len": cfg.train.seq_len,
            "dtype": "bfloat16 autocast" if chosen.bf16 else "float32",
            "loss_chunk": cfg.train.loss_chunk,
            "fused_adamw": chosen.fused_adamw,
        },
        "gpu": {
            "name": req.gpu.name,
            "memory_gib": req.gpu.memory_gib,
            "peak_tflops": req.gpu.peak_flops / 1e12,
            "peak_dtype": req.gpu.dtype,
            "in_table": bool(req.gpu.match),  # described on the command line: no device names
            "given": list(req.gpu_given),
            "note": req.gpu.note,
        },
        "gpus": world,
        "nodes": req.nodes,
        "n_params": shape.n_params,
        "flops_per_token": flops,
        "batch": {
            "tokens_per_step": batch,
            "micro_batch": cfg.train.micro_batch_size,
            "grad_accum": accum,
            "steps": steps,
            "tokens": tokens,
        },
        "strategy": req.strategy,
        "activation_checkpointing": chosen.checkpointing,
        "memory_gib": memory,
        "chosen_gib": _gib(mem),
        "capacity_gib": req.gpu.memory_gib,
        "fits": fits,
        "over_gib": None if fits else (mem.total - capacity) / GIB,
        "alternatives": [] if fits else fitting_alternatives(cfg, chosen, shape, capacity),
        "assumptions": {
            "cuda_context_gib": CUDA_CONTEXT_GIB,
            "nccl_gib": NCCL_GIB if world > 1 else 0.0,
            "fragmentation": FRAGMENTATION,
        },
        "speed": speed,
        "wall_seconds": seconds,
        "gpu_hours": gpu_hours,
        "cost": None if req.price_per_gpu_hour is None else gpu_hours * req.price_per_gpu_hour,
        "price_per_gpu_hour": req.price_per_gpu_hour,
    }


def _gib(m: Memory) -> dict[str, float]:
    out = {k: v / GIB for k, v in asdict(m).items()}
    out["allocated"] = m.allocated / GIB
    out["total"] = m.total / GIB
    return out


def _speed(
    req: Request, model_cfg: ModelConfig, flops: float, batch: int, results: Path
) -> dict[str, Any]:
    """Tokens/s of the whole run and where the figure comes from."""
    peak_total = req.gpu.peak_flops * req.world
    if req.tokens_per_s is not None:
        tok_s, source = req.tokens_per_s, "given (--tokens-per-s)"
    elif req.step_ms is not None:
        tok_s, source = batch / (req.step_ms / 1000), "given (--step-ms)"
    else:
        if req.mfu is not None:
            mfu, source = req.mfu, "given (--mfu)"
        else:
            found = measured_mfu(req.gpu, model_cfg, results)
            if found is not None:
                mfu, source = found[0], f"best measured, {found[1]}"
            else:
                mfu, source = (
                    DEFAULT_MFU,
                    "ASSUMED (no measurement in bench/results/ for this GPU and size)",
                )
        tok_s = mfu * peak_total / flops
    return {
        "tokens_per_s": tok_s,
        "mfu": tok_s * flops / peak_total,
        "step_s": batch / tok_s,
        "source": source,
    }


# --------------------------------------------------------------------------- output


_MEMORY_COLUMNS = [
    ("ddp", "without_checkpointing", "ddp"),
    ("ddp", "with_checkpointing", "ddp+ckpt"),
    ("fsdp", "without_checkpointing", "fsdp"),
    ("fsdp", "with_checkpointing", "fsdp+ckpt"),
]
_MEMORY_ROWS = [
    ("weights (fp32)", "weights"),
    ("gradients (fp32)", "gradients"),
    ("AdamW m, v (fp32)", "optimizer"),
    ("activations", "activations"),
    ("logits / loss *", "loss"),
    ("block backward *", "backward"),
    ("FSDP un-sharded", "fsdp_unsharded"),
    ("FSDP accum. grads", "fsdp_accum_grads"),
    ("FSDP kept params +", "fsdp_kept_params"),
    ("foreach AdamW step +", "adamw_step"),
    ("= allocated peak", "allocated"),
    ("+ overhead", "overhead"),
    ("= total", "total"),
]


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a human-readable page."""
    c, b, sp = p["config"], p["batch"], p["speed"]
    world, gpu = p["gpus"], p["gpu"]
    lines = [
        f"model: {p['n_params']:,} parameters ({c['n_layer']} layers, {c['n_head']} heads, width "
        f"{c['n_embd']}, vocab {c['vocab']}), {p['flops_per_token'] / 1e6:,.1f} MFLOP/token; "
        f"{c['dtype']}",
        f"GPUs: {world} x {gpu['name']} ({gpu['memory_gib']:g} GiB usable, {gpu['peak_tflops']:g} TFLOP/s "
        f"dense {_DTYPE_WORDS.get(gpu['peak_dtype'], gpu['peak_dtype'])}) on {p['nodes']} node(s)"
        + _gpu_source(gpu),
        *([f"  note: {gpu['note']}"] if gpu["note"] else []),
        f"batch: {b['tokens_per_step']:,} tokens/step = {b['micro_batch']} x {c['seq_len']} x "
        f"{world} GPUs x {b['grad_accum']} accumulation; {b['steps']:,} steps = "
        f"{b['tokens']:,} tokens",
        "",
        *_memory_table(p),
        *_fit_verdict(p),
        "",
        f"speed: {sp['tokens_per_s']:,.0f} tokens/s ({sp['tokens_per_s'] / world:,.0f} per GPU), "
        f"{sp['step_s'] * 1000:,.0f} ms/step, MFU {sp['mfu']:.1%} [{sp['source']}]",
        f"time: {format_duration(p['wall_seconds'])} of training ({p['gpu_hours']:,.1f} GPU-hours; "
        "evaluation and checkpoints not included)",
    ]
    if p["cost"] is not None:
        lines.append(f"cost: ${p['cost']:,.2f} at ${p['price_per_gpu_hour']:g} per GPU-hour")
    return "\n".join(lines)


_DTYPE_WORDS = {"bfloat16": "bf16", "float32": "float32"}


def _gpu_source(gpu: dict[str, Any]) -> str:
    """Where the GPU's figures come from, when not (only) from the table."""
    given = " and ".join(gpu["given"])
    if not gpu["in_table"]:
        return f"; not in the table: described by {given}"
    return f"; {given} given, replacing the table's" if given else ""


def _memory_table(p: dict[str, Any]) -> list[str]:
    """Memory per GPU by component (rows) for ddp/fsdp with and without checkpointing, and the
    notes on what the rows assume."""
    mem = p["memory_gib"]
    cols = [c for c in _MEMORY_COLUMNS if c[0] in mem]
    lines = [f"memory per GPU (GiB), micro batch {p['batch']['micro_batch']}:"]
    lines.append(f"  {'':<20}" + "".join(f"{title:>11}" for *_, title in cols))
    foreach = any(mem[st][ck]["adamw_step"] for st, ck, _ in cols)
    for label, key in _MEMORY_ROWS:
        if key == "adamw_step" and not foreach:
            continue  # fused AdamW: no transient, no row
        if key.startswith("fsdp") and "fsdp" not in mem:
            continue  # no FSDP column
        optional = key in ("fsdp_accum_grads", "fsdp_kept_params")
        if optional and not any(mem[st][ck][key] for st, ck, _ in cols):
            continue  # no accumulation under FSDP (or nothing kept): no row
        cells = "".join(f"{mem[st][ck][key]:>11.2f}" for st, ck, _ in cols)
        lines.append(f"  {label:<20}{cells}")
    a = p["assumptions"]
    lines.append(
        f"  overhead assumed: {a['cuda_context_gib']:g} GiB CUDA context"
        + (f" + {a['nccl_gib']:g} GiB NCCL" if a["nccl_gib"] else "")
        + f" + {a['fragmentation']:.0%} allocator slack"
    )
    lines.append(
        "  * not at the same time: the peak counts the larger; activations are eager-mode "
        "(torch.compile saves fewer)"
    )
    kept = any(mem[st][ck]["fsdp_kept_params"] for st, ck, _ in cols)
    if foreach or kept:
        lines.append(
            "  + not with the activations (after a backward): the peak counts the largest of "
            "these and activations + *"
        )
    if "fsdp" not in mem:
        lines.append("  (no fsdp columns: optim.name=muon trains under DDP only)")
    elif p["gpus"] == 1:
        lines.append("  (fsdp on one GPU shards nothing: the same as ddp)")
    return lines


def _fit_verdict(p: dict[str, Any]) -> list[str]:
    """Whether the chosen setting fits, and when it does not, by how much and what would."""
    chosen = f"{p['strategy']}" + (
        " + activation checkpointing" if p["activation_checkpointing"] else ""
    )
    total = p["chosen_gib"]["total"]
    if p["fits"]:
        return [
            f"fits: {chosen} needs {total:.1f} of {p['capacity_gib']:g} GiB "
            f"({p['capacity_gib'] - total:.1f} GiB to spare)"
        ]
    lines = [
        f"DOES NOT FIT: {chosen} needs {total:.1f} GiB, {p['over_gib']:.1f} GiB more than "
        f"the {p['capacity_gib']:g} GiB usable on one {p['gpu']['name']}"
    ]
    if not p["alternatives"] and "fsdp" not in p["memory_gib"]:
        lines.append(
            "  nothing fits, even at micro batch 1 with checkpointing (Muon: DDP only, no FSDP): "
            "use larger GPUs or a smaller model"
        )
    elif not p["alternatives"]:
        lines.append(
            "  nothing fits, even at micro batch 1 with checkpointing and FSDP: use more or larger GPUs"
        )
    for o in p["alternatives"]:
        recompute = (
            " (recomputes the forward: about a third more compute)" if o["recompute"] else ""
        )
        lines.append(
            f"  fits with train.py {o['flags']}: micro batch {o['micro_batch']}, accumulation "
            f"{o['grad_accum']}, {o['total_gib']:.1f} GiB{recompute}"
        )
    return lines


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see python -m gpt2repro.plan --help)")


EXAMPLES = """\
examples:
  python -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 --gpu H100
  python -m gpt2repro.plan --config configs/gpt2_774m.toml --gpus 8 --gpu "A100 40GB" \\
      --dist.strategy=fsdp
  python -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 --gpu H100 --tokens 10e9 \\
      --step-ms 140 --price-per-gpu-hour 2.5
  python -m gpt2repro.plan --config configs/gpt2_1558m.toml --gpus 8 --nodes 2 --gpu h200 --json
  python -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 --gpu A40 \\
      --gpu-memory-gib 44.3 --peak-tflops 149.7     # a GPU not in the table

Config keys are overridden as in training (--train.seq_len=2048); --micro-batch and --strategy
are the same settings as --train.micro_batch_size and --dist.strategy. Known GPUs: """


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m gpt2repro.plan",
        usage="%(prog)s --config FILE.toml --gpus N --gpu NAME [options] [--section.key=VALUE ...]",
        description="Memory per GPU, fit, wall time and cost of a training run, before renting it.",
        epilog=EXAMPLES + ", ".join(g.name for g in GPUS) + ".",
        formatter_class=ShowDefaults,
    )
    p.add_argument("--config", metavar="FILE", help="the run's TOML (required)")
    add_option(
        p, "--gpus", type=int, required=True, metavar="N", check=AT_LEAST_1, help="GPUs per node"
    )
    p.add_argument(
        "--gpu",
        required=True,
        metavar="NAME",
        help="GPU model, e.g. H100, 'H100 PCIe', 'A100 40GB', L40S; any other name with "
        "--gpu-memory-gib and --peak-tflops",
    )
    add_option(
        p,
        "--gpu-memory-gib",
        type=float,
        metavar="GIB",
        check=POSITIVE,
        help="memory a process can use on one GPU, in GiB (torch's total_memory / 2**30): "
        "describes an unknown GPU (with --peak-tflops) or replaces a known one's",
    )
    add_option(
        p,
        "--peak-tflops",
        type=float,
        metavar="TFLOPS",
        check=POSITIVE,
        help="dense Tensor Core peak of one GPU in TFLOP/s (half a 'with sparsity' figure), "
        "in --peak-dtype: describes an unknown GPU (with --gpu-memory-gib) or replaces a known one's",
    )
    p.add_argument(
        "--peak-dtype",
        choices=PEAK_DTYPES,
        help="the number format --peak-tflops counts (default: bfloat16)",
    )
    add_option(p, "--nodes", type=int, default=1, metavar="K", check=AT_LEAST_1, help="nodes")
    add_option(
        p,
        "--tokens",
        type=float,
        metavar="N",
        check=POSITIVE,
        help="training tokens (default: max_steps x batch)",
    )
    speed = p.add_mutually_exclusive_group()
    add_option(
        speed,
        "--mfu",
        type=float,
        metavar="F",
        check=POSITIVE,
        help="model FLOPs utilisation, a fraction (0.4 = 40%%)",
    )
    add_option(
        speed,
        "--tokens-per-s",
        type=float,
        metavar="R",
        check=POSITIVE,
        help="tokens/s of the whole run (all GPUs)",
    )
    add_option(
        speed,
        "--step-ms",
        type=float,
        metavar="MS",
        check=POSITIVE,
        help="milliseconds per optimizer step",
    )
    add_option(
        p,
        "--price-per-gpu-hour",
        type=float,
        metavar="P",
        check=POSITIVE,
        help="price of one GPU for one hour",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_debug_flag(p)
    return p


# Every config key, as train.py takes them; two with the planner's short spelling (the same
# settings: giving both with different values is an error).
_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
_ALIASES = {"--micro-batch": "train.micro_batch_size", "--strategy": "dist.strategy"}


def parse(argv: list[str]) -> tuple[Config, Request, bool]:
    """Config and the request; refuses bad input in one line each."""
    asked_help = "-h" in argv or "--help" in argv  # parse_verb_args prints it and exits
    if not asked_help and not any(a == "--config" or a.startswith("--config=") for a in argv):
        raise UserError("--config is required, e.g. --config configs/gpt2_124m.toml")
    cfg, args = parse_verb_args(
        argv, _parser(), sections=_SECTIONS, aliases=_ALIASES, config_file=True
    )
    if args.tokens is not None and args.tokens < 1:
        # fewer than one token would plan a 1-step run nobody asked for
        raise UserError(
            f"--tokens is a count of tokens (10e9 = 10B), at least 1, got {args.tokens}"
        )
    if args.mfu is not None and args.mfu > 1:
        raise UserError(f"--mfu is a fraction of the peak (0.4 = 40%), got {args.mfu}")
    gpu, given = gpu_for_request(args.gpu, args.gpu_memory_gib, args.peak_tflops, args.peak_dtype)
    req = Request(
        gpu=gpu,
        gpu_given=tuple(given),
        gpus_per_node=args.gpus,
        nodes=args.nodes,
        strategy=cfg.dist.strategy,
        tokens=None if args.tokens is None else math.ceil(args.tokens),
        mfu=args.mfu,
        tokens_per_s=args.tokens_per_s,
        step_ms=args.step_ms,
        price_per_gpu_hour=args.price_per_gpu_hour,
    )
    grad_accum(cfg, cfg.train.micro_batch_size, req.world)  # what training refuses, refused now
    return cfg, req, args.json


def main(argv: list[str]) -> int:
    cfg, req, as_json = parse(argv)
    plan = make_plan(cfg, req)
    print(json.dumps(plan, indent=2) if as_json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
