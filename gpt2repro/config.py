"""Typed run configuration: frozen dataclasses per section, TOML files, dotted CLI overrides.

Precedence: dataclass defaults < TOML file (`--config FILE`) < CLI (`--optim.lr=3e-4` or
`--optim.lr 3e-4`; a boolean alone, `--train.compile`, is true and `--no-train.compile` false).
Every problem (unknown key, wrong type, bad value) is collected and reported at once, one line
each, naming the key and the closest valid one. `--help` lists every field with its default.
One `--config` file (a second is refused, not merged), UTF-8 without a byte-order mark.

A field's allowed values (`choices`, a `Range`) are declared beside it in `_f`; `_validate` reads
them and adds the cross-field rules. Every verb (evaluate, sample, plan, ...) reads the settings it
shares with training through the same parser (`parse_verb_args`), spelled the same way.

Each component receives only its own section, never the whole run config.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2repro.errors import DEBUG_HELP, UserError, run_cli

# The compute precisions (precision.autocast_dtype reads them; train.dtype, evaluate's and the
# benchmarks' options offer them).
DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class Range:
    """The numbers a setting allows: `lo` <= v (`lo` < v when `lo_open`), v <= `hi` (< when
    `hi_open`); None = unbounded on that side. NaN is in no range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return bool(above and below)

    def describe(self, finite: bool = False) -> str:
        """'positive', '>= 1', 'in [0, 1)'; with `finite` (a float option), 'a positive number',
        'a finite number >= 0' and so on."""
        lo, hi = (_number(b) for b in (self.lo, self.hi))
        if self.hi is None and self.lo == 0 and self.lo_open:
            return "a positive number" if finite else "positive"
        if self.hi is None:
            text = f"{'>' if self.lo_open else '>='} {lo}"
        elif self.lo is None:
            text = f"{'<' if self.hi_open else '<='} {hi}"
        else:
            text = f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        return f"a finite number {text}" if finite else text


def _number(b: float | None) -> str:
    """A bound as written: an int in full (a seed's 2**63 - 1), a float short ('1e-06')."""
    if b is None:
        return ""
    return str(b) if isinstance(b, int) else f"{b:g}"


POSITIVE = Range(lo=0, lo_open=True)
NON_NEGATIVE = Range(lo=0)
AT_LEAST_1 = Range(lo=1)
BELOW_1 = Range(lo=0, hi=1, hi_open=True)  # [0, 1): Adam's betas
FRACTION = Range(lo=0, hi=1)  # [0, 1]
# A seed: numpy's generators take no negative seed, torch's none of 2**64 or more; training seeds
# its samples with seed + step, so the top half stays free.
SEED = Range(lo=0, hi=2**63 - 1)


def _f(
    default: Any, doc: str, choices: tuple[str, ...] | None = None, check: Range | None = None
) -> Any:
    """A dataclass field with a one-line doc (shown by --help) and its allowed values: `choices`
    for a string, `check` for a number. `_validate` enforces both, naming the key."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "check": check})


@dataclass(frozen=True)
class Arch:
    """The architecture switches, resolved (`ModelConfig.resolved_arch`): each off in GPT-2.
    docs/recipes.md gives each one's source and what it changes."""

    rotary: bool = False  # rotary position embeddings on q and k; no learned positions (wpe)
    rmsnorm: bool = False  # parameter-free RMSNorm in place of every LayerNorm
    qk_norm: bool = False  # parameter-free RMSNorm of each head's q and k before attention
    relu2: bool = False  # ReLU(x)^2 in the MLP in place of tanh-GELU
    untied_head: bool = False  # the output head is its own matrix, not wte
    zero_init: bool = False  # residual output projections (and an untied head) start at zero
    no_bias: bool = False  # no bias in any Linear or LayerNorm
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap); 0 = off


# model.arch -> the switches it turns on. `modern`: the set of the speedrun's records 2-9
# (modded-nanogpt, Oct-Nov 2024): rotary, QK-norm, ReLU^2, zero-init projections, RMSNorm, no
# biases, untied head, logit soft-cap 30.
ARCH_PRESETS: dict[str, Arch] = {
    "gpt2": Arch(),
    "modern": Arch(True, True, True, True, True, True, True, 30.0),
}
ARCH_SWITCHES = tuple(f.name for f in dataclasses.fields(Arch))


def _switch(doc: str) -> Any:
    return _f(None, f"{doc} (unset = model.arch's value)")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f(
        "gpt2",
        "architecture preset: gpt2 = exactly GPT-2; modern = rotary, rmsnorm, qk_norm, relu2, "
        "untied_head, zero_init, no_bias, logit_softcap 30; a switch set below overrides it",
        tuple(ARCH_PRESETS),
    )
    rotary: bool | None = _switch("rotary position embeddings on q, k; no learned positions")
    rmsnorm: bool | None = _switch("parameter-free RMSNorm in place of LayerNorm")
    qk_norm: bool | None = _switch("RMSNorm of each head's q and k before attention")
    relu2: bool | None = _switch("ReLU^2 MLP activation in place of tanh-GELU")
    untied_head: bool | None = _switch("output head apart from the token embedding")
    zero_init: bool | None = _switch("zero-initialised residual projections (and untied head)")
    no_bias: bool | None = _switch("no biases in Linear and LayerNorm layers")
    logit_softcap: float | None = _f(
        None,
        "logits = cap * tanh(logits / cap); 0 = off (unset = model.arch's value)",
        check=NON_NEGATIVE,
    )
    n_layer: int = _f(12, "number of transformer blocks", check=POSITIVE)
    n_head: int = _f(12, "attention heads per block", check=POSITIVE)
    n_embd: int = _f(768, "embedding / residual width C", check=POSITIVE)
    block_size: int = _f(
        1024, "maximum context length (learned positions, or rotary's range)", check=POSITIVE
    )
    vocab_size: int = _f(50257, "tokenizer vocabulary size (GPT-2: 50257)", check=POSITIVE)
    pad_vocab_multiple: int = _f(
        1,
        "pad the embedding/lm_head rows to a multiple of this (128 -> 50304); 1 = no padding",
        check=POSITIVE,
    )

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def resolved_arch(self) -> Arch:
        """The switches in effect: `arch`'s preset, each switch set explicitly replacing its
        value (so `arch = "modern"` with `qk_norm = false` is the modern set less QK-norm)."""
        given = {k: getattr(self, k) for k in ARCH_SWITCHES if getattr(self, k) is not None}
        return dataclasses.replace(ARCH_PRESETS.get(self.arch, Arch()), **given)

    @property
    def lookup_params(self) -> int:
        """Parameters only looked up, never in a matmul, that llm.c's 6N would count: an untied
        wte (hardware.flops_per_token leaves them out). 0 for GPT-2 (wte is also the head)."""
        return self.padded_vocab_size * self.n_embd if self.resolved_arch.untied_head else 0

    @property
    def is_gpt2(self) -> bool:
        """Exactly GPT-2's architecture (whatever the preset's name): no switch in effect."""
        return self.resolved_arch == Arch()

    @property
    def has_gpt2_modules(self) -> bool:
        """GPT-2's modules and function, whatever the starting values: no switch in effect but
        zero_init, which only changes the initialisation (such a model exports to HF GPT-2)."""
        return dataclasses.replace(self.resolved_arch, zero_init=False) == Arch()


@dataclass(frozen=True)
class DataConfig:
    dir: str = _f("data/edu_fineweb10B", "directory of *_train_*.bin / *_val_*.bin token shards")


# The prompt of training's samples and of `python -m gpt2repro.sample` (nanoGPT's and llm.c's).
SAMPLE_PROMPT = "Hello, I'm a language model,"

# Rows of the loss per chunk (gpt2repro/loss.py): the default of train.loss_chunk and of the model.
LOSS_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = _f(1024, "tokens per training sequence T", check=POSITIVE)
    micro_batch_size: int = _f(64, "sequences per micro-step per process B", check=POSITIVE)
    total_batch_tokens: int = _f(
        524288, "tokens per optimizer step, all processes together", check=POSITIVE
    )
    max_steps: int = _f(18865, "optimizer steps in the run", check=POSITIVE)
    seed: int = _f(1337, "seed for init, data order and sampling", check=SEED)
    compile: bool | None = _f(None, "torch.compile the model (unset = on for CUDA, off otherwise)")
    dtype: str = _f(
        "auto",
        "compute precision (auto = bfloat16 autocast on CUDA, float32 elsewhere)",
        DTYPES,
    )
    device: str = _f("auto", "cuda, mps, cpu or auto")
    activation_checkpointing: bool = _f(False, "recompute each block in backward to save memory")
    loss_chunk: int = _f(
        LOSS_CHUNK_ROWS,
        "rows per chunk of the fused linear + cross-entropy (the [B*T, vocab] logits are never "
        "held at once); 0 = full logits then cross-entropy",
        check=NON_NEGATIVE,
    )
    attention_backend: str = _f(
        "auto",
        "SDPA kernel tried first, in training and evaluation (auto = torch's order: flash, "
        "efficient, math, cudnn); a named one falls back to torch's order where it cannot run "
        "(a mask, a CPU); math = the exact reference only",
        ("auto", "flash", "cudnn", "efficient", "math"),
    )
    compile_mode: str = _f(
        "default",
        "torch.compile mode (max-autotune-no-cudagraphs: Triton autotuning, a longer first "
        "compile; CUDA-graph modes are not offered: FSDP/DDP hooks and eager eval break them)",
        ("default", "max-autotune-no-cudagraphs"),
    )


OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f(
        "adamw",
        "adamw = AdamW on every parameter; muon = torch.optim.Muon on the blocks' 2-D matrices "
        "and AdamW on the embeddings, the head, norms and biases",
        OPTIMIZERS,
    )
    lr: float = _f(
        6e-4,
        "peak learning rate (AdamW; with muon: the norms' gains and the biases)",
        check=POSITIVE,
    )
    embed_lr: float = _f(
        0.0,
        "peak AdamW learning rate of the embeddings: wte when the head is untied (a tied wte "
        "is the head: head_lr), and GPT-2's learned positions wpe; 0 = optim.lr",
        check=NON_NEGATIVE,
    )
    head_lr: float = _f(
        0.0,
        "peak AdamW learning rate of the output head (lm_head, or wte when tied); 0 = optim.lr",
        check=NON_NEGATIVE,
    )
    muon_lr: float = _f(
        0.02, "muon only: peak learning rate of the 2-D block matrices", check=POSITIVE
    )
    muon_momentum: float = _f(0.95, "muon only: Nesterov momentum of Muon", check=BELOW_1)
    min_lr: float = _f(0.0, "learning rate at the end of the decay", check=NON_NEGATIVE)
    warmup_steps: int = _f(700, "linear warmup steps from 0 to lr", check=NON_NEGATIVE)
    schedule: str = _f("cosine", "decay after warmup", ("cosine", "linear", "wsd", "constant"))
    decay_frac: float = _f(
        0.2, "wsd only: fraction of steps spent in the final linear decay", check=FRACTION
    )
    weight_decay: float = _f(
        0.1, "weight decay (AdamW's, and Muon's) on >= 2-D parameters only", check=NON_NEGATIVE
    )
    beta1: float = _f(0.9, "AdamW beta1", check=BELOW_1)
    beta2: float = _f(0.95, "AdamW beta2", check=BELOW_1)
    eps: float = _f(1e-8, "AdamW epsilon", check=POSITIVE)
    grad_clip: float = _f(1.0, "clip the global grad norm to this; 0 = off", check=NON_NEGATIVE)
    fused: bool | None = _f(None, "fused AdamW kernel (unset = on for CUDA)")


@dataclass(frozen=True)
class EvalConfig:
    every: int = _f(
        250, "validation loss every N steps (and at the last step); 0 = never", check=NON_NEGATIVE
    )
    val_tokens: int = _f(
        10485760,
        "validation token budget: the first N tokens of the val shards",
        check=NON_NEGATIVE,
    )
    hellaswag_every: int = _f(
        0, "HellaSwag every N steps (and at the last step); 0 = never", check=NON_NEGATIVE
    )
    hellaswag_file: str = _f("", "path to hellaswag_val.jsonl (data_prep/hellaswag.py)")
    hellaswag_limit: int = _f(0, "score only the first N examples; 0 = all", check=NON_NEGATIVE)
    batch_examples: int = _f(
        16, "HellaSwag examples per forward pass (4 rows each)", check=POSITIVE
    )
    batch_size: int = _f(
        0, "validation sequences per forward pass; 0 = train.micro_batch_size", check=NON_NEGATIVE
    )
    core_every: int = _f(
        0,
        "CORE (DCLM's 22 in-context tasks, docs/evaluation.md) on a capped subset every N steps, "
        "the full set at the last step; 0 = never",
        check=NON_NEGATIVE,
    )
    core_max_per_task: int = _f(
        500,
        "in-loop CORE scores the first N examples of each task in its seeded order (the same "
        "subset at every evaluation and after a resume); 0 = all; at least the most shots + 1",
        check=NON_NEGATIVE,
    )
    core_bundle: str = _f(
        "data/core/eval_bundle", "the CORE eval bundle directory (python data_prep/core.py)"
    )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = _f(
        1000,
        "write a checkpoint every N steps (and at the end); 0 = only at the end",
        check=NON_NEGATIVE,
    )
    keep_last: int = _f(3, "keep the newest N checkpoints; 0 = keep all", check=NON_NEGATIVE)
    resume: str = _f(
        "auto",
        "auto = continue from the newest valid checkpoint; never = refuse a run dir that has "
        "checkpoints; restart = move this run dir's checkpoints and metrics aside and start over; "
        "or the path of a checkpoint to continue from",
    )
    allow_changes: str = _f(
        "",
        "comma-separated settings a resumed run may change from its checkpoint's "
        "(e.g. train.max_steps,optim.lr); other changes to optim.*, data.dir, seq_len, batch, "
        "max_steps or seed are refused",
    )


@dataclass(frozen=True)
class LogConfig:
    every: int = _f(10, "console/metrics line every N steps", check=POSITIVE)
    wandb_mode: str = _f("disabled", "wandb mode", ("online", "offline", "disabled"))
    wandb_project: str = _f("gpt2repro", "wandb project")
    wandb_run_name: str = _f("", "wandb run name (default: the run directory's name)")
    wandb_init_timeout_s: float = _f(
        30.0,
        "seconds wandb online may take to start; beyond that the run logs offline (wandb sync)",
        check=POSITIVE,
    )
    sample_every: int = _f(0, "print a text sample every N steps; 0 = never")
    sample_tokens: int = _f(64, "tokens per sample", check=POSITIVE)
    sample_prompt: str = _f(SAMPLE_PROMPT, "prompt for samples")
    report: bool = _f(
        True, "rewrite RUN_DIR/report.html after each evaluation: a live dashboard (docs/report.md)"
    )
    tensorboard: bool = _f(
        False, "also write TensorBoard event files to RUN_DIR/tensorboard/ (docs/wandb.md)"
    )


@dataclass(frozen=True)
class GuardConfig:
    nonfinite: str = _f(
        "skip", "a NaN/Inf loss or grad norm: skip the update or stop the run", ("skip", "stop")
    )
    max_skipped: int = _f(100, "stop the run after this many skipped updates", check=POSITIVE)
    spike_zscore: float = _f(
        0.0,
        "skip an update whose loss is this many std devs above the running mean; 0 = off",
        check=NON_NEGATIVE,
    )
    spike_window: int = _f(
        100, "steps in the running loss statistics for the spike guard", check=POSITIVE
    )


@dataclass(frozen=True)
class RunConfig:
    dir: str = _f("runs/gpt2_124m", "run directory: checkpoints, metrics.jsonl, logs")
    name: str = _f("", "run name (default: the run directory's name)")


@dataclass(frozen=True)
class DistConfig:
    strategy: str = _f("ddp", "data parallelism: ddp, or fsdp (FSDP2 fully_shard)", ("ddp", "fsdp"))
    backend: str = _f("auto", "process-group backend: auto (nccl on CUDA, gloo on CPU), nccl, gloo")
    fsdp_mixed_precision: bool = _f(
        True,
        "fsdp with bfloat16 compute (train.dtype auto on CUDA, or bfloat16): all-gather bf16 "
        "parameters and reduce gradients in float32 (MixedPrecisionPolicy); false = float32 "
        "all-gather",
    )
    # >= 1: smaller buckets crash DDP under torch.compile (an AssertionError in DDPOptimizer,
    # seen on 2 gloo ranks), and more, smaller all-reduces only add latency.
    bucket_cap_mb: float = _f(
        25.0, "ddp: gradient all-reduce bucket size in MiB (torch's default 25)", check=AT_LEAST_1
    )
    grad_compression: str = _f(
        "none",
        "ddp: compress gradients for the all-reduce (bf16 = torch's bf16_compress_hook: half the "
        "bytes; gradients are sent and summed in bfloat16)",
        ("none", "bf16"),
    )
    fsdp_keep_unsharded: bool = _f(
        False,
        "fsdp with grad accumulation: keep the all-gathered parameters between micro-steps "
        "(one all-gather per micro-step fewer; costs the whole model's unsharded parameters per "
        "GPU, see plan)",
    )
    init_timeout_s: float = _f(
        600.0,
        "seconds a process waits for all its peers to join the process group (torchrun, SLURM) "
        "before it gives up in one line; collectives keep torch's 30-minute timeout",
        check=POSITIVE,
    )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# --------------------------------------------------------------------------- introspection


def grad_accum_steps(train_cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step: total_batch_tokens / (B x T x world_size), which must be
    a whole number (the optimization is then the same on 1 GPU and on 16)."""
    tokens_per_micro = train_cfg.micro_batch_size * train_cfg.seq_len * world_size
    if train_cfg.total_batch_tokens % tokens_per_micro != 0:
        raise UserError(
            f"train.total_batch_tokens={train_cfg.total_batch_tokens} is not a multiple of "
            f"micro_batch_size x seq_len x world_size = {train_cfg.micro_batch_size} x "
            f"{train_cfg.seq_len} x {world_size} = {tokens_per_micro}; change "
            "train.total_batch_tokens or train.micro_batch_size"
        )
    return train_cfg.total_batch_tokens // tokens_per_micro


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _type_name(tp: Any) -> str:
    if _is_optional(tp):
        return f"{_base_type(tp).__name__} (or unset)"
    return tp.__name__


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    if _is_optional(tp):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.0)
    return match[0] if match else options[0]


# Names people bring from other trainers (nanoGPT, HF, llm.c) -> ours.
_ALIASES = {
    "learning_rate": "optim.lr",
    "max_lr": "optim.lr",
    "lr_min": "optim.min_lr",
    "min_learning_rate": "optim.min_lr",
    "warmup": "optim.warmup_steps",
    "warmup_iters": "optim.warmup_steps",
    "batch_size": "train.micro_batch_size",
    "total_batch_size": "train.total_batch_tokens",
    "block_size": "model.block_size",
    "max_iters": "train.max_steps",
    "num_iterations": "train.max_steps",
    "sequence_length": "train.seq_len",
    "grad_clip_norm": "optim.grad_clip",
    "out_dir": "run.dir",
    "data_dir": "data.dir",
}


def _suggest_key(section: str, key: str, sections: dict[str, type]) -> str:
    """The most likely meant `section.key` for an unknown key: a known alias, the same key in
    another section, else the closest key of this section."""
    if key in _ALIASES:
        return _ALIASES[key]
    elsewhere = [s for s, cls in sections.items() if key in _field_types(cls)]
    if elsewhere:
        return f"{elsewhere[0]}.{key}"
    names = list(_field_types(sections[section]))
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if match:
        return f"{section}.{match[0]}"
    return f"{section}.{{{','.join(names)}}}"


# --------------------------------------------------------------------------- coercion

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNSET = {"auto", "none", "unset", ""}


def _coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert `value` to `tp`; raise ValueError with the expected type on failure."""
    base = _base_type(tp)
    unset = value is None or (isinstance(value, str) and value.strip().lower() in _UNSET)
    if _is_optional(tp) and unset:
        return None
    if from_cli and isinstance(value, str):
        s = value.strip()
        if base is bool:
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError
        if base is int:
            v = float(s.replace("_", "")) if any(c in s for c in "eE.") else int(s.replace("_", ""))
            if isinstance(v, float):
                if not v.is_integer():
                    raise ValueError
                v = int(v)
            return v
        if base is float:
            v = float(s.replace("_", ""))
            if not math.isfinite(v):
                raise ValueError
            return v
        if base is str:
            return value
        raise ValueError
    # TOML values arrive typed already.
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if base is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise ValueError


# --------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at `path`: it must be a file, in UTF-8 without a byte-order mark (TOML's
    encoding; a BOM would otherwise read as a confusing 'invalid statement' at line 1)."""
    if path.is_dir():
        raise UserError(
            f"config file {path} is a directory, not a file; pass --config with a path to a .toml"
        )
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"config file {path} {what} (pass --config with a path to a .toml)")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise UserError(
            f"config file {path} starts with a UTF-8 byte-order mark; save it as UTF-8 without "
            "a BOM (TOML allows none)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"config file {path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def _key_type(key: str) -> Any | None:
    """The declared type of dotted `key`, or None when there is no such key."""
    section, _, name = key.partition(".")
    cls = _sections().get(section)
    return _field_types(cls).get(name) if cls is not None else None


def _is_bool_key(key: str) -> bool:
    tp = _key_type(key)
    return tp is not None and _base_type(tp) is bool


# (dotted key, raw value, the option as the user typed it, e.g. "--device cpu")
_Given = tuple[str, str, str]


def _split_cli(
    argv: list[str], aliases: dict[str, str] | None = None
) -> tuple[str | None, list[_Given], list[str]]:
    """Pull `--config FILE` and the settings out of argv; return (file, settings, the rest).

    A setting is `--section.key=VALUE` or `--section.key VALUE`, or a short flag of `aliases`
    (e.g. {"--device": "train.device"}) spelled the same ways. A boolean alone means true
    (`--train.compile`), `--no-train.compile` false; `--train.compile false` still reads the word.
    """
    aliases = aliases or {}
    config_path: str | None = None
    given: list[_Given] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name == "--config":
            if not eq and i + 1 >= len(argv):
                raise UserError("--config needs a file path, e.g. --config configs/gpt2_124m.toml")
            path = inline if eq else argv[i + 1]
            if config_path is not None:  # refused, not merged: which file wins would be a guess
                raise UserError(
                    f"--config is given twice ({config_path}, {path}); give one file and put "
                    "the other's settings on the command line as --section.key=VALUE"
                )
            config_path = path
            i += 1 if eq else 2
            continue
        key, negated = _setting_named(name, aliases)
        if key is None:
            rest.append(arg)
            i += 1
            continue
        shown = arg
        if negated:
            if eq:
                raise UserError(f"{name} takes no value; write --{key}={inline} instead")
            value = "false"
        elif eq:
            value = inline
        elif _is_bool_key(key):
            # A bare boolean is true; a word after it is its value only if it reads as one, so
            # `--train.compile data/dir` leaves the positional argument alone.
            words = _TRUE | _FALSE | (_UNSET if _is_optional(_key_type(key)) else set())
            value = "true"
            if i + 1 < len(argv) and argv[i + 1].strip().lower() in words:
                value, shown = argv[i + 1], f"{arg} {argv[i + 1]}"
                i += 1
        else:
            # The next argument is the value, unless it is another option: then this one
            # has none (negative numbers like -1 are values).
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise UserError(f"{arg} needs a value, e.g. {arg}=VALUE")
            value, shown = argv[i + 1], f"{arg} {argv[i + 1]}"
            i += 1
        given.append((key, value, shown))
        i += 1
    return config_path, given, rest


def _setting_named(option: str, aliases: dict[str, str]) -> tuple[str | None, bool]:
    """(dotted key, negated) for an option spelling a setting, e.g. `--no-device` -> ("train.
    device", True) when --device is an alias of a boolean; (None, False) for anything else."""
    if not option.startswith("--"):
        return None, False
    body = option[2:]
    if option in aliases:
        return aliases[option], False
    if "." in body and not body.startswith("no-"):
        return body, False
    if body.startswith("no-"):
        key = aliases.get(f"--{body[3:]}") or (body[3:] if "." in body else None)
        if key is None:
            return None, False
        if _key_type(key) is not None and not _is_bool_key(key):
            raise UserError(
                f"{option}: '{key}' is {_type_name(_key_type(key))}, not a boolean; "
                f"write --{key}=VALUE"
            )
        return key, True
    return None, False


def build_config(
    toml: dict[str, Any] | None = None,
    overrides: list[tuple[str, str]] | None = None,
    source: str = "config",
) -> Config:
    """Defaults < `toml` (nested dict) < `overrides` ([("optim.lr", "3e-4")]); validated."""
    given = [(key, raw, f"--{key}") for key, raw in overrides or []]
    cfg, problems = _build(toml or {}, given, source)
    if problems:
        raise UserError(_join(problems))
    return cfg


def _build(
    toml: dict[str, Any],
    given: list[_Given],
    source: str,
    allowed: tuple[str, ...] | None = None,
    prog: str = "",
) -> tuple[Config, list[str]]:
    """The config and its problems, one line each. `allowed`: the only keys the command line may
    set (a verb's settings; None = all, as in train.py), `prog` names the verb."""
    sections = _sections()
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    problems: list[str] = []

    def put(section: str, key: str, raw: Any, where: str, from_cli: bool) -> None:
        if section not in sections:
            problems.append(
                f"{where}: unknown section '{section}' (did you mean '{_closest(section, list(sections))}'?)"
            )
            return
        ftypes = _field_types(sections[section])
        if key not in ftypes:
            guess = _suggest_key(section, key, sections)
            problems.append(f"{where}: unknown key '{section}.{key}' (did you mean '{guess}'?)")
            return
        if from_cli and allowed is not None and f"{section}.{key}" not in allowed:
            takes = f"its settings: {', '.join(allowed)}" if allowed else "it takes none"
            problems.append(f"{where}: {prog} does not use '{section}.{key}' ({takes})")
            return
        try:
            values[section][key] = _coerce(raw, ftypes[key], from_cli)
        except (ValueError, TypeError):
            problems.append(
                f"{where}: '{section}.{key}' must be {_type_name(ftypes[key])}, got {raw!r}"
            )

    for section, table in toml.items():
        if not isinstance(table, dict):
            problems.append(
                f"{source}: top-level key '{section}' must be a [section] table "
                f"(sections: {', '.join(sections)})"
            )
            continue
        for key, raw in table.items():
            put(section, key, raw, source, from_cli=False)
    for dotted, raw, shown in given:
        section, _, key = dotted.partition(".")
        put(section, key, raw, _option(shown), from_cli=True)

    built: dict[str, Any] = {}
    for section, cls in sections.items():
        built[section] = cls(**values[section])
    cfg = Config(**built)
    # A rule broken by a value given under a short flag names the flag too: "--strategy: ...".
    flags = {k: flag for k, _, shown in given if (flag := _option(shown)) != f"--{k}"}
    for problem in _validate(cfg):
        key = problem[1:].partition("'")[0] if problem.startswith("'") else ""
        problems.append(f"{flags[key]}: {problem}" if key in flags else problem)
    return cfg, problems


def _option(shown: str) -> str:
    """The option of a setting as typed: "--device cpu" -> "--device"."""
    return shown.split(" ")[0].split("=")[0]


def _join(problems: list[str]) -> str:
    """One problem as its line; several as a count and an indented line each."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} config problems:\n  " + "\n  ".join(problems)


def _field_problem(f: dataclasses.Field, v: Any) -> str | None:
    """What is wrong with value `v` of field `f` by the rules declared beside it, or None."""
    choices, check = f.metadata.get("choices"), f.metadata.get("check")
    if choices and v not in choices:
        return f"must be one of {', '.join(choices)}, got {v!r}"
    if isinstance(v, float) and not math.isfinite(v):  # TOML can spell nan and inf; the CLI not
        return f"must be a finite number, got {v}"
    if check is not None and v is not None and v not in check:
        return f"must be {check.describe()}, got {v}"
    return None


def _validate(cfg: Config) -> list[str]:
    """Check each field's declared rules, then the cross-field ones; one line per problem."""
    problems: list[str] = []
    for sname, cls in _sections().items():
        section = getattr(cfg, sname)
        for f in dataclasses.fields(cls):
            problem = _field_problem(f, getattr(section, f.name))
            if problem:
                problems.append(f"'{sname}.{f.name}' {problem}")
    model_cfg, train_cfg, optim_cfg = cfg.model, cfg.train, cfg.optim
    if model_cfg.n_head > 0 and model_cfg.n_embd % model_cfg.n_head != 0:
        n_head, n_embd = model_cfg.n_head, model_cfg.n_embd
        problems.append(
            f"'model.n_embd' ({n_embd}) must be divisible by 'model.n_head' ({n_head}); "
            f"e.g. n_embd={n_head * max(1, round(n_embd / n_head))}"
        )
    if train_cfg.seq_len > model_cfg.block_size:
        problems.append(
            f"'train.seq_len' ({train_cfg.seq_len}) exceeds 'model.block_size' "
            f"({model_cfg.block_size}); lower train.seq_len or raise model.block_size"
        )
    if not cfg.run.dir.strip():
        problems.append("'run.dir' is empty; set --run.dir=runs/NAME (a directory for this run)")
    head_dim = model_cfg.n_embd // max(1, model_cfg.n_head)
    if model_cfg.resolved_arch.rotary and head_dim % 2:
        problems.append(
            f"'model.rotary' needs an even head size, got n_embd/n_head = {head_dim}; change "
            "model.n_head or model.n_embd, or set --model.rotary=false"
        )
    if optim_cfg.name == "muon" and cfg.dist.strategy != "ddp":
        problems.append(
            f"'optim.name' muon is not offered with dist.strategy={cfg.dist.strategy}: Muon "
            "orthogonalises whole matrices and FSDP2 holds row shards; set --dist.strategy=ddp"
        )
    if optim_cfg.min_lr > optim_cfg.lr:
        problems.append(f"'optim.min_lr' ({optim_cfg.min_lr}) is above 'optim.lr' ({optim_cfg.lr})")
    if cfg.dist.grad_compression != "none" and cfg.dist.strategy != "ddp":
        problems.append(
            f"'dist.grad_compression' ({cfg.dist.grad_compression}) applies to dist.strategy=ddp "
            f"only, not {cfg.dist.strategy}; remove it or set --dist.strategy=ddp"
        )
    return problems


def load_config(argv: list[str]) -> tuple[Config, list[str]]:
    """Parse `--config FILE` and dotted overrides from argv; return (config, unparsed args)."""
    config_path, given, rest = _split_cli(argv)
    toml: dict[str, Any] = {}
    source = "config"
    if config_path is not None:
        toml = _read_toml(Path(config_path))
        source = config_path
    cfg, problems = _build(toml, given, source)
    if problems:
        raise UserError(_join(problems))
    return cfg, rest


def reject_unknown_args(rest: list[str]) -> None:
    """The one error for command-line arguments that `load_config` handed back unparsed.

    Entry points that take nothing but config options (train.py, `python -m gpt2repro.config`)
    call it with `load_config`'s second result.
    """
    if rest:
        raise UserError(
            f"unknown argument {rest[0]!r}: options look like --section.key=value (see --help)"
        )


# --------------------------------------------------------------------------- verbs' command lines


def parse_verb_args(
    argv: list[str],
    parser: argparse.ArgumentParser,
    *,
    keys: tuple[str, ...] = (),
    sections: tuple[str, ...] = (),
    aliases: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    config_file: bool = False,
) -> tuple[Config, argparse.Namespace]:
    """A verb's command line: the config settings it shares with training, read by train.py's
    parser and spelled as there (`--train.device=cpu`), and its own flags, read by `parser`.

    keys / sections: the settings the verb reads (a dotted key, or every key of a section); any
    other key on the command line is refused, an unknown one naming the closest. aliases: short
    flags that are the same setting, e.g. {"--device": "train.device"}: listed beside the key in
    --help, and giving both with different values is an error. defaults: the verb's own defaults
    for its settings (below --config's TOML and the command line). config_file: whether
    `--config FILE.toml` is taken. Flags added with `add_option(..., check=...)` are checked too.
    Returns (config, namespace); `namespace.config_flags` maps each setting to the option that
    spelled it (for messages such as dist.pick_device's), `namespace.config_given` holds the
    settings the command line gave.
    """
    aliases = aliases or {}
    allowed = tuple(
        dict.fromkeys(
            list(keys) + [f"{s}.{k}" for s in sections for k in _field_types(_sections()[s])]
        )
    )
    assert set(aliases.values()) <= set(allowed), (aliases, allowed)
    _add_settings_help(parser, allowed, aliases, defaults or {}, config_file)
    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])  # prints and exits, whatever else is on the line
    config_path, given, rest = _split_cli(argv, aliases)
    if config_path is not None and not config_file:
        raise UserError(
            f"--config: {parser.prog} takes no config file; give its settings on the command "
            "line (see --help)"
        )
    args = parser.parse_args(rest)
    toml: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        section, _, name = key.partition(".")
        toml.setdefault(section, {})[name] = value
    source = "config"
    if config_path is not None:
        for section, table in _read_toml(Path(config_path)).items():
            merged = {**toml.get(section, {}), **table} if isinstance(table, dict) else table
            toml[section] = merged
        source = config_path
    problems = _conflicts(given) + _option_problems(parser, args)
    cfg, config_problems = _build(toml, given, source, allowed, parser.prog)
    problems += config_problems
    if problems:
        raise UserError(_join(problems))
    reverse = {key: flag for flag, key in aliases.items()}
    args.config_flags = {key: reverse.get(key, f"--{key}") for key in allowed}
    for key, _, shown in given:
        args.config_flags[key] = _option(shown)
    args.config_given = {key for key, _, _ in given}  # the settings the command line gave
    return cfg, args


def _conflicts(given: list[_Given]) -> list[str]:
    """One line per setting given both as an alias and as its key, with different values."""
    problems = []
    for key in dict.fromkeys(k for k, _, _ in given):
        last: dict[bool, tuple[str, str]] = {}  # spelled as the dotted key? -> (raw, shown)
        for k, raw, shown in given:
            if k == key:
                last[_option(shown) in (f"--{key}", f"--no-{key}")] = (raw, shown)
        if len(last) < 2:
            continue
        try:
            values = {_coerce(raw, _key_type(key), from_cli=True) for raw, _ in last.values()}
        except (ValueError, TypeError):
            continue  # the type error is reported on its own
        if len(values) > 1:
            short, dotted = last[False][1], last[True][1]
            problems.append(
                f"{short} and {dotted} set the same setting ({key}) to different values; give it once"
            )
    return problems


def add_option(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    *flags: str,
    check: Range | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """`parser.add_argument(*flags, **kwargs)` plus the values it allows, declared beside it:
    `parse_verb_args` refuses any other in one line naming the flag (unset = not checked)."""
    action = parser.add_argument(*flags, **kwargs)
    action.check = check  # type: ignore[attr-defined]  # read by _option_problems
    return action


def _option_problems(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    problems = []
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        check = getattr(action, "check", None)
        v = getattr(args, action.dest, None)
        if check is None or v is None:
            continue
        finite = isinstance(v, float)
        if v not in check or (finite and not math.isfinite(v)):
            problems.append(f"{action.option_strings[0]} must be {check.describe(finite)}, got {v}")
    return problems


class ShowDefaults(argparse.RawDescriptionHelpFormatter):
    """--help with each option's default (descriptions and epilogs kept as written)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, _SettingHelp) or not action.option_strings:
            return text  # a setting's line carries its default already
        notes = [check.describe()] if (check := getattr(action, "check", None)) else []
        unset = action.default is None or action.default is False  # a flag that is off
        if not unset and action.default != argparse.SUPPRESS and "%(default)" not in text:
            notes.append("default: %(default)r")
        return f"{text} ({'; '.join(notes)})" if notes else text


class _SettingHelp(argparse.Action):
    """The --help entry of a config setting. Its value is read before argparse runs (by
    `_split_cli`, as in train.py), so argparse reaches this only for an abbreviated option."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        raise UserError(
            f"{option_string}: write the option in full ({', '.join(self.option_strings)})"
        )


def _add_settings_help(
    parser: argparse.ArgumentParser,
    allowed: tuple[str, ...],
    aliases: dict[str, str],
    defaults: dict[str, Any],
    config_file: bool,
) -> None:
    """List the verb's config settings in its --help, each with type, default and aliases."""
    if not allowed and not config_file:
        return
    group = parser.add_argument_group(
        "settings shared with training (spelled as in train.py; a boolean alone is true, "
        "--no-KEY false)"
    )
    if config_file and "--config" not in parser._option_string_actions:
        group.add_argument(
            "--config",
            metavar="FILE",
            action=_SettingHelp,
            default=argparse.SUPPRESS,
            help="a run's TOML (below the command line)",
        )
    for key in allowed:
        short = [flag for flag, k in aliases.items() if k == key]
        flags = [*short, f"--{key}"]
        if _is_bool_key(key):
            flags += [f"--no-{flag[2:]}" for flag in flags]
        group.add_argument(
            *flags,
            action=_SettingHelp,
            nargs=0 if _is_bool_key(key) else None,
            metavar=None if _is_bool_key(key) else key.partition(".")[2].upper(),
            default=argparse.SUPPRESS,
            dest=f"setting:{key}",
            help=_key_help(key, defaults.get(key, _field(key).default)).replace("%", "%%"),
        )


def _field(key: str) -> dataclasses.Field:
    section, _, name = key.partition(".")
    return next(f for f in dataclasses.fields(_sections()[section]) if f.name == name)


def _key_help(key: str, default: Any) -> str:
    """'doc (a | b) (type, default x)': one setting's line in every --help."""
    f = _field(key)
    doc = f.metadata.get("doc", "")
    if f.metadata.get("choices"):
        doc += f" ({' | '.join(f.metadata['choices'])})"
    shown = "unset" if default is None else repr(default)
    notes = [_type_name(_key_type(key)), f"default {shown}"]
    if f.metadata.get("check"):
        notes.insert(1, f.metadata["check"].describe())
    return f"{doc} ({', '.join(notes)})"


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The resolved config as a nested dict (stored with every run and checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. read back from a checkpoint)."""
    return build_config(
        {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in d.items()}
    )


def to_toml(cfg: Config) -> str:
    """Render the resolved config as TOML (unset optional fields are left out)."""
    lines: list[str] = []
    for sname, section in to_dict(cfg).items():
        lines.append(f"[{sname}]")
        for key, v in section.items():
            if v is None:
                continue
            if isinstance(v, bool):
                lines.append(f"{key} = {'true' if v else 'false'}")
            elif isinstance(v, str):
                lines.append(f"{key} = {json.dumps(v, ensure_ascii=False)}")  # a valid TOML string
            else:
                lines.append(f"{key} = {v!r}")
        lines.append("")
    return "\n".join(lines)


def help_text(prog: str = "train.py") -> str:
    """Every field with its type, default and one-line doc."""
    out = [
        f"usage: {prog} [--config FILE.toml] [--section.key=VALUE ...]",
        "",
        "Precedence: defaults < --config TOML < command-line overrides. A boolean alone is",
        "true (--train.compile), --no-KEY false (--no-train.compile).",
    ]
    for sname, cls in _sections().items():
        out.append("")
        out.append(f"[{sname}]")
        for f in dataclasses.fields(cls):
            key = f"{sname}.{f.name}"
            out.append(f"  --{key}  {_key_help(key, f.default)}")
    out.append(f"\n  --debug  {DEBUG_HELP}")
    return "\n".join(out)


def _cli(argv: list[str]) -> int:
    """`python -m gpt2repro.config [--config F] [overrides] [--get section.key | --toml]`."""
    get = None
    if "--get" in argv:
        i = argv.index("--get")
        if i + 1 >= len(argv):
            raise UserError("--get needs a key, e.g. --get run.dir")
        get = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if "--help" in argv or "-h" in argv:
        print(help_text("python -m gpt2repro.config"))
        return 0
    argv = [a for a in argv if a != "--toml"]  # printing the TOML is the default
    cfg, rest = load_config(argv)
    reject_unknown_args(rest)
    if get is not None:
        section, _, key = get.partition(".")
        d = to_dict(cfg)
        if section not in d or key not in d[section]:
            raise UserError(f"--get {get}: no such key (see --help)")
        print(d[section][key])
    else:
        print(to_toml(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_cli))
