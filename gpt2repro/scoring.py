"""The packed continuation scorer every multiple-choice task shares.

An `Example` is a context and its candidate continuations (text and GPT-2 tokens) and the index of
the right one. A continuation is scored by the cross-entropy of its tokens given the context and
its own earlier tokens (the reference method of llm.c / build-nanogpt `hellaswag.py`); `acc` picks
the lowest summed loss, `acc_norm` the lowest per-token mean, `acc_norm_char` the lowest sum per
character of the continuation (lm-evaluation-harness's normalization). A task (hellaswag.py,
CORE's tasks) only turns its rows into Examples.

Packing: each example is one row, its context once and then each continuation (each sees the
context and itself: positions and an attention mask through GPT.hidden_states), and the vocabulary
logits are computed only at the scored positions. `pack_rows` packs any K sequences that share a
prefix (CORE's three kinds, gpt2repro.core, use it directly), and `score_packed` returns with each
continuation's summed loss how many of its tokens are the greedy (argmax) prediction. Many examples per pass; rows and scored
positions are padded to bucketed lengths and the batch to a fixed size, so a compiled model sees
only a handful of distinct shapes. `full_row_losses` (one full context + continuation row per
choice, logits everywhere) is the unpacked method, kept for FSDP-sharded models and the benchmark.

Collective-safe: `rank_losses` splits the examples across ranks and every rank runs the same
number of forward passes (padding with empty ones, so FSDP's per-forward all-gathers never
deadlock); `accuracy` all-reduces the correct counts, so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2repro import dist, precision
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.tokenizer import N_VOCAB


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() and no_grad inside; the caller's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One multiple-choice item: a context, its candidate continuations and the right one's index,
    as text and as token ids (each continuation's tokens carry its leading space, if any)."""

    context: str
    continuations: tuple[str, ...]
    label: int
    context_tokens: tuple[int, ...]
    continuation_tokens: tuple[tuple[int, ...], ...]

    @property
    def n_choices(self) -> int:
        return len(self.continuation_tokens)


@dataclass(frozen=True)
class Batching:
    """How examples are grouped into forward passes: it changes the speed, never the numbers."""

    batch_examples: int = 16  # examples per forward pass
    bucket: int = 32  # rows (and scored positions) padded to a multiple of this many tokens


DEFAULT_BATCHING = Batching()


def choices_per_example(examples: Sequence[Example]) -> int:
    """The number of continuations every example has (the scorers' [N, K] arrays need one K)."""
    counts = {ex.n_choices for ex in examples}
    if len(counts) != 1:
        raise ValueError(f"examples must share one number of continuations, got {sorted(counts)}")
    return counts.pop()


def example_rows(ex: Example, block_size: int) -> list[tuple[list[int], int]]:
    """The K scored sequences as (tokens, n_context) after left-truncating the context.

    A sequence context + continuation is fed as tokens[:-1] and predicts tokens[1:], so it fits
    when len(context) + len(continuation) - 1 <= block_size. When the longest continuation would
    not fit, the context is cut from the left (keeping its end, which the continuation continues)
    by the same amount for every continuation, so they are scored on the same context.
    """
    longest = max(len(e) for e in ex.continuation_tokens)
    keep = min(len(ex.context_tokens), block_size + 1 - longest)
    if keep < 1:
        raise UserError(
            f"a continuation has {longest} tokens, too long for block_size {block_size}"
        )
    ctx = list(ex.context_tokens[len(ex.context_tokens) - keep :])
    return [(ctx + list(e), len(ctx)) for e in ex.continuation_tokens]


def _gpt(model: nn.Module) -> GPT:
    """The GPT inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    gpt = dist.unwrap(model)
    if not isinstance(gpt, GPT):
        raise ValueError(f"expected a GPT (or one in .module/._orig_mod), got {type(gpt).__name__}")
    return gpt


def model_block_size(model: nn.Module) -> int:
    """The model's context length (positions), through DDP and torch.compile wrappers."""
    return _gpt(model).config.block_size


def model_vocab_size(model: nn.Module) -> int:
    """The model's vocabulary size (tokens), through DDP and torch.compile wrappers."""
    return _gpt(model).config.vocab_size


def require_gpt2_vocab(model: nn.Module, task: str, fix: str) -> None:
    """A task whose prompts are GPT-2 tokens (HellaSwag, CORE) refuses, in one line ending in
    `fix`, a model with a smaller vocabulary."""
    vocab = model_vocab_size(model)
    if vocab < N_VOCAB:
        raise UserError(
            f"{task} needs GPT-2's vocabulary ({N_VOCAB} tokens); this model has "
            f"vocab_size={vocab}; {fix}"
        )


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class PackedExample:
    """One example as a single row: its context once, then each continuation.

    Each continuation attends to the context and to its own earlier tokens; its positions restart
    at len(context), so every continuation sees exactly the inputs of its own context +
    continuation row. The last token of a continuation is only a target, never an input. All arrays
    are int64:
    tokens, pos, seg: [R] inputs, positions, and segment (-1 = context, k = continuation k);
    sel, targets, choice: [S] for each scored token (S = the continuations' lengths summed): the
    row index whose hidden state predicts it, the token, and its continuation k.
    """

    tokens: np.ndarray
    pos: np.ndarray
    seg: np.ndarray
    sel: np.ndarray
    targets: np.ndarray
    choice: np.ndarray


def pack_rows(
    rows: Sequence[tuple[Sequence[int], int]], shared: int, choices: Sequence[int] | None = None
) -> PackedExample:
    """One packed row from K sequences that begin with the same `shared` tokens.

    rows: (tokens, start) per sequence: the sequence is fed as tokens[:-1] and its tokens from
    index `start` (>= 1) on are scored. `shared` <= min(len(tokens)) - 1; the shared tokens are
    encoded once and each sequence's remaining inputs follow as a branch that sees them and itself.
    A scored token whose predicting position lies in the shared part is read there. `choices`
    gives each sequence's index within its example (default 0..K-1); every position stays where
    it is in its own sequence, so each branch computes exactly what its own unpacked row would.
    """
    choices = range(len(rows)) if choices is None else choices
    first = rows[0][0]
    tokens, pos, seg = list(first[:shared]), list(range(shared)), [-1] * shared
    sel: list[int] = []
    targets: list[int] = []
    choice: list[int] = []
    for k, (toks, start) in zip(choices, rows, strict=True):
        assert 1 <= start <= len(toks) and shared < len(toks), (start, shared, len(toks))
        branch = len(tokens)  # row index of this branch's first input, toks[shared]
        # target toks[j] is predicted at input position j - 1: in the shared part or the branch
        sel += [
            j - 1 if j - 1 < shared else branch + j - 1 - shared for j in range(start, len(toks))
        ]
        targets += toks[start:]
        choice += [k] * (len(toks) - start)
        tokens += toks[shared:-1]
        pos += range(shared, len(toks) - 1)
        seg += [k] * (len(toks) - 1 - shared)
    arrays = (tokens, pos, seg, sel, targets, choice)
    return PackedExample(*(np.array(a, dtype=np.int64) for a in arrays))


def pack_example(ex: Example, block_size: int) -> PackedExample:
    """The row of `ex` (context left-truncated as in `example_rows`, so every position is less
    than block_size; the row itself may be longer than block_size): its context once, then each
    continuation."""
    rows = example_rows(ex, block_size)
    return pack_rows([(toks, n_ctx) for toks, n_ctx in rows], shared=rows[0][1])


def packed_attention_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, R, R] bool, True = attend, from segments seg [B, R] (-1 context, k >= 0
    continuation k, -2 padding): causal, and within a segment or onto the context. A padding
    position sees only padding (at least itself: no fully masked row, whose softmax would be NaN)."""
    R = seg.size(1)
    causal = torch.ones(R, R, dtype=torch.bool, device=seg.device).tril()  # [R, R]
    q, k = seg[:, :, None], seg[:, None, :]  # [B, R, 1] queries, [B, 1, R] keys
    mask = causal & ((q == k) | ((k == -1) & (q >= -1)))  # [B, R, R]
    return mask[:, None]


def _packed_token_scores(
    gpt: GPT,
    idx: torch.Tensor,
    pos: torch.Tensor,
    seg: torch.Tensor,
    sel: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy [N] of each scored token and whether it is the model's greedy (argmax)
    prediction [N] bool: idx, pos, seg [B, R]; sel, targets [N] (sel indexes the flattened
    [B * R] positions; target -1 = padding, loss 0). Logits only at sel."""
    h = gpt.hidden_states(idx, pos=pos, attn_mask=packed_attention_mask(seg))  # [B, R, C]
    h = h.flatten(0, 1)[sel]  # [N, C]
    logits = gpt.logits(h).float()  # [N, vocab]: 5-20% of the positions, not all of them
    loss = F.cross_entropy(logits, targets, ignore_index=-1, reduction="none")
    return loss, logits.argmax(dim=-1) == targets


# --------------------------------------------------------------------------- batching


def bucketed_length(n: int, bucket: int, block_size: int) -> int:
    """The padded row length for a batch whose longest row has n inputs: a multiple of `bucket`,
    capped at block_size (so a compiled model sees a handful of shapes)."""
    return min(block_size, math.ceil(n / bucket) * bucket)


def _progress_bar(total: int, desc: str) -> Any:  # a tqdm bar, or None without tqdm
    try:
        from tqdm import tqdm  # optional package
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


def sorted_batches(
    lengths: Sequence[int], batch_examples: int, n_batches: int | None, progress: bool
) -> Iterator[list[int]]:
    """The example indices of each pass: sorted by length (so a batch pads little),
    `batch_examples` at a time, `n_batches` passes (>= those needed: the extra ones are empty,
    so ranks stay in step); with a progress bar if asked."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    needed = math.ceil(len(lengths) / batch_examples)
    n_batches = needed if n_batches is None else n_batches
    assert n_batches >= needed, (n_batches, needed)
    bar = _progress_bar(n_batches, "scoring") if progress else None
    try:
        for b in range(n_batches):
            yield order[b * batch_examples : (b + 1) * batch_examples]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule  # absent from a torch without distributed
    except ImportError:
        return False
    return isinstance(dist.unwrap(model), FSDPModule)


# --------------------------------------------------------------------------- scoring


def full_row_losses(
    model: nn.Module,
    examples: Sequence[Example],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    *,
    n_batches: int | None = None,
    n_choices: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The unpacked method, batched: each continuation a full context + continuation row through
    `model(x)` with logits at every position. Same result as `continuation_losses`, slower.

    With Batching(1, 1) it is build-nanogpt's one example per forward pass (the benchmark's
    baseline). `continuation_losses` uses it for FSDP-sharded models, whose root parameters are
    gathered only by a call of the model itself.
    Examples are sorted by length so each batch pads little; each forward pass is
    [K * batch_examples, L] with L a multiple of `bucket` (capped at block_size).
    Arguments as for `continuation_losses`.
    """
    K = n_choices or choices_per_example(examples)
    block_size = model_block_size(model)
    rows_per_batch = K * batching.batch_examples
    all_rows = [example_rows(ex, block_size) for ex in examples]
    lengths = [max(len(t) for t, _ in rows) for rows in all_rows]
    sums = np.zeros((len(examples), K), dtype=np.float64)
    counts = np.zeros((len(examples), K), dtype=np.int64)
    with eval_mode(model):
        for chunk in sorted_batches(lengths, batching.batch_examples, n_batches, progress):
            longest = max((len(t) - 1 for i in chunk for t, _ in all_rows[i]), default=1)
            L = bucketed_length(longest, batching.bucket, block_size)
            xn = np.zeros((rows_per_batch, L), dtype=np.int64)  # [K*E, L], 0 = padding
            yn = np.full((rows_per_batch, L), -1, dtype=np.int64)  # -1 = not scored
            for j, i in enumerate(chunk):
                for k, (toks, n_ctx) in enumerate(all_rows[i]):
                    r = K * j + k
                    xn[r, : len(toks) - 1] = toks[:-1]
                    # position p predicts token p+1: the first continuation token at p = n_ctx - 1
                    yn[r, n_ctx - 1 : len(toks) - 1] = toks[n_ctx:]
            x = torch.from_numpy(xn).to(device, non_blocking=True)
            y = torch.from_numpy(yn).to(device, non_blocking=True)
            with precision.autocast(device, autocast_dtype):
                logits, _ = model(x)  # [K*E, L, vocab]
            # Only the continuation positions (~15% of the batch) go through float + cross-entropy.
            scored = y != -1  # [K*E, L]
            tok_loss = F.cross_entropy(logits[scored].float(), y[scored], reduction="none")
            row_of = scored.nonzero()[:, 0]  # [n_scored] row of each scored position
            row_sum = torch.zeros(
                rows_per_batch, dtype=precision.accumulate_dtype(device), device=device
            )
            row_sum.index_add_(0, row_of, tok_loss.to(row_sum.dtype))
            host_sum = row_sum.cpu().numpy()
            row_cnt = scored.sum(dim=1).cpu().numpy()
            for j, i in enumerate(chunk):
                sums[i] = host_sum[K * j : K * (j + 1)]
                counts[i] = row_cnt[K * j : K * (j + 1)]
    return sums, counts


@dataclass(frozen=True)
class PackedScores:
    """Per example and choice ([N, K] arrays): summed loss of the scored tokens (nats), their
    count, and how many of them are the model's greedy (argmax) prediction."""

    sums: np.ndarray
    counts: np.ndarray
    greedy: np.ndarray


@dataclass(frozen=True)
class PackedRows:
    """Packed rows to score and whose they are: row j belongs to example owners[j]; its `choice`
    values index that example's choices; shape = (N examples, K choices) of the result."""

    rows: Sequence[PackedExample]
    owners: Sequence[int]
    shape: tuple[int, int]


def score_packed(
    model: nn.Module,
    packed: PackedRows,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    *,
    n_batches: int | None = None,
    progress: bool = False,
) -> PackedScores:
    """Score packed rows, `batching.batch_examples` rows per forward pass, into [N, K] arrays.

    Local only (no collectives). Rows are sorted by length so each batch pads little; each pass is
    [batch_examples, R] with R a multiple of `bucket`, and the scored positions are padded to a
    multiple of K * bucket, so a compiled model sees a handful of shapes. A torch.compile'd
    model's settings compile the packed step too. `n_batches` (>= the batches needed) adds empty
    passes so ranks stay in step. An example split over several rows (its sequences cropped by
    different amounts) gets each choice's numbers from the one row holding that choice.
    """
    rows, owners = packed.rows, packed.owners
    N, K = packed.shape
    gpt = _gpt(model)
    step = _packed_token_scores
    dynamo_ctx = getattr(model, "dynamo_ctx", None)  # set by torch.compile(model)
    if dynamo_ctx is not None:
        step = dynamo_ctx(_packed_token_scores)  # same backend and options as the model
    sums = np.zeros((N, K), dtype=np.float64)
    counts = np.zeros((N, K), dtype=np.int64)
    greedy = np.zeros((N, K), dtype=np.int64)
    acc_dtype = precision.accumulate_dtype(device)
    B, bucket = batching.batch_examples, batching.bucket
    lengths = [len(p.tokens) for p in rows]
    with eval_mode(model):
        for indices in sorted_batches(lengths, B, n_batches, progress):
            chunk = [rows[i] for i in indices]
            R = math.ceil(max((len(p.tokens) for p in chunk), default=1) / bucket) * bucket
            n_scored = sum(len(p.sel) for p in chunk)
            n_pad = max(1, math.ceil(n_scored / (K * bucket))) * K * bucket
            idx = np.zeros((B, R), dtype=np.int64)  # [B, R], 0 = padding
            pos = np.zeros((B, R), dtype=np.int64)
            seg = np.full((B, R), -2, dtype=np.int64)  # -2 = padding
            sel = np.zeros(n_pad, dtype=np.int64)
            targets = np.full(n_pad, -1, dtype=np.int64)  # -1 = padding: loss 0
            slot = np.full(n_pad, K * B, dtype=np.int64)  # [n_pad] (row, choice); last = dump
            n = 0
            for j, p in enumerate(chunk):
                r, s = len(p.tokens), len(p.sel)
                idx[j, :r], pos[j, :r], seg[j, :r] = p.tokens, p.pos, p.seg
                sel[n : n + s] = j * R + p.sel  # into the flattened [B * R] positions
                targets[n : n + s] = p.targets
                slot[n : n + s] = K * j + p.choice
                n += s
            idx_t, pos_t, seg_t, sel_t, targets_t, slot_t = (
                torch.from_numpy(a).to(device, non_blocking=True)
                for a in (idx, pos, seg, sel, targets, slot)
            )
            with precision.autocast(device, autocast_dtype):
                tok_loss, tok_greedy = step(gpt, idx_t, pos_t, seg_t, sel_t, targets_t)  # [n_pad]
            row_sum = torch.zeros(K * B + 1, dtype=acc_dtype, device=device)
            row_sum.index_add_(0, slot_t, tok_loss.to(acc_dtype))
            row_greedy = torch.zeros(K * B + 1, dtype=torch.int64, device=device)
            row_greedy.index_add_(0, slot_t, tok_greedy.to(torch.int64))
            host_sum, host_greedy = row_sum.cpu().numpy(), row_greedy.cpu().numpy()
            for j, i in enumerate(indices):
                # a choice lives in one row of its example: adding keeps the others' zeros
                sums[owners[i]] += host_sum[K * j : K * (j + 1)]
                greedy[owners[i]] += host_greedy[K * j : K * (j + 1)]
                counts[owners[i]] += np.bincount(rows[i].choice, minlength=K)
    return PackedScores(sums, counts, greedy)


def continuation_losses(
    model: nn.Module,
    examples: Sequence[Example],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    *,
    n_batches: int | None = None,
    n_choices: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed continuation loss (nats) and continuation token count per example and choice: two
    [N, K] arrays.

    Local only (no collectives). Each example is one packed row (`pack_example`): its context is
    encoded once for its K continuations, and vocabulary logits are computed only at the positions
    scored (`score_packed`, `batch_examples` examples per pass). `n_batches` (>= the batches
    needed) adds empty passes so ranks stay in step; `n_choices` gives K when `examples` may be
    empty (a rank with no share), else it is the examples' own.
    """
    if is_fsdp(model):
        return full_row_losses(
            model,
            examples,
            device,
            autocast_dtype,
            batching,
            n_batches=n_batches,
            n_choices=n_choices,
            progress=progress,
        )
    K = n_choices or choices_per_example(examples)
    block_size = model_block_size(model)
    packed = [pack_example(ex, block_size) for ex in examples]
    scores = score_packed(
        model,
        PackedRows(packed, range(len(packed)), (len(examples), K)),
        device,
        autocast_dtype,
        batching,
        n_batches=n_batches,
        progress=progress,
    )
    return scores.sums, scores.counts


def predictions(
    examples: Sequence[Example], sums: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Predicted continuation per example under each normalization (ties go to the lowest index):
    `acc` the lowest summed loss, `acc_norm` the lowest mean per token, `acc_norm_char` the lowest
    sum per character of the continuation's text."""
    chars = np.array([[len(e) for e in ex.continuations] for ex in examples], dtype=np.float64)
    chars = chars.reshape(sums.shape)
    return {
        "acc": np.argmin(sums, axis=1),
        "acc_norm": np.argmin(sums / np.maximum(counts, 1), axis=1),
        "acc_norm_char": np.argmin(sums / chars, axis=1),
    }


def rank_losses(
    model: nn.Module,
    examples: Sequence[Example],
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    progress: bool = False,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """This rank's share of `continuation_losses`: (indices into `examples`, [n, K] sums, [n, K]
    counts). Example i is scored on rank i % world_size; every rank runs the same number of
    passes (the largest share's), so ranks stay in step. No collectives."""
    mine = list(range(info.rank, len(examples), info.world_size))
    per_rank = math.ceil(len(examples) / info.world_size)
    sums, counts = continuation_losses(
        model,
        [examples[i] for i in mine],
        info.device,
        autocast_dtype,
        batching,
        n_batches=math.ceil(per_rank / batching.batch_examples),
        n_choices=choices_per_example(examples),
        progress=progress,
    )
    return mine, sums, counts


def accuracy(
    model: nn.Module,
    examples: Sequence[Example],
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    progress: bool = False,
) -> dict:
    """{"n", "acc", "acc_norm", "acc_norm_char"} over all ranks' examples (see `predictions`).

    Collective: each rank scores its `rank_losses` share; correct counts are all-reduced, so every
    rank returns the same dict.
    """
    indices, sums, counts = rank_losses(model, examples, info, autocast_dtype, batching, progress)
    mine = [examples[i] for i in indices]
    labels = np.array([ex.label for ex in mine], dtype=np.int64)
    preds = predictions(mine, sums, counts)
    keys = ("acc", "acc_norm", "acc_norm_char")
    local = [len(mine)] + [int((preds[k] == labels).sum()) for k in keys]
    total = dist.all_reduce_sum(torch.tensor(local, dtype=torch.int64, device=info.device))
    n, *correct = (int(v) for v in total.cpu())
    return {"n": n, **{k: c / max(n, 1) for k, c in zip(keys, correct, strict=True)}}
