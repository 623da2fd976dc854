"""Validation loss and HellaSwag: fixed, collective-safe evaluation, plus its CLI.

Both evaluations are deterministic (same tokens, same examples, same order on every call) and
collective: the work is split across ranks, every rank runs the same number of forward passes
(padding with zero-weight batches, so FSDP's per-forward all-gathers never deadlock), and the
partial sums are all-reduced so every rank returns the same numbers.

HellaSwag follows the reference method (llm.c / build-nanogpt `hellaswag.py`): context tokens,
then the tokens of `" " + ending`; cross-entropy over the ending tokens only. `acc` = argmin of the
summed loss, `acc_norm` = argmin of the per-token mean loss, `acc_norm_char` = argmin of the summed
loss divided by the ending's character length (lm-evaluation-harness's normalization).

Packing: each example is one row, its context once and then its four endings (each ending sees
the context and itself: positions and an attention mask through GPT.hidden_states), and the
vocabulary logits are computed only at the scored positions. Many examples per pass; rows and
scored positions are padded to bucketed lengths and the batch to a fixed size, so a compiled
model sees only a handful of distinct shapes. `full_row_losses` (4 full rows per example, logits
everywhere) is the reference method, kept for the benchmark and FSDP-sharded models.

CLI:
    python -m gpt2repro.evaluate --hf gpt2 --hellaswag
    python -m gpt2repro.evaluate --checkpoint runs/gpt2_124m --val-data data/edu_fineweb10B \\
        --val-tokens 10485760 --hellaswag --json eval.json
    torchrun --nproc_per_node=8 -m gpt2repro.evaluate --hf gpt2 --hellaswag

The scoring speed (packed vs one example per pass): `python -m gpt2repro.bench hellaswag`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2repro import dist, precision
from gpt2repro.atomic import check_output_path, write_json
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.hf import load_model_or_hf

DEFAULT_HELLASWAG = "data/hellaswag/hellaswag_val.jsonl"
N_ENDINGS = 4

# OpenAI GPT-2 124M on the FineWeb-Edu val shard with 1024-token windows (build-nanogpt); printed
# beside ours only for that data (as data_prep/fineweb.py names it in manifest.json) and seq_len.
GPT2_124M_VAL_LOSS = 3.2924
GPT2_124M_VAL_SEQ_LEN = 1024
FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"

# Published HellaSwag figures (sources: docs/reference.md).
# name -> (acc, acc_norm, acc_norm_char); None where the source gives no number for that column.
PUBLISHED: list[tuple[str, float | None, float | None, float | None]] = [
    ("GPT-2 124M (OpenAI, reference script)", 0.2859, 0.2955, None),
    ("GPT-2 124M (OpenAI)", None, 0.2945, 0.3114),
    ("GPT-2 350M (OpenAI)", None, 0.3752, None),
    ("GPT-2 774M (OpenAI)", None, 0.4320, None),
    ("GPT-2 1558M (OpenAI)", None, 0.4889, 0.5089),
    ("GPT-3 125M (paper)", None, 0.337, None),
    ("GPT-3 350M (paper)", None, 0.436, None),
    ("GPT-3 760M (paper)", None, 0.510, None),
    ("GPT-3 1.3B (paper)", None, 0.547, None),
]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() and no_grad inside; the caller's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- validation loss


def validation_loss(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_batch: Callable[[], None] | None = None,
) -> float:
    """Mean next-token cross-entropy (nats/token) over consecutive windows of `tokens`.

    Window i (0 <= i < (len(tokens)-1)//seq_len) has inputs tokens[i*T:(i+1)*T] and targets shifted
    by one; it is scored on rank i % world_size. Every rank runs the same number of [batch_size, T]
    forward passes (the last ones padded with ignored targets); the loss sum and token count are
    all-reduced, so all ranks return the same value, identical on every call. `on_batch` is
    called after each batch (the training loop's fault-injection point, gpt2repro.fault).
    """
    T = seq_len
    n_windows = (len(tokens) - 1) // T
    if n_windows < 1:
        raise UserError(
            f"validation needs at least seq_len + 1 = {T + 1} tokens, got {len(tokens)}; "
            "raise eval.val_tokens or lower the sequence length"
        )
    mine = list(range(rank, n_windows, world_size))
    per_rank = math.ceil(n_windows / world_size)  # the largest share: every rank loops this often
    n_batches = math.ceil(per_rank / batch_size)
    acc_dtype = precision.accumulate_dtype(device)
    total = torch.zeros(2, dtype=acc_dtype, device=device)  # [sum of losses, token count]
    with _eval_mode(model):
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
            if on_batch is not None:
                on_batch()
    dist.all_reduce_sum(total)
    return float(total[0] / total[1])


def load_val_tokens(data_dir: str | Path, val_tokens: int) -> np.ndarray:
    """The first val_tokens + 1 tokens of the validation shards (the +1 is the last target).

    Too few tokens: a UserError naming the CLI's --val-tokens and a value that loads.
    """
    from gpt2repro import data

    # a missing or empty directory raises its own clear error; headers only, no token is read
    paths = data.shard_paths(data_dir, "val", option="--val-data")
    have = sum(len(data.read_shard(p)) for p in paths)
    if have < val_tokens + 1:
        fix = "prepare more data"
        if have > 1:
            fix = f"pass --val-tokens {have - 1} or less, or {fix}"
        raise UserError(
            f"--val-tokens {val_tokens} needs {val_tokens + 1:,} validation tokens (the +1 is "
            f"the last target) but {data_dir} holds only {have:,}; {fix}"
        )
    return data.load_tokens(data_dir, "val", val_tokens + 1)


# --------------------------------------------------------------------------- HellaSwag data


@dataclass(frozen=True)
class HellaSwagExample:
    """One multiple-choice item, text and GPT-2 tokens (ending tokens include the leading space)."""

    ctx: str
    endings: tuple[str, ...]
    label: int
    ctx_tokens: tuple[int, ...]
    ending_tokens: tuple[tuple[int, ...], ...]


def make_example(ctx: str, endings: Sequence[str], label: int) -> HellaSwagExample:
    """Tokenize like the reference: encode(ctx), encode(" " + ending)."""
    from gpt2repro.tokenizer import get_encoding

    enc = get_encoding()
    return HellaSwagExample(
        ctx=ctx,
        endings=tuple(endings),
        label=label,
        ctx_tokens=tuple(enc.encode_ordinary(ctx)),
        ending_tokens=tuple(tuple(enc.encode_ordinary(" " + e)) for e in endings),
    )


def check_hellaswag_row(row: object) -> str | None:
    """Why a parsed JSON line is not a raw HellaSwag example, or None when it is.

    The one schema: `load_hellaswag` and `data_prep/hellaswag.py` accept exactly these rows.
    """
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in ("ctx", "endings", "label") if k not in row]
    if missing:
        return f"missing key(s) {', '.join(missing)} (raw hellaswag schema: ctx, endings, label)"
    if not isinstance(row["ctx"], str) or not row["ctx"].strip():
        return "'ctx' must be a non-empty string"
    ends = row["endings"]
    if not (isinstance(ends, list) and len(ends) == N_ENDINGS):
        return f"'endings' must be a list of {N_ENDINGS} strings"
    if not all(isinstance(e, str) and e.strip() for e in ends):
        return "'endings' must hold non-empty strings"
    label = row["label"]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the Hugging Face copy stores the label as a string ("2")
    if isinstance(label, bool) or not isinstance(label, int):
        return f"'label' must be an integer 0..{N_ENDINGS - 1}, got {label!r}"
    if not 0 <= label < N_ENDINGS:
        return f"'label' {label} is out of range 0..{N_ENDINGS - 1}"
    return None


def read_hellaswag_rows(path: Path, shown: Path | None = None) -> Iterator[dict]:
    """The rows of a raw `hellaswag_val.jsonl`, in file order, each checked by
    `check_hellaswag_row`; a bad line raises a UserError `{shown}:{line}: problem`."""
    shown = shown or path
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
                raise UserError(
                    f"{shown}:{lineno}: not valid JSON ({getattr(e, 'msg', e)})"
                ) from None
            problem = check_hellaswag_row(row)
            if problem:
                raise UserError(f"{shown}:{lineno}: {problem}")
            yield {**row, "label": int(row["label"])}  # "2" (Hugging Face's copy) -> 2


def load_hellaswag(path: str | Path, limit: int = 0) -> list[HellaSwagExample]:
    """Read the raw `hellaswag_val.jsonl` schema (ctx, endings, label; other keys ignored).

    Validated: a bad line raises a UserError naming the file and line. `limit` > 0 keeps the first
    `limit` examples (in file order, so every run scores the same ones).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"HellaSwag file {path} not found; download it with `python data_prep/hellaswag.py` "
            "or pass --hellaswag FILE"
        )
    examples: list[HellaSwagExample] = []
    for row in read_hellaswag_rows(path):
        examples.append(make_example(row["ctx"], row["endings"], row["label"]))
        if 0 < limit <= len(examples):
            break
    if not examples:
        raise UserError(f"HellaSwag file {path} holds no examples")
    return examples


def example_rows(ex: HellaSwagExample, block_size: int) -> list[tuple[list[int], int]]:
    """The 4 scored sequences as (tokens, n_context) after left-truncating the context.

    A sequence ctx + ending is fed as tokens[:-1] and predicts tokens[1:], so it fits when
    len(ctx) + len(ending) - 1 <= block_size. When the longest ending would not fit, the context is
    cut from the left (keeping its end, which the ending continues) by the same amount for all four
    endings, so they are scored on the same context.
    """
    longest = max(len(e) for e in ex.ending_tokens)
    keep = min(len(ex.ctx_tokens), block_size + 1 - longest)
    if keep < 1:
        raise UserError(
            f"a HellaSwag ending has {longest} tokens, too long for block_size {block_size}"
        )
    ctx = list(ex.ctx_tokens[len(ex.ctx_tokens) - keep :])
    return [(ctx + list(e), len(ctx)) for e in ex.ending_tokens]


# --------------------------------------------------------------------------- HellaSwag scoring


def _model_config(model: nn.Module) -> Any:
    """The config of a GPT, through DDP (.module) and torch.compile (._orig_mod) wrappers."""
    cfg = getattr(dist.unwrap(model), "config", None)
    if cfg is None or not hasattr(cfg, "block_size"):
        raise ValueError("cannot find config.block_size on the model (or its .module/._orig_mod)")
    return cfg


def model_block_size(model: nn.Module) -> int:
    """The model's context length (positions), through DDP and torch.compile wrappers."""
    return int(_model_config(model).block_size)


def _require_gpt2_vocab(model: nn.Module) -> None:
    from gpt2repro.tokenizer import N_VOCAB

    vocab = getattr(_model_config(model), "vocab_size", N_VOCAB)
    if vocab < N_VOCAB:
        raise UserError(
            f"HellaSwag needs GPT-2's vocabulary ({N_VOCAB} tokens); this model has "
            f"vocab_size={vocab}; turn HellaSwag off for it (eval.hellaswag_every=0)"
        )


def bucketed_length(n: int, bucket: int, block_size: int) -> int:
    """The padded row length for a batch whose longest row has n inputs: a multiple of `bucket`,
    capped at block_size (so a compiled model sees a handful of shapes)."""
    return min(block_size, math.ceil(n / bucket) * bucket)


def _sorted_batches(
    lengths: Sequence[int], batch_examples: int, n_batches: int | None, progress: bool
) -> Iterator[list[int]]:
    """The example indices of each pass: sorted by length (so a batch pads little),
    `batch_examples` at a time, `n_batches` passes (>= those needed: the extra ones are empty,
    so ranks stay in step); with a progress bar if asked."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    needed = math.ceil(len(lengths) / batch_examples)
    n_batches = needed if n_batches is None else n_batches
    assert n_batches >= needed, (n_batches, needed)
    bar = _progress_bar(n_batches, "hellaswag") if progress else None
    try:
        for b in range(n_batches):
            yield order[b * batch_examples : (b + 1) * batch_examples]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def full_row_losses(
    model: nn.Module,
    examples: Sequence[HellaSwagExample],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batch_examples: int = 16,
    bucket: int = 32,
    n_batches: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference method, batched: each ending a full context + ending row through
    `model(x)` with logits at every position. Same result as `hellaswag_losses`, slower.

    With batch_examples=1, bucket=1 it is build-nanogpt's one example per forward pass (the
    benchmark's baseline). `hellaswag_losses` uses it for FSDP-sharded models, whose root
    parameters are gathered only by a call of the model itself.
    Examples are sorted by length so each batch pads little; each forward pass is
    [4 * batch_examples, L] with L a multiple of `bucket` (capped at block_size).
    """
    _require_gpt2_vocab(model)
    block_size = model_block_size(model)
    rows_per_batch = N_ENDINGS * batch_examples
    all_rows = [example_rows(ex, block_size) for ex in examples]
    lengths = [max(len(t) for t, _ in rows) for rows in all_rows]
    sums = np.zeros((len(examples), N_ENDINGS), dtype=np.float64)
    counts = np.zeros((len(examples), N_ENDINGS), dtype=np.int64)
    with _eval_mode(model):
        for chunk in _sorted_batches(lengths, batch_examples, n_batches, progress):
            longest = max((len(t) - 1 for i in chunk for t, _ in all_rows[i]), default=1)
            L = bucketed_length(longest, bucket, block_size)
            xn = np.zeros((rows_per_batch, L), dtype=np.int64)  # [4*E, L], 0 = padding
            yn = np.full((rows_per_batch, L), -1, dtype=np.int64)  # -1 = not scored
            for j, i in enumerate(chunk):
                for k, (toks, n_ctx) in enumerate(all_rows[i]):
                    r = N_ENDINGS * j + k
                    xn[r, : len(toks) - 1] = toks[:-1]
                    # position p predicts token p+1: the first ending token at p = n_ctx - 1
                    yn[r, n_ctx - 1 : len(toks) - 1] = toks[n_ctx:]
            x = torch.from_numpy(xn).to(device, non_blocking=True)
            y = torch.from_numpy(yn).to(device, non_blocking=True)
            with precision.autocast(device, autocast_dtype):
                logits, _ = model(x)  # [4*E, L, vocab]
            # Only the ending positions (~15% of the batch) go through float + cross-entropy.
            scored = y != -1  # [4*E, L]
            tok_loss = F.cross_entropy(logits[scored].float(), y[scored], reduction="none")
            row_of = scored.nonzero()[:, 0]  # [n_scored] row of each scored position
            row_sum = torch.zeros(
                rows_per_batch, dtype=precision.accumulate_dtype(device), device=device
            )
            row_sum.index_add_(0, row_of, tok_loss.to(row_sum.dtype))
            row_sum = row_sum.cpu().numpy()
            row_cnt = scored.sum(dim=1).cpu().numpy()
            for j, i in enumerate(chunk):
                sums[i] = row_sum[N_ENDINGS * j : N_ENDINGS * (j + 1)]
                counts[i] = row_cnt[N_ENDINGS * j : N_ENDINGS * (j + 1)]
    return sums, counts


@dataclass(frozen=True)
class PackedExample:
    """One example as a single row: its context once, then the four endings.

    Each ending attends to the context and to its own earlier tokens; its positions restart at
    len(context), so every ending sees exactly the inputs of its own context + ending row. The
    last token of an ending is only a target, never an input. All arrays are int64:
    tokens, pos, seg: [R] inputs, positions, and segment (-1 = context, k = ending k);
    sel, targets, ending: [S] for each scored token (S = the four endings' lengths summed): the
    row index whose hidden state predicts it, the token, and its ending k.
    """

    tokens: np.ndarray
    pos: np.ndarray
    seg: np.ndarray
    sel: np.ndarray
    targets: np.ndarray
    ending: np.ndarray


def pack_example(ex: HellaSwagExample, block_size: int) -> PackedExample:
    """The row of `ex` (context left-truncated as in `example_rows`, so every position is less
    than block_size; the row itself may be longer than block_size)."""
    rows = example_rows(ex, block_size)
    n_ctx = rows[0][1]
    tokens, pos, seg = list(rows[0][0][:n_ctx]), list(range(n_ctx)), [-1] * n_ctx
    sel: list[int] = []
    targets: list[int] = []
    ending: list[int] = []
    for k, (toks, _) in enumerate(rows):
        end = toks[n_ctx:]
        start = len(tokens)
        # the context's last position predicts the first ending token, then each ending token
        # (at its row index) the next one
        sel += [n_ctx - 1, *range(start, start + len(end) - 1)]
        targets += end
        ending += [k] * len(end)
        tokens += end[:-1]
        pos += range(n_ctx, n_ctx + len(end) - 1)
        seg += [k] * (len(end) - 1)
    arrays = (tokens, pos, seg, sel, targets, ending)
    return PackedExample(*(np.array(a, dtype=np.int64) for a in arrays))


def packed_attention_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, R, R] bool, True = attend, from segments seg [B, R] (-1 context, k >= 0 ending k,
    -2 padding): causal, and within a segment or onto the context. A padding position sees only
    padding (at least itself: no fully masked row, whose softmax would be NaN)."""
    R = seg.size(1)
    causal = torch.ones(R, R, dtype=torch.bool, device=seg.device).tril()  # [R, R]
    q, k = seg[:, :, None], seg[:, None, :]  # [B, R, 1] queries, [B, 1, R] keys
    mask = causal & ((q == k) | ((k == -1) & (q >= -1)))  # [B, R, R]
    return mask[:, None]


def _packed_token_losses(
    gpt: nn.Module,
    idx: torch.Tensor,
    pos: torch.Tensor,
    seg: torch.Tensor,
    sel: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy [N] of each scored token: idx, pos, seg [B, R]; sel, targets [N] (sel indexes
    the flattened [B * R] positions; target -1 = padding, loss 0). Logits only at sel."""
    h = gpt.hidden_states(idx, pos=pos, attn_mask=packed_attention_mask(seg))  # [B, R, C]
    h = h.flatten(0, 1)[sel]  # [N, C]
    logits = gpt.logits(h).float()  # [N, vocab]: 5-20% of the positions, not all of them
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="none")


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(dist.unwrap(model), FSDPModule)


def hellaswag_losses(
    model: nn.Module,
    examples: Sequence[HellaSwagExample],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batch_examples: int = 16,
    bucket: int = 32,
    n_batches: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed ending loss and ending token count per example and ending: two [N, 4] arrays.

    Local only (no collectives). Each example is one packed row (`pack_example`): its context is
    encoded once for its four endings, and vocabulary logits are computed only at the positions
    scored. Examples are sorted by row length so each batch pads little; each pass is
    [batch_examples, R] rows with R a multiple of `bucket`, and the scored positions are padded
    to a multiple of 4 * bucket, so a compiled model sees a handful of shapes. A torch.compile'd
    model's settings compile the packed step too. `n_batches` (>= the batches needed) adds empty
    passes so ranks stay in step.
    """
    _require_gpt2_vocab(model)
    if _is_fsdp(model):
        return full_row_losses(
            model, examples, device, autocast_dtype, batch_examples, bucket, n_batches, progress
        )
    block_size = model_block_size(model)
    gpt = dist.unwrap(model)
    step = _packed_token_losses
    dynamo_ctx = getattr(model, "dynamo_ctx", None)  # set by torch.compile(model)
    if dynamo_ctx is not None:
        step = dynamo_ctx(_packed_token_losses)  # same backend and options as the model
    packed = [pack_example(ex, block_size) for ex in examples]
    sums = np.zeros((len(examples), N_ENDINGS), dtype=np.float64)
    counts = np.zeros((len(examples), N_ENDINGS), dtype=np.int64)
    acc_dtype = precision.accumulate_dtype(device)
    B = batch_examples
    lengths = [len(p.tokens) for p in packed]
    with _eval_mode(model):
        for indices in _sorted_batches(lengths, B, n_batches, progress):
            chunk = [packed[i] for i in indices]
            R = math.ceil(max((len(p.tokens) for p in chunk), default=1) / bucket) * bucket
            n_scored = sum(len(p.sel) for p in chunk)
            N = max(1, math.ceil(n_scored / (N_ENDINGS * bucket))) * N_ENDINGS * bucket
            idx = np.zeros((B, R), dtype=np.int64)  # [B, R], 0 = padding
            pos = np.zeros((B, R), dtype=np.int64)
            seg = np.full((B, R), -2, dtype=np.int64)  # -2 = padding
            sel = np.zeros(N, dtype=np.int64)
            targets = np.full(N, -1, dtype=np.int64)  # -1 = padding: loss 0
            slot = np.full(N, N_ENDINGS * B, dtype=np.int64)  # [N] (example, ending); last = dump
            n = 0
            for j, p in enumerate(chunk):
                r, s = len(p.tokens), len(p.sel)
                idx[j, :r], pos[j, :r], seg[j, :r] = p.tokens, p.pos, p.seg
                sel[n : n + s] = j * R + p.sel  # into the flattened [B * R] positions
                targets[n : n + s] = p.targets
                slot[n : n + s] = N_ENDINGS * j + p.ending
                n += s
            idx_t, pos_t, seg_t, sel_t, targets_t, slot_t = (
                torch.from_numpy(a).to(device, non_blocking=True)
                for a in (idx, pos, seg, sel, targets, slot)
            )
            with precision.autocast(device, autocast_dtype):
                tok_loss = step(gpt, idx_t, pos_t, seg_t, sel_t, targets_t)  # [N]
            row_sum = torch.zeros(N_ENDINGS * B + 1, dtype=acc_dtype, device=device)
            row_sum.index_add_(0, slot_t, tok_loss.to(acc_dtype))
            row_sum = row_sum.cpu().numpy()
            for j, i in enumerate(indices):
                sums[i] = row_sum[N_ENDINGS * j : N_ENDINGS * (j + 1)]
                counts[i] = np.bincount(packed[i].ending, minlength=N_ENDINGS)
    return sums, counts


def reference_losses(
    model: nn.Module,
    example: HellaSwagExample,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The plainest scorer, for tests: one unpadded forward pass per ending; ([4] sums, [4] counts)."""
    sums = np.zeros(N_ENDINGS, dtype=np.float64)
    counts = np.zeros(N_ENDINGS, dtype=np.int64)
    with _eval_mode(model):
        for k, (toks, n_ctx) in enumerate(example_rows(example, model_block_size(model))):
            t = torch.tensor(toks, device=device)[None]  # [1, n]
            with precision.autocast(device, autocast_dtype):
                logits, _ = model(t[:, :-1])  # [1, n-1, vocab]
            logp = F.log_softmax(logits[0].float(), dim=-1)
            targets = t[0, n_ctx:]  # the ending tokens
            picked = logp[n_ctx - 1 :].gather(1, targets[:, None])
            sums[k] = float(-picked.double().sum())
            counts[k] = len(targets)
    return sums, counts


def predictions(
    examples: Sequence[HellaSwagExample], sums: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Predicted ending per example under each normalization (ties go to the lowest index)."""
    chars = np.array([[len(e) for e in ex.endings] for ex in examples], dtype=np.float64)
    chars = chars.reshape(len(examples), N_ENDINGS)
    return {
        "acc": np.argmin(sums, axis=1),
        "acc_norm": np.argmin(sums / np.maximum(counts, 1), axis=1),
        "acc_norm_char": np.argmin(sums / chars, axis=1),
    }


def rank_losses(
    model: nn.Module,
    examples: Sequence[HellaSwagExample],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_examples: int = 16,
    bucket: int = 32,
    progress: bool = False,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """This rank's share of `hellaswag_losses`: (indices into `examples`, [n, 4] sums, [n, 4]
    counts). Example i is scored on rank i % world_size; every rank runs the same number of
    passes (the largest share's), so ranks stay in step. No collectives."""
    mine = list(range(rank, len(examples), world_size))
    per_rank = math.ceil(len(examples) / world_size)
    sums, counts = hellaswag_losses(
        model,
        [examples[i] for i in mine],
        device=device,
        autocast_dtype=autocast_dtype,
        batch_examples=batch_examples,
        bucket=bucket,
        n_batches=math.ceil(per_rank / batch_examples),
        progress=progress,
    )
    return mine, sums, counts


def score_hellaswag(
    model: nn.Module,
    examples: Sequence[HellaSwagExample],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_examples: int = 16,
    bucket: int = 32,
    progress: bool = False,
) -> dict:
    """HellaSwag accuracy: {"n", "acc", "acc_norm", "acc_norm_char"} over all ranks' examples.

    Each rank scores its `rank_losses` share; correct counts are all-reduced, so every rank
    returns the same dict.
    """
    indices, sums, counts = rank_losses(
        model,
        examples,
        device,
        autocast_dtype=autocast_dtype,
        rank=rank,
        world_size=world_size,
        batch_examples=batch_examples,
        bucket=bucket,
        progress=progress,
    )
    mine = [examples[i] for i in indices]
    labels = np.array([ex.label for ex in mine], dtype=np.int64)
    preds = predictions(mine, sums, counts)
    keys = ("acc", "acc_norm", "acc_norm_char")
    local = [len(mine)] + [int((preds[k] == labels).sum()) for k in keys]
    total = dist.all_reduce_sum(torch.tensor(local, dtype=torch.int64, device=device))
    n, *correct = (int(v) for v in total.cpu())
    return {"n": n, **{k: c / max(n, 1) for k, c in zip(keys, correct, strict=True)}}


def evaluate_in_loop(
    raw_model: nn.Module,
    *,
    val_tokens: np.ndarray | None,
    hellaswag: Sequence[HellaSwagExample] | None,
    seq_len: int,
    batch_size: int,
    batch_examples: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    rank: int,
    world_size: int,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The training loop's evaluation: validation loss if `val_tokens` is given, HellaSwag if
    `hellaswag` is. Collective (every rank calls it with the same arguments); returns the metrics
    record fields, `val_loss` and `hellaswag_acc`, `hellaswag_acc_norm`, `hellaswag_acc_norm_char`.
    `on_batch`: see validation_loss.
    """
    out: dict[str, float] = {}
    if val_tokens is not None:
        out["val_loss"] = validation_loss(
            raw_model,
            val_tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
            rank=rank,
            world_size=world_size,
            on_batch=on_batch,
        )
    if hellaswag is not None:
        scores = score_hellaswag(
            raw_model,
            hellaswag,
            device=device,
            autocast_dtype=autocast_dtype,
            rank=rank,
            world_size=world_size,
            batch_examples=batch_examples,
        )
        for key in ("acc", "acc_norm", "acc_norm_char"):
            out[f"hellaswag_{key}"] = scores[key]
    return out


def _progress_bar(total: int, desc: str) -> Any:  # a tqdm bar, or None without tqdm
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- CLI


def _format_score(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def hellaswag_table(label: str, hs: dict) -> str:
    """Our HellaSwag numbers beside the published GPT-2 / GPT-3 figures."""
    lines = [
        f"{'model':<40} {'acc':>7} {'acc_norm':>9} {'char_norm':>9}",
        f"{label[:40]:<40} {_format_score(hs['acc']):>7} {_format_score(hs['acc_norm']):>9} "
        f"{_format_score(hs['acc_norm_char']):>9}   (n={hs['n']})",
        "-" * 68,
    ]
    for name, acc, norm, char in PUBLISHED:
        lines.append(
            f"{name:<40} {_format_score(acc):>7} {_format_score(norm):>9} {_format_score(char):>9}"
        )
    lines.append(
        "acc_norm = per-token mean loss (reference script); char_norm = lm-eval's per-character.\n"
        "GPT-3 rows: the paper's HellaSwag accuracy, conventionally set beside acc_norm."
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.evaluate",
        description="Validation loss and HellaSwag for a gpt2repro checkpoint or a HF GPT-2.",
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
    p.add_argument("--val-tokens", type=int, default=10_485_760, help="validation token budget")
    p.add_argument("--seq-len", type=int, default=0, help="validation window (0 = block_size)")
    p.add_argument("--val-batch-size", type=int, default=8, help="validation windows per pass")
    p.add_argument("--limit", type=int, default=0, help="first N HellaSwag examples (0 = all)")
    p.add_argument("--batch-examples", type=int, default=16, help="HellaSwag examples per pass")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--dtype", default="auto", choices=precision.CHOICES)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (atomically)")
    p.add_argument("--bucket", type=int, default=32, help="pad HellaSwag rows to a multiple of")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Option values a user can get wrong, checked before anything is loaded."""
    for name in ("limit", "val_tokens", "seq_len"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("batch_examples", "val_batch_size", "bucket"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not (args.checkpoint or args.hf):
        raise UserError("pass --checkpoint PATH or --hf NAME_OR_DIR")
    if args.json:  # checked now, not after the whole evaluation
        check_output_path(args.json, "--json", directory=False)


def _val_seq_len(args: argparse.Namespace, block_size: int) -> int:
    """The validation window: --seq-len, or the model's block_size; checked against both."""
    seq_len = args.seq_len or block_size
    if seq_len > block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block_size {block_size}")
    if args.val_data and args.val_tokens < seq_len:
        raise UserError(
            f"--val-tokens {args.val_tokens} is less than one window of --seq-len {seq_len}; "
            f"pass --val-tokens {seq_len} or more, or a smaller --seq-len"
        )
    return seq_len


def val_data_source(data_dir: str | Path) -> str | None:
    """The Hugging Face dataset the shards in `data_dir` were made from, as data_prep records it
    in `manifest.json` (settings.source.path); None for local files or without a manifest."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))
        source = manifest["settings"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(source, dict) or source.get("kind") != "huggingface":
        return None
    return source.get("path")


def _val_loss_line(val_loss: float, n_tokens: int, seq_len: int, data_dir: str | Path) -> str:
    """The printed validation result; OpenAI's GPT-2 124M figure beside it only when it was
    measured the same way (FineWeb-Edu validation shard, 1024-token windows)."""
    line = f"val_loss {val_loss:.4f} ({n_tokens:,} tokens, seq_len {seq_len})"
    if seq_len == GPT2_124M_VAL_SEQ_LEN and val_data_source(data_dir) == FINEWEB_EDU:
        line += f"; OpenAI GPT-2 124M on the FineWeb-Edu val shard: {GPT2_124M_VAL_LOSS}"
    return line


def _run(args: argparse.Namespace, info: dist.DistInfo) -> None:
    """Check the inputs, load the model, evaluate; rank 0 prints and writes the JSON."""
    device = info.device
    # Check inputs before the expensive model load (fail early).
    examples = load_hellaswag(args.hellaswag, limit=args.limit) if args.hellaswag else None
    val_tokens = load_val_tokens(args.val_data, args.val_tokens) if args.val_data else None
    model = load_model_or_hf(checkpoint=args.checkpoint, hf=args.hf, device=device)
    seq_len = _val_seq_len(args, model_block_size(model))
    amp_dtype = precision.autocast_dtype(args.dtype, device)
    if args.compile:
        model = torch.compile(model)

    out: dict = {}
    if val_tokens is not None:
        out["val_loss"] = validation_loss(
            model,
            val_tokens,
            seq_len=seq_len,
            batch_size=args.val_batch_size,
            device=device,
            autocast_dtype=amp_dtype,
            rank=info.rank,
            world_size=info.world_size,
        )
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
            device=device,
            autocast_dtype=amp_dtype,
            rank=info.rank,
            world_size=info.world_size,
            batch_examples=args.batch_examples,
            bucket=args.bucket,
            progress=info.is_main,
        )
        out["hellaswag"] = hs
        if info.is_main:
            print(hellaswag_table(args.hf or args.checkpoint, hs))
            secs = time.perf_counter() - t0
            print(f"hellaswag: {hs['n']} examples in {secs:.1f} s on {info.world_size} rank(s)")
    if args.json and info.is_main:
        write_json(args.json, out)


def main(argv: list[str]) -> int:
    if "--bench" in argv:
        raise UserError("the HellaSwag benchmark moved: python -m gpt2repro.bench hellaswag [...]")
    args = _parser().parse_args(argv)
    _check_args(args)
    if args.hellaswag is None and args.val_data is None:
        args.hellaswag = DEFAULT_HELLASWAG  # nothing asked: HellaSwag with the default file
    info = dist.setup(args.device, device_option="--device")
    ok = False
    try:
        _run(args, info)
        ok = True
    finally:
        dist.teardown(clean=ok)  # after an error on this rank, no barrier that could hang
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
