"""Typed run configuration: frozen dataclasses per section, TOML files, dotted CLI overrides.

Precedence: dataclass defaults < TOML file (`--config FILE`) < CLI (`--optim.lr=3e-4` or
`--optim.lr 3e-4`). Every problem (unknown key, wrong type, bad value) is collected and reported
at once, one line each, naming the key and the closest valid one. `--help` lists every field.

Each component receives only its own section.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2repro.errors import DEBUG_HELP, UserError


def _f(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with a one-line doc (shown by --help) and optional allowed values."""
    return field(default=default, metadata={"doc": doc, "choices": choices})


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = _f(12, "number of transformer blocks")
    n_head: int = _f(12, "attention heads per block")
    n_embd: int = _f(768, "embedding / residual width C")
    block_size: int = _f(1024, "maximum context length (learned positions)")
    vocab_size: int = _f(50257, "tokenizer vocabulary size (GPT-2: 50257)")
    pad_vocab_multiple: int = _f(
        1, "pad the embedding/lm_head rows to a multiple of this (128 -> 50304); 1 = no padding"
    )

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return ((self.vocab_size + m - 1) // m) * m


@dataclass(frozen=True)
class DataConfig:
    dir: str = _f("data/edu_fineweb10B", "directory of *_train_*.bin / *_val_*.bin token shards")


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = _f(1024, "tokens per training sequence T")
    micro_batch_size: int = _f(64, "sequences per micro-step per process B")
    total_batch_tokens: int = _f(524288, "tokens per optimizer step, all processes together")
    max_steps: int = _f(18865, "optimizer steps in the run")
    seed: int = _f(1337, "seed for init, data order and sampling")
    compile: bool | None = _f(None, "torch.compile the model (unset = on for CUDA, off otherwise)")
    dtype: str = _f(
        "auto",
        "compute precision (auto = bfloat16 autocast on CUDA, float32 elsewhere)",
        ("auto", "bfloat16", "float32"),
    )
    device: str = _f("auto", "cuda, mps, cpu or auto")
    activation_checkpointing: bool = _f(False, "recompute each block in backward to save memory")
    loss_chunk: int = _f(
        1024,
        "rows per chunk of the fused linear + cross-entropy (the [B*T, vocab] logits are never "
        "held at once); 0 = full logits then cross-entropy",
    )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(6e-4, "peak learning rate")
    min_lr: float = _f(0.0, "learning rate at the end of the decay")
    warmup_steps: int = _f(700, "linear warmup steps from 0 to lr")
    schedule: str = _f("cosine", "decay after warmup", ("cosine", "linear", "wsd", "constant"))
    decay_frac: float = _f(0.2, "wsd only: fraction of steps spent in the final linear decay")
    weight_decay: float = _f(0.1, "AdamW weight decay on >= 2-D parameters only")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "clip the global grad norm to this; 0 = off")
    fused: bool | None = _f(None, "fused AdamW kernel (unset = on for CUDA)")


@dataclass(frozen=True)
class EvalConfig:
    every: int = _f(250, "validation loss every N steps (and at the last step); 0 = never")
    val_tokens: int = _f(10485760, "validation token budget: the first N tokens of the val shards")
    hellaswag_every: int = _f(0, "HellaSwag every N steps (and at the last step); 0 = never")
    hellaswag_file: str = _f("", "path to hellaswag_val.jsonl (data_prep/hellaswag.py)")
    hellaswag_limit: int = _f(0, "score only the first N examples; 0 = all")
    batch_examples: int = _f(16, "HellaSwag examples per forward pass (4 rows each)")
    batch_size: int = _f(0, "validation sequences per forward pass; 0 = train.micro_batch_size")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = _f(1000, "write a checkpoint every N steps (and at the end); 0 = only at the end")
    keep_last: int = _f(3, "keep the newest N checkpoints; 0 = keep all")
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
    every: int = _f(10, "console/metrics line every N steps")
    wandb_mode: str = _f("disabled", "wandb mode", ("online", "offline", "disabled"))
    wandb_project: str = _f("gpt2repro", "wandb project")
    wandb_run_name: str = _f("", "wandb run name (default: the run directory's name)")
    sample_every: int = _f(0, "print a text sample every N steps; 0 = never")
    sample_tokens: int = _f(64, "tokens per sample")
    sample_prompt: str = _f("Hello, I'm a language model,", "prompt for samples")
    report: bool = _f(
        True, "rewrite RUN_DIR/report.html after each evaluation: a live dashboard (docs/report.md)"
    )


@dataclass(frozen=True)
class GuardConfig:
    nonfinite: str = _f(
        "skip", "a NaN/Inf loss or grad norm: skip the update or stop the run", ("skip", "stop")
    )
    max_skipped: int = _f(100, "stop the run after this many skipped updates")
    spike_zscore: float = _f(
        0.0, "skip an update whose loss is this many std devs above the running mean; 0 = off"
    )
    spike_window: int = _f(100, "steps in the running loss statistics for the spike guard")


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
    bucket_cap_mb: float = _f(
        25.0, "ddp: gradient all-reduce bucket size in MiB (torch's default 25)"
    )
    grad_compression: str = _f(
        "none",
        "ddp: compress gradients for the all-reduce (bf16 = torch's bf16_compress_hook: half the "
        "bytes; gradients are sent and summed in bfloat16)",
        ("none", "bf16"),
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
    if not path.is_file():
        raise UserError(f"config file {path} does not exist (pass --config with a path to a .toml)")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def _split_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Pull `--config FILE` and `--section.key[=]value` pairs out of argv; return the rest."""
    config_path: str | None = None
    overrides: list[tuple[str, str]] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config_path = arg.split("=", 1)[1]
            else:
                if i + 1 >= len(argv):
                    raise UserError(
                        "--config needs a file path, e.g. --config configs/gpt2_124m.toml"
                    )
                config_path = argv[i + 1]
                i += 1
        elif arg.startswith("--") and "." in arg.split("=", 1)[0]:
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            else:
                # The next argument is the value, unless it is another option: then this one
                # has none (negative numbers like -1 are values).
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError(f"{arg} needs a value, e.g. {arg}=VALUE")
                value = argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return config_path, overrides, rest


def build_config(
    toml: dict[str, Any] | None = None,
    overrides: list[tuple[str, str]] | None = None,
    source: str = "config",
) -> Config:
    """Defaults < `toml` (nested dict) < `overrides` ([("optim.lr", "3e-4")]); validated."""
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
        try:
            values[section][key] = _coerce(raw, ftypes[key], from_cli)
        except (ValueError, TypeError):
            problems.append(
                f"{where}: '{section}.{key}' must be {_type_name(ftypes[key])}, got {raw!r}"
            )

    for section, table in (toml or {}).items():
        if not isinstance(table, dict):
            problems.append(
                f"{source}: top-level key '{section}' must be a [section] table "
                f"(sections: {', '.join(sections)})"
            )
            continue
        for key, raw in table.items():
            put(section, key, raw, source, from_cli=False)
    for dotted, raw in overrides or []:
        section, _, key = dotted.partition(".")
        put(section, key, raw, f"--{dotted}", from_cli=True)

    built: dict[str, Any] = {}
    for section, cls in sections.items():
        built[section] = cls(**values[section])
    cfg = Config(**built)
    problems.extend(_validate(cfg))
    if problems:
        raise UserError("\n".join(problems) if len(problems) == 1 else _join(problems))
    return cfg


def _join(problems: list[str]) -> str:
    return f"{len(problems)} config problems:\n  " + "\n  ".join(problems)


# Range rules, by dotted key (cross-field rules are in _validate).
_POSITIVE = (
    "model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.vocab_size",
    "model.pad_vocab_multiple", "train.seq_len", "train.micro_batch_size",
    "train.total_batch_tokens", "train.max_steps", "optim.lr", "optim.eps",
    "eval.batch_examples", "guard.max_skipped", "guard.spike_window", "log.every",
    "log.sample_tokens", "dist.bucket_cap_mb",
)  # fmt: skip
_NON_NEGATIVE = (
    "optim.warmup_steps", "eval.every", "eval.val_tokens", "eval.hellaswag_every",
    "checkpoint.every", "checkpoint.keep_last", "eval.hellaswag_limit", "optim.min_lr",
    "train.loss_chunk", "eval.batch_size",
    "optim.weight_decay", "optim.grad_clip", "guard.spike_zscore",
)  # fmt: skip
_BETWEEN_0_AND_1 = ("optim.beta1", "optim.beta2")  # 0 <= x < 1


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _validate(cfg: Config) -> list[str]:
    """Check allowed values and cross-field rules; return one line per problem."""
    problems: list[str] = []
    for sname, cls in _sections().items():
        section = getattr(cfg, sname)
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            v = getattr(section, f.name)
            if choices and v not in choices:
                problems.append(
                    f"'{sname}.{f.name}' must be one of {', '.join(choices)}, got {v!r}"
                )
    problems += [
        f"'{key}' must be positive, got {_value(cfg, key)}"
        for key in _POSITIVE
        if _value(cfg, key) <= 0
    ]
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
    if optim_cfg.min_lr > optim_cfg.lr:
        problems.append(f"'optim.min_lr' ({optim_cfg.min_lr}) is above 'optim.lr' ({optim_cfg.lr})")
    if cfg.dist.grad_compression != "none" and cfg.dist.strategy != "ddp":
        problems.append(
            f"'dist.grad_compression' ({cfg.dist.grad_compression}) applies to dist.strategy=ddp "
            f"only, not {cfg.dist.strategy}; remove it or set --dist.strategy=ddp"
        )
    if not 0.0 <= optim_cfg.decay_frac <= 1.0:
        problems.append(f"'optim.decay_frac' must be in [0, 1], got {optim_cfg.decay_frac}")
    problems += [
        f"'{key}' must be >= 0, got {_value(cfg, key)}"
        for key in _NON_NEGATIVE
        if _value(cfg, key) < 0
    ]
    problems += [
        f"'{key}' must be in [0, 1), got {_value(cfg, key)}"
        for key in _BETWEEN_0_AND_1
        if not 0.0 <= _value(cfg, key) < 1.0
    ]
    for sname, section in to_dict(cfg).items():  # TOML can spell nan and inf; the CLI cannot
        for key, v in section.items():
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"'{sname}.{key}' must be a finite number, got {v}")
    return problems


def load_config(argv: list[str]) -> tuple[Config, list[str]]:
    """Parse `--config FILE` and dotted overrides from argv; return (config, unparsed args)."""
    config_path, overrides, rest = _split_cli(argv)
    toml: dict[str, Any] = {}
    source = "config"
    if config_path is not None:
        toml = _read_toml(Path(config_path))
        source = config_path
    return build_config(toml, overrides, source), rest


def reject_unknown_args(rest: list[str]) -> None:
    """The one error for command-line arguments that `load_config` handed back unparsed.

    Entry points that take nothing but config options (train.py, `python -m gpt2repro.config`)
    call it with `load_config`'s second result.
    """
    if rest:
        raise UserError(
            f"unknown argument {rest[0]!r}: options look like --section.key=value (see --help)"
        )


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
        "Precedence: defaults < --config TOML < command-line overrides.",
    ]
    for sname, cls in _sections().items():
        out.append("")
        out.append(f"[{sname}]")
        ftypes = _field_types(cls)
        for f in dataclasses.fields(cls):
            default = f.default
            shown = "unset" if default is None else repr(default)
            doc = f.metadata.get("doc", "")
            choices = f.metadata.get("choices")
            if choices:
                doc += f" ({' | '.join(choices)})"
            out.append(
                f"  --{sname}.{f.name}  ({_type_name(ftypes[f.name])}, default {shown})  {doc}"
            )
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
    import sys

    from gpt2repro.errors import run_cli

    sys.exit(run_cli(_cli))
