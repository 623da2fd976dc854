"""Validation loss, the training loop's evaluation entry, and the evaluation CLI.

Validation loss is deterministic (the same windows, in the same order, on every call) and
collective: the windows are split across ranks, every rank runs the same number of forward passes
(padding with zero-weight batches, so FSDP's per-forward all-gathers never deadlock), and the
partial sums are all-reduced so every rank returns the same number. HellaSwag is scored by
gpt2repro.hellaswag over the shared scorer (gpt2repro.scoring), with the same guarantees.

CLI:
    python -m gpt2repro.evaluate --hf gpt2 --hellaswag
    python -m gpt2repro.evaluate --checkpoint runs/gpt2_124m --val-data data/edu_fineweb10B \\
        --eval.val_tokens 10485760 --hellaswag --json eval.json
    torchrun --nproc_per_node=8 -m gpt2repro.evaluate --hf gpt2 --hellaswag --train.dtype bfloat16
    python -m gpt2repro.evaluate --hf gpt2 --core [--core-bundle DIR] [--core-tasks arc_easy piqa]
        [--core-max-per-task 500]       # CORE (gpt2repro.core), per task and the mean

The settings it shares with training are spelled as in train.py (--train.device, --train.dtype,
--train.compile, --train.compile_mode, --train.attention_backend, --eval.val_tokens,
--eval.batch_size, --eval.hellaswag_limit, --eval.batch_examples); the short flags --device, --dtype, --compile, --val-tokens,
--val-batch-size, --limit and --batch-examples are the same settings (see --help).

The scoring speed (packed vs one example per pass): `python -m gpt2repro.bench hellaswag`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from gpt2repro import checkpoint, data, dist, fault, precision
from gpt2repro.atomic import check_output_path, write_json
from gpt2repro.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    Config,
    ShowDefaults,
    add_option,
    parse_verb_args,
)
from gpt2repro.core import DEFAULT_CORE_BUNDLE, check_cap, core_table, evaluate_core, load_tasks
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.hellaswag import DEFAULT_HELLASWAG, hellaswag_table, load_hellaswag, score_hellaswag
from gpt2repro.hf import load_model_or_hf
from gpt2repro.reference import GPT2_124M_VAL_LOSS, gpt2_val_loss_comparable
from gpt2repro.scoring import Batching, Example, eval_mode, model_block_size

# --------------------------------------------------------------------------- validation loss


def validation_loss(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    step: int | None = None,
) -> float:
    """Mean next-token cross-entropy (nats/token) over consecutive windows of `tokens`.

    Window i (0 <= i < (len(tokens)-1)//seq_len) has inputs tokens[i*T:(i+1)*T] and targets shifted
    by one; it is scored on rank i % world_size. Every rank runs the same number of [batch_size, T]
    forward passes (the last ones padded with ignored targets); the loss sum and token count are
    all-reduced, so all ranks return the same value, identical on every call. `step`: the training
    step this evaluation follows (None outside training); after each batch the fault injection of
    the reliability tests may fire there (gpt2repro.fault, "sigkill-in-eval").
    """
    T = seq_len
    n_windows = (len(tokens) - 1) // T
    if n_windows < 1:
        raise UserError(
            f"validation needs at least seq_len + 1 = {T + 1} tokens, got {len(tokens)}; "
            "raise eval.val_tokens or lower the sequence length"
        )
    device = info.device
    mine = list(range(info.rank, n_windows, info.world_size))
    # the largest share: every rank loops this often
    per_rank = math.ceil(n_windows / info.world_size)
    n_batches = math.ceil(per_rank / batch_size)
    acc_dtype = precision.accumulate_dtype(device)
    total = torch.zeros(2, dtype=acc_dtype, device=device)  # [sum of losses, token count]
    with eval_mode(model):
        for b in range(n_batches):
            idx = mine[b * batch_size : (b + 1) * batch_size]
            x = np.zeros((batch_size, T), dtype=np.int64)  # fixed [B, T]: no recompiles
            y = np.full((batch_size, T), -1, dtype=np.int64)  # -1 = ignored (padding rows)
            for row, i in enumerate(idx):
                x[row] = tokens[i * T : (i + 1) * T]
                y[row] = tokens[i * T + 1 : (i + 1) * T + 1]
            xt = torch.from_numpy(x).to(device, non_blocking=True)
            yt = torch.from_numpy(y).to(device, non_blocking=True)
            with precision.autocast(device, autocast_dtype):
                _, loss = model(xt, yt, loss_only=True)  # mean over the non-ignored targets
            if idx:  # an all-padding batch has a NaN mean (0/0) and adds nothing
                n = len(idx) * T
                total[0] += loss.detach().to(acc_dtype) * n
                total[1] += n
            if step is not None:
                fault.injected(info.rank).inside("eval", step)
    dist.all_reduce_sum(total)
    return float(total[0] / total[1])


def load_val_tokens(
    data_dir: str | Path, val_tokens: int, option: str = "--val-tokens"
) -> np.ndarray:
    """The first val_tokens + 1 tokens of the validation shards (the +1 is the last target).

    Too few tokens: a UserError naming the CLI's option (`option`, as the user spelled it) and a
    value that loads.
    """
    # a missing or empty directory raises its own clear error; headers only, no token is read
    paths = data.shard_paths(data_dir, "val", option="--val-data")
    have = sum(len(data.read_shard(p)) for p in paths)
    if have < val_tokens + 1:
        fix = "prepare more data"
        if have > 1:
            fix = f"pass {option} {have - 1} or less, or {fix}"
        raise UserError(
            f"{option} {val_tokens} needs {val_tokens + 1:,} validation tokens (the +1 is "
            f"the last target) but {data_dir} holds only {have:,}; {fix}"
        )
    return data.load_tokens(data_dir, "val", val_tokens + 1)


# --------------------------------------------------------------------------- the training loop's entry


@dataclass(frozen=True)
class EvalSettings:
    """How the in-loop evaluation runs: the same on every rank and at every evaluation."""

    seq_len: int  # validation window (tokens)
    batch_size: int  # validation windows per forward pass
    batch_examples: int  # HellaSwag examples per forward pass
    autocast_dtype: torch.dtype | None = None  # None = float32


def evaluate_in_loop(
    raw_model: nn.Module,
    *,
    val_tokens: np.ndarray | None,
    hellaswag: Sequence[Example] | None,
    settings: EvalSettings,
    info: dist.DistInfo,
    step: int,
) -> dict[str, float]:
    """The training loop's evaluation after step `step`: validation loss if `val_tokens` is given,
    HellaSwag if `hellaswag` is. Collective (every rank calls it with the same arguments); returns
    the metrics record fields, `val_loss` and `hellaswag_acc`, `hellaswag_acc_norm`,
    `hellaswag_acc_norm_char`.
    """
    out: dict[str, float] = {}
    if val_tokens is not None:
        out["val_loss"] = validation_loss(
            raw_model,
            val_tokens,
            settings.seq_len,
            settings.batch_size,
            info,
            settings.autocast_dtype,
            step=step,
        )
    if hellaswag is not None:
        scores = score_hellaswag(
            raw_model,
            hellaswag,
            info,
            settings.autocast_dtype,
            Batching(batch_examples=settings.batch_examples),
        )
        for key in ("acc", "acc_norm", "acc_norm_char"):
            out[f"hellaswag_{key}"] = scores[key]
    return out


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.evaluate",
        description="Validation loss, HellaSwag and CORE for a gpt2repro checkpoint or a HF GPT-2.",
        formatter_class=ShowDefaults,
    )
    add_debug_flag(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="run dir, checkpoint dir or step dir")
    src.add_argument("--hf", metavar="NAME_OR_DIR", help="HF GPT-2 name (gpt2, ...) or directory")
    p.add_argument(
        "--hellaswag",
        nargs="?",
        const=DEFAULT_HELLASWAG,
        metavar="FILE",
        help=f"score HellaSwag (default file: {DEFAULT_HELLASWAG})",
    )
    p.add_argument("--val-data", metavar="DIR", help="directory of *_val_*.bin shards")
    p.add_argument(
        "--core", action="store_true", help="score CORE (DCLM's 22 tasks, nanochat's rules)"
    )
    p.add_argument(
        "--core-bundle",
        metavar="DIR",
        help=f"the CORE bundle (python data_prep/core.py; default {DEFAULT_CORE_BUNDLE})",
    )
    p.add_argument("--core-tasks", nargs="+", metavar="LABEL", help="only these CORE tasks")
    add_option(
        p,
        "--core-max-per-task",
        type=int,
        default=0,
        check=NON_NEGATIVE,
        help="first N examples of each task in the seeded order (0 = all; comparable: 0)",
    )
    add_option(
        p,
        "--seq-len",
        type=int,
        default=0,
        check=NON_NEGATIVE,
        help="validation window (0 = block_size)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (atomically)")
    add_option(
        p,
        "--bucket",
        type=int,
        default=32,
        check=AT_LEAST_1,
        help="pad HellaSwag rows to a multiple of",
    )
    return p


# The settings evaluate shares with training, and their short flags (the same settings).
_KEYS = (
    "train.device",
    "train.dtype",
    "train.compile",
    "train.compile_mode",
    "train.attention_backend",
    "train.micro_batch_size",
    "eval.val_tokens",
    "eval.batch_size",
    "eval.hellaswag_limit",
    "eval.batch_examples",
)
_ALIASES = {
    "--device": "train.device",
    "--dtype": "train.dtype",
    "--compile": "train.compile",
    "--val-tokens": "eval.val_tokens",
    "--val-batch-size": "eval.batch_size",
    "--limit": "eval.hellaswag_limit",
    "--batch-examples": "eval.batch_examples",
}
# Evaluate's own defaults: no compilation unless asked (a one-off evaluation rarely repays it)
# and 8 validation windows per pass.
_DEFAULTS = {"train.compile": False, "eval.batch_size": 8}


def _check_args(args: argparse.Namespace) -> None:
    """Inputs a user can get wrong beyond the option values, checked before anything is loaded."""
    if not (args.checkpoint or args.hf):
        raise UserError("pass --checkpoint PATH or --hf NAME_OR_DIR")
    if args.json:  # checked now, not after the whole evaluation
        check_output_path(args.json, "--json", directory=False)
    if not args.core:
        for flag, value in (
            ("--core-bundle", args.core_bundle),
            ("--core-tasks", args.core_tasks),
            ("--core-max-per-task", args.core_max_per_task),
        ):
            if value:
                raise UserError(f"{flag} needs --core (add --core to score CORE)")


def check_token_ids(tokens: np.ndarray, vocab_size: int, data_dir: str | Path) -> None:
    """Every validation token id fits the model's vocabulary, as training checks its shards
    (data.token_id_problem): an id past the embedding is a CUDA device-side assert otherwise."""
    top = int(tokens.max()) if len(tokens) else -1
    if top >= vocab_size:
        raise UserError(
            f"--val-data {data_dir} holds token id {top} but the model's vocab_size is "
            f"{vocab_size}; evaluate data tokenized for this model, or re-create the shard if "
            "it is corrupt"
        )


def _val_seq_len(args: argparse.Namespace, val_tokens: int, block_size: int) -> int:
    """The validation window: --seq-len, or the model's block_size; checked against both and
    against `val_tokens` (the validation budget, in tokens)."""
    seq_len = args.seq_len or block_size
    if seq_len > block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block_size {block_size}")
    if args.val_data and val_tokens < seq_len:
        flag = args.config_flags["eval.val_tokens"]
        raise UserError(
            f"{flag} {val_tokens} is less than one window of --seq-len {seq_len}; "
            f"pass {flag} {seq_len} or more, or a smaller --seq-len"
        )
    return seq_len


def _val_loss_line(val_loss: float, n_tokens: int, seq_len: int, data_dir: str | Path) -> str:
    """The printed validation result; OpenAI's GPT-2 124M figure beside it only when it was
    measured the same way (`reference.gpt2_val_loss_comparable`)."""
    line = f"val_loss {val_loss:.4f} ({n_tokens:,} tokens, seq_len {seq_len})"
    if gpt2_val_loss_comparable(data_dir, seq_len):
        line += f"; OpenAI GPT-2 124M on the FineWeb-Edu val shard: {GPT2_124M_VAL_LOSS}"
    return line


def _run(cfg: Config, args: argparse.Namespace, info: dist.DistInfo) -> None:
    """Check the inputs, load the model, evaluate; rank 0 prints and writes the JSON."""
    ev = cfg.eval
    # Check inputs before the expensive model load (fail early).
    examples = None
    if args.hellaswag:
        examples = load_hellaswag(args.hellaswag, limit=ev.hellaswag_limit)
    val_tokens = None
    if args.val_data:
        option = args.config_flags["eval.val_tokens"]
        val_tokens = load_val_tokens(args.val_data, ev.val_tokens, option=option)
    core_tasks = None
    if args.core:
        core_tasks = load_tasks(args.core_bundle or DEFAULT_CORE_BUNDLE, args.core_tasks)
        check_cap(args.core_max_per_task, core_tasks)
    raw_model = load_model_or_hf(checkpoint=args.checkpoint, hf=args.hf, device=info.device)
    if val_tokens is not None:
        check_token_ids(val_tokens, raw_model.config.vocab_size, args.val_data)
    raw_model.set_attention_backend(cfg.train.attention_backend)  # before compiling: traced
    model: nn.Module = raw_model
    seq_len = _val_seq_len(args, ev.val_tokens, model_block_size(model))
    amp_dtype = precision.autocast_dtype(cfg.train.dtype, info.device)
    # unset (--train.compile=auto) = on for CUDA, as in training
    compiled = cfg.train.compile if cfg.train.compile is not None else info.device.type == "cuda"
    if compiled:
        # A module (OptimizedModule, `._orig_mod` = model) that torch types as a plain callable.
        model = torch.compile(model, mode=cfg.train.compile_mode)  # type: ignore[assignment]

    out: dict = {}
    if val_tokens is not None:
        batch_size = ev.batch_size or cfg.train.micro_batch_size  # 0 = as in training
        out["val_loss"] = validation_loss(model, val_tokens, seq_len, batch_size, info, amp_dtype)
        if info.is_main:
            n = (len(val_tokens) - 1) // seq_len * seq_len
            line = _val_loss_line(
                out["val_loss"], n_tokens=n, seq_len=seq_len, data_dir=args.val_data
            )
            print(line)
    if examples is not None:
        t0 = time.perf_counter()
        hs = score_hellaswag(
            model,
            examples,
            info,
            amp_dtype,
            Batching(batch_examples=ev.batch_examples, bucket=args.bucket),
            progress=info.is_main,
        )
        out["hellaswag"] = hs
        if info.is_main:
            print(hellaswag_table(args.hf or args.checkpoint, hs))
            secs = time.perf_counter() - t0
            print(f"hellaswag: {hs['n']} examples in {secs:.1f} s on {info.world_size} rank(s)")
    if core_tasks is not None:
        t0 = time.perf_counter()
        out["core"] = evaluate_core(
            model,
            core_tasks,
            info,
            args.core_max_per_task,
            amp_dtype,
            Batching(batch_examples=ev.batch_examples, bucket=args.bucket),
            progress=info.is_main,
        )
        if info.is_main:
            print(core_table(args.hf or args.checkpoint, out["core"]))
            n = sum(r["n"] for r in out["core"]["tasks"].values())
            secs = time.perf_counter() - t0
            print(f"core: {n} examples in {secs:.1f} s on {info.world_size} rank(s)")
    if args.json and info.is_main:
        write_json(args.json, out)


def run_defaults(cfg: Config, args: argparse.Namespace) -> tuple[Config, list[str]]:
    """For `--checkpoint` of a gpt2repro run, what the run itself evaluated, unless the command
    line says otherwise: with none of --val-data, --hellaswag, --core, its validation data (and its
    HellaSwag file when it scored HellaSwag); its validation budget and sequence length. Read from
    the checkpoint's saved config (nothing when it cannot be read: loading the checkpoint then
    says why). Returns the config and the flags taken from the run, for a note."""
    if not args.checkpoint:
        return cfg, []
    try:
        saved = checkpoint.read_state(checkpoint.resolve(args.checkpoint))["config"]
        data_dir, val_tokens = saved["data"]["dir"], int(saved["eval"]["val_tokens"])
        seq_len = min(int(saved["train"]["seq_len"]), int(saved["model"]["block_size"]))
        hs_every, hs_file = int(saved["eval"]["hellaswag_every"]), saved["eval"]["hellaswag_file"]
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return cfg, []
    used = []
    nothing_asked = not args.val_data and not args.hellaswag and not args.core
    if nothing_asked and Path(data_dir).is_dir():
        args.val_data = data_dir
        used.append(f"--val-data {data_dir}")
        if hs_every > 0 and hs_file and Path(hs_file).is_file():
            args.hellaswag = hs_file
            used.append(f"--hellaswag {hs_file}")
    if not args.val_data:  # no validation: its budget and window do not matter
        return cfg, used
    if "eval.val_tokens" not in args.config_given:
        cfg = replace(cfg, eval=replace(cfg.eval, val_tokens=val_tokens))
        used.append(f"--val-tokens {val_tokens}")
    if not args.seq_len:
        args.seq_len = seq_len
        used.append(f"--seq-len {seq_len}")
    return cfg, used


def main(argv: list[str]) -> int:
    cfg, args = parse_verb_args(argv, _parser(), keys=_KEYS, aliases=_ALIASES, defaults=_DEFAULTS)
    cfg, from_run = run_defaults(cfg, args)
    _check_args(args)
    if args.hellaswag is None and args.val_data is None and not args.core:
        args.hellaswag = DEFAULT_HELLASWAG  # nothing asked: HellaSwag with the default file
    info = dist.setup(cfg.train.device, device_option=args.config_flags["train.device"])
    if from_run and info.is_main:
        print(f"from the run's config: {' '.join(from_run)} (flags given override them)")
    ok = False
    try:
        _run(cfg, args, info)
        ok = True
    finally:
        dist.teardown(clean=ok)  # after an error on this rank, no barrier that could hang
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
