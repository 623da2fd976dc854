"""CORE (DCLM's 22 in-context tasks, as nanochat's "time to GPT-2" leaderboard scores them).

A bundle (data_prep/core.py) holds `core.yaml` (the tasks: label, JSONL file, kind, shots,
delimiter), `eval_meta_data.csv` (each task's random baseline, in percent) and one JSONL per task
under `eval_data/`. The rules, which must all match for our numbers to be comparable with
nanochat's and with GPT-2's published CORE (docs/reference.md, "CORE"):

- a task's rows are shuffled with random.Random(1337); a per-task cap keeps the first N of that
  order (the in-loop subset: the same at every evaluation and after a resume), and few-shot
  examples are drawn from that capped list;
- example i's shots: random.Random(1234 + i).sample of the other examples' indices;
- prompts: each shot, then the example, joined by a blank line; within one, the task's delimiter
  (core.yaml's `continuation_delimiter`, default " ") joins query and answer. Multiple choice
  (`query`, `choices`, `gold`): one prompt per choice, shots answered with their gold choice.
  Schema (`context_options`, `continuation`, `gold`): one prompt per context option with the
  shared continuation. Language modelling (`context`, `continuation`): contexts are stripped of
  surrounding whitespace; the prompt without the continuation is stripped too;
- every sequence is <|endoftext|> + the prompt's GPT-2 tokens (text is tokenized as a whole);
- scored tokens: multiple choice, from the choices' common token prefix on; schema, the choices'
  common token suffix; language modelling, what follows the prompt without the continuation;
- a sequence longer than the model's context (block_size tokens) loses tokens from the left,
  each sequence on its own;
- multiple choice and schema pick the sequence with the lowest mean loss per scored token (ties:
  the lowest index); language modelling is right when greedy decoding reproduces every scored
  token;
- centered accuracy = (acc - b) / (1 - b) with b = baseline / 100; CORE = the tasks' mean.

Scoring runs on the packed scorer (gpt2repro.scoring): an example's sequences share their common
prefix once in a packed row (sequences cropped by different amounts go to rows of their own, since
their positions differ), logits only where scored, many rows per pass, the examples split across
ranks and every count all-reduced, so every rank returns the same result whatever their number.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2repro import dist, precision, scoring
from gpt2repro.errors import UserError
from gpt2repro.reference import GPT2_CORE, GPT2_CORE_BAR, GPT2_CORE_TASK_ACC, GPT2_SIZES_CORE
from gpt2repro.scoring import DEFAULT_BATCHING, Batching, PackedExample
from gpt2repro.tokenizer import EOT, EOT_TEXT, get_encoding

DEFAULT_CORE_BUNDLE = "data/core/eval_bundle"
SHUFFLE_SEED = 1337  # the order of a task's rows, and so its capped subset
FEWSHOT_SEED = 1234  # example i draws its shots with seed FEWSHOT_SEED + i
KINDS = ("multiple_choice", "schema", "language_modeling")
# The keys each kind's rows must have (other keys are ignored).
ROW_KEYS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
BUNDLE_HINT = "prepare it with `python data_prep/core.py` (offline: --bundle PATH)"


@dataclass(frozen=True)
class TaskSpec:
    """One task of core.yaml with its random baseline from eval_meta_data.csv (percent)."""

    label: str
    kind: str
    dataset_uri: str  # the JSONL, relative to the bundle's eval_data/
    num_fewshot: int
    delimiter: str
    random_baseline: float  # percent: 25 means a quarter of the answers right by chance


@dataclass(frozen=True)
class Item:
    """One example, tokenized: its K sequences (<|endoftext|> first, not yet cropped), where each
    one's scored tokens start, and the right choice (-1 for language modelling)."""

    sequences: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]
    gold: int


@dataclass(frozen=True)
class Task:
    """A task's spec and its rows in the seeded order (SHUFFLE_SEED). `items(cap)` tokenizes the
    first `cap` rows (0 = all), once per cap."""

    spec: TaskSpec
    rows: tuple[dict, ...]
    _items: dict[int, list[Item]] = field(default_factory=dict, compare=False, repr=False)

    def items(self, cap: int = 0) -> list[Item]:
        n = len(self.rows) if cap <= 0 else min(cap, len(self.rows))
        if n not in self._items:
            try:
                self._items[n] = task_items(self.spec, self.rows[:n])
            except UserError as e:  # say which task
                raise UserError(f"CORE task {self.spec.label}: {e}") from None
        return self._items[n]


# --------------------------------------------------------------------------- the bundle


def _is_text(value: object) -> bool:
    """A value a prompt can hold: a string, or a number the reference's template prints as str()
    prints it (a bare number in a JSONL is rendered, not refused)."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def check_row(kind: str, row: object) -> str | None:
    """Why a parsed JSON line is not a row of a `kind` task, or None when it is."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in ROW_KEYS[kind] if k not in row]
    if missing:
        return f"missing key(s) {', '.join(missing)} ({kind} rows: {', '.join(ROW_KEYS[kind])})"
    options = {"multiple_choice": "choices", "schema": "context_options"}.get(kind)
    if options is not None:
        opts = row[options]
        if not (isinstance(opts, list) and opts and all(_is_text(o) for o in opts)):
            return f"'{options}' must be a non-empty list of strings"
        gold = row["gold"]
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(opts):
            return f"'gold' must be an index into '{options}' (0..{len(opts) - 1}), got {gold!r}"
    strings = {"multiple_choice": ("query",), "schema": ("continuation",)}.get(
        kind, ("context", "continuation")
    )
    for key in strings:
        if not _is_text(row[key]):
            return f"'{key}' must be a string"
    return None


def _yaml_load(path: Path) -> Any:
    try:
        import yaml  # optional package (the `data` extra): only core.yaml needs it
    except ImportError:
        raise UserError(f"reading {path} needs PyYAML: pip install pyyaml") from None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid YAML ({type(e).__name__}); {BUNDLE_HINT}") from None


def read_baselines(path: Path) -> dict[str, float]:
    """eval_meta_data.csv's random baseline (percent) per task label."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path} ({e}); {BUNDLE_HINT}") from None
    out: dict[str, float] = {}
    for i, row in enumerate(rows, start=2):
        try:
            out[row["Eval Task"]] = float(row["Random baseline"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{path}:{i}: needs the columns 'Eval Task' and a numeric 'Random baseline'; "
                f"{BUNDLE_HINT}"
            ) from None
    return out


def read_specs(bundle: str | Path) -> list[TaskSpec]:
    """The tasks of a bundle directory (core.yaml + eval_meta_data.csv), in core.yaml's order."""
    bundle = Path(bundle)
    config, meta = bundle / "core.yaml", bundle / "eval_meta_data.csv"
    for path in (config, meta):
        if not path.is_file():
            raise UserError(f"CORE bundle file {path} not found; {BUNDLE_HINT}")
    doc = _yaml_load(config)
    tasks = doc.get("icl_tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"{config} has no 'icl_tasks' list; {BUNDLE_HINT}")
    baselines = read_baselines(meta)
    specs = []
    for i, t in enumerate(tasks):
        where = f"{config}: icl_tasks[{i}]"
        if not isinstance(t, dict) or not all(
            k in t for k in ("label", "dataset_uri", "icl_task_type", "num_fewshot")
        ):
            raise UserError(
                f"{where} needs label, dataset_uri, icl_task_type and num_fewshot; {BUNDLE_HINT}"
            )
        if t["icl_task_type"] not in KINDS:
            raise UserError(
                f"{where}: icl_task_type {t['icl_task_type']!r} is not one of {', '.join(KINDS)}"
            )
        shots = t["num_fewshot"]
        shots = shots[0] if isinstance(shots, list) and shots else shots  # core.yaml: [10]
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise UserError(f"{where}: num_fewshot must be a whole number >= 0, got {shots!r}")
        label = str(t["label"])
        if label not in baselines:
            raise UserError(f"{meta} has no row for task {label!r}; {BUNDLE_HINT}")
        specs.append(
            TaskSpec(
                label=label,
                kind=t["icl_task_type"],
                dataset_uri=str(t["dataset_uri"]),
                num_fewshot=shots,
                delimiter=str(t.get("continuation_delimiter", " ")),
                random_baseline=baselines[label],
            )
        )
    return specs


def read_rows(path: Path, kind: str) -> list[dict]:
    """The rows of a task's JSONL, each checked by `check_row`; one line per problem."""
    if not path.is_file():
        raise UserError(f"CORE task file {path} not found; {BUNDLE_HINT}")
    rows = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError
                raise UserError(
                    f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', e)})"
                ) from None
            problem = check_row(kind, row)
            if problem:
                raise UserError(f"{path}:{lineno}: {problem}")
            rows.append(row)
    if not rows:
        raise UserError(f"CORE task file {path} holds no examples; {BUNDLE_HINT}")
    return rows


def seeded_order(n: int) -> list[int]:
    """The order of a task's n rows: random.Random(SHUFFLE_SEED).shuffle of 0..n-1 (shuffling
    indices draws exactly what shuffling the rows would)."""
    order = list(range(n))
    random.Random(SHUFFLE_SEED).shuffle(order)
    return order


def load_tasks(bundle: str | Path, names: Sequence[str] | None = None) -> list[Task]:
    """The bundle's tasks (all, or those labelled `names`, in core.yaml's order), their rows read,
    checked and put in the seeded order. Tokenized lazily, per cap (`Task.items`)."""
    bundle = Path(bundle)
    specs = read_specs(bundle)
    if names:
        known = {s.label for s in specs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"--core-tasks: unknown task(s) {', '.join(unknown)}; the bundle has "
                f"{', '.join(s.label for s in specs)}"
            )
        specs = [s for s in specs if s.label in set(names)]
    tasks = []
    for spec in specs:
        rows = read_rows(bundle / "eval_data" / spec.dataset_uri, spec.kind)
        tasks.append(Task(spec, tuple(rows[i] for i in seeded_order(len(rows)))))
    return tasks


def check_cap(cap: int, tasks: Sequence[Task], option: str = "--core-max-per-task") -> None:
    """A cap must leave every task enough examples for its shots (drawn from the others)."""
    if cap <= 0:
        return
    need = max(t.spec.num_fewshot for t in tasks) + 1
    if cap < need:
        raise UserError(
            f"{option} {cap} is too small: a {need - 1}-shot task draws its shots from the other "
            f"examples of the capped set; pass {option} {need} or more (0 = all)"
        )


# --------------------------------------------------------------------------- prompts


def fewshot_indices(n: int, i: int, k: int) -> list[int]:
    """Example i's k shots among n: random.Random(FEWSHOT_SEED + i).sample of the indices other
    than i. Sampling range(n - 1) and skipping i draws exactly what sampling the list
    [j for j in range(n) if j != i] would, without building it (n is up to ~20,000)."""
    if k == 0:
        return []
    if k > n - 1:
        raise UserError(f"a {k}-shot task needs at least {k + 1} examples, got {n}")
    picks = random.Random(FEWSHOT_SEED + i).sample(range(n - 1), k)
    return [j + (j >= i) for j in picks]


def render_prompts(spec: TaskSpec, rows: Sequence[dict], i: int) -> list[str]:
    """Example i's prompts: one per choice (multiple choice), one per context option (schema), or
    [without, with] the continuation (language modelling)."""
    row, d = rows[i], spec.delimiter
    shots = [rows[j] for j in fewshot_indices(len(rows), i, spec.num_fewshot)]
    if spec.kind == "multiple_choice":
        head = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{head}{row['query']}{d}{c}" for c in row["choices"]]
    if spec.kind == "schema":
        head = "".join(
            f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots
        )
        return [f"{head}{c}{d}{row['continuation']}" for c in row["context_options"]]
    head = "".join(f"{str(s['context']).strip()}{d}{s['continuation']}\n\n" for s in shots)
    prompt = f"{head}{str(row['context']).strip()}{d}"
    # stripped: a trailing space would be a token of its own here but merge into the
    # continuation's first token in the full prompt, so the two would not share a prefix
    return [prompt.strip(), f"{prompt}{row['continuation']}"]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """The length of the longest prefix all `seqs` share."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def common_suffix(seqs: Sequence[Sequence[int]]) -> int:
    """The length of the longest suffix all `seqs` share."""
    return common_prefix([s[::-1] for s in seqs])


def task_items(spec: TaskSpec, rows: Sequence[dict]) -> list[Item]:
    """Every row of a task as an Item (prompts rendered, then tokenized in one batch)."""
    enc = get_encoding()
    prompts = [render_prompts(spec, rows, i) for i in range(len(rows))]
    flat = [p for ps in prompts for p in ps]
    # <|endoftext|> in a text is that one token, as nanochat's (Hugging Face) tokenizer reads it
    tokens = enc.encode_batch(flat, allowed_special={EOT_TEXT})
    items, k = [], 0
    for row, ps in zip(rows, prompts, strict=True):
        seqs = [(EOT, *t) for t in tokens[k : k + len(ps)]]
        k += len(ps)
        if spec.kind == "multiple_choice":
            start = common_prefix(seqs)
            items.append(Item(tuple(seqs), (start,) * len(seqs), row["gold"]))
        elif spec.kind == "schema":
            suffix = common_suffix(seqs)
            starts = tuple(len(s) - suffix for s in seqs)
            items.append(Item(tuple(seqs), starts, row["gold"]))
        else:
            without, with_ = seqs
            # the prompt without the continuation is a token prefix of the one with it (as the
            # reference asserts); should a tokenization ever merge across, the common prefix
            start = common_prefix([without, with_])
            items.append(Item((with_,), (start,), -1))
    return items


# --------------------------------------------------------------------------- scoring


def cropped(item: Item, block_size: int) -> list[tuple[tuple[int, ...], int, int]]:
    """Each sequence as (tokens, start, crop) after dropping `crop` tokens from the left so that
    at most block_size remain (the reference's rule, sequence by sequence). Raises when the
    scored tokens alone do not fit."""
    out = []
    for seq, start in zip(item.sequences, item.starts, strict=True):
        crop = max(0, len(seq) - block_size)
        if start - crop < 1:
            raise UserError(
                f"a CORE example scores {len(seq) - start} tokens, which do not fit the model's "
                f"block_size {block_size} after its prompt"
            )
        out.append((seq[crop:], start - crop, crop))
    return out


def pack_item(item: Item, block_size: int) -> list[PackedExample]:
    """The packed rows of an item: sequences cropped by the same amount share one row (their
    common prefix once); those cropped differently sit at other positions and get rows of
    their own."""
    groups: dict[int, list[tuple[int, tuple[int, ...], int]]] = {}
    for k, (toks, start, crop) in enumerate(cropped(item, block_size)):
        groups.setdefault(crop, []).append((k, toks, start))
    rows = []
    for members in groups.values():
        seqs = [toks for _, toks, _ in members]
        shared = min(common_prefix(seqs), min(len(s) for s in seqs) - 1)
        rows.append(
            scoring.pack_rows(
                [(toks, start) for _, toks, start in members],
                shared,
                choices=[k for k, _, _ in members],
            )
        )
    return rows


def item_correct(item: Item, sums: np.ndarray, counts: np.ndarray, greedy: np.ndarray) -> bool:
    """Whether the model got an item right from its [K] summed losses, token counts and greedy
    matches: lowest mean loss (first on ties) is the gold choice; or, for language modelling,
    every scored token is the greedy prediction.

    A choice with no scored token (it is a token prefix of another choice) has no mean, NaN in the
    reference, whose min() then keeps a NaN in first place and skips one anywhere else: so such a
    choice 0 is the prediction, and such a later choice never is."""
    K = len(item.sequences)
    if item.gold < 0:
        return bool(greedy[0] == counts[0])
    if counts[0] == 0:
        return item.gold == 0
    means = np.where(counts[:K] > 0, sums[:K] / np.maximum(counts[:K], 1), np.inf)
    return int(np.argmin(means)) == item.gold


def check_vocab(model: nn.Module, fix: str = "drop --core") -> None:
    """CORE's prompts are GPT-2 tokens: a model with a smaller vocabulary is refused in one line
    ending in `fix` (how to turn CORE off where it was asked for)."""
    scoring.require_gpt2_vocab(model, "CORE", fix)


def score_items(
    model: nn.Module,
    items: Sequence[Item],
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    progress: bool = False,
) -> tuple[list[int], scoring.PackedScores]:
    """This rank's share of `items` (item i on rank i % world_size) scored packed: (its indices,
    [n, K] sums, counts, greedy matches). Every rank runs the same number of passes (the largest
    share's rows), so ranks stay in step. No collectives. An FSDP-sharded model is scored by
    `full_row_scores` instead (its root parameters are gathered only by a call of the model)."""
    mine = list(range(info.rank, len(items), info.world_size))
    if scoring.is_fsdp(model):
        return mine, full_row_scores(model, items, info, autocast_dtype, batching)
    block_size = scoring.model_block_size(model)
    K = max((len(it.sequences) for it in items), default=1)
    packs = [pack_item(it, block_size) for it in items]  # every rank packs all: pass counts
    per_rank = [0] * info.world_size
    for i, p in enumerate(packs):
        per_rank[i % info.world_size] += len(p)
    n_batches = math.ceil(max(per_rank) / batching.batch_examples)
    rows: list[PackedExample] = []
    owners: list[int] = []
    for j, i in enumerate(mine):
        rows += packs[i]
        owners += [j] * len(packs[i])
    scores = scoring.score_packed(
        model,
        scoring.PackedRows(rows, owners, (len(mine), K)),
        info.device,
        autocast_dtype,
        batching,
        n_batches=n_batches,
        progress=progress,
    )
    return mine, scores


def full_row_scores(
    model: nn.Module,
    items: Sequence[Item],
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
) -> scoring.PackedScores:
    """This rank's share of `items` (as `score_items`) unpacked: each cropped sequence a row of
    its own through `model(x)`, logits at every position, `batch_examples` rows per pass padded to
    a multiple of `bucket`. For FSDP-sharded models, whose root parameters only a call of the
    model gathers; every rank runs the same number of passes (empty ones included). Same numbers
    as the packed scorer, more work."""
    block_size = scoring.model_block_size(model)
    K = max((len(it.sequences) for it in items), default=1)
    B, device = batching.batch_examples, info.device
    per_rank = [0] * info.world_size
    for i, it in enumerate(items):
        per_rank[i % info.world_size] += len(it.sequences)
    mine = range(info.rank, len(items), info.world_size)
    rows = [
        (j, k, toks, start)
        for j, i in enumerate(mine)
        for k, (toks, start, _) in enumerate(cropped(items[i], block_size))
    ]
    shape = (len(mine), K)
    sums, counts, greedy = np.zeros(shape), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    acc_dtype = precision.accumulate_dtype(device)
    n_batches = math.ceil(max(per_rank) / B)
    lengths = [len(r[2]) for r in rows]
    with scoring.eval_mode(model):
        for chunk in scoring.sorted_batches(lengths, B, n_batches, progress=False):
            longest = max((lengths[c] - 1 for c in chunk), default=1)
            L = scoring.bucketed_length(longest, batching.bucket, block_size)
            x = np.zeros((B, L), dtype=np.int64)  # [B, L], 0 = padding
            y = np.full((B, L), -1, dtype=np.int64)  # -1 = not scored
            for r, c in enumerate(chunk):
                _, _, toks, start = rows[c]
                x[r, : len(toks) - 1] = toks[:-1]
                y[r, start - 1 : len(toks) - 1] = toks[start:]  # position p predicts p + 1
            xt = torch.from_numpy(x).to(device, non_blocking=True)
            yt = torch.from_numpy(y).to(device, non_blocking=True)
            with precision.autocast(device, autocast_dtype):
                logits, _ = model(xt)  # [B, L, vocab]
            scored = yt != -1  # [B, L]
            lg = logits[scored].float()  # [n_scored, vocab]
            tok_loss = F.cross_entropy(lg, yt[scored], reduction="none")
            row_of = scored.nonzero()[:, 0]  # [n_scored] row of each scored position
            row_sum = torch.zeros(B, dtype=acc_dtype, device=device)
            row_sum.index_add_(0, row_of, tok_loss.to(acc_dtype))
            row_hit = torch.zeros(B, dtype=torch.int64, device=device)
            row_hit.index_add_(0, row_of, (lg.argmax(-1) == yt[scored]).to(torch.int64))
            host_sum, host_hit = row_sum.cpu().numpy(), row_hit.cpu().numpy()
            host_cnt = scored.sum(dim=1).cpu().numpy()
            for r, c in enumerate(chunk):
                j, k = rows[c][0], rows[c][1]
                sums[j, k], greedy[j, k], counts[j, k] = host_sum[r], host_hit[r], host_cnt[r]
    return scoring.PackedScores(sums, counts, greedy)


def one_item_per_pass(
    model: nn.Module,
    items: Sequence[Item],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference method: one item per forward pass (its K cropped sequences padded into one
    [K, L] batch, logits at every position), as nanochat's core_eval does. [N, K] summed losses,
    counts and greedy matches, to compare with `score_items` (`python -m gpt2repro.bench core`)."""
    K = max(len(it.sequences) for it in items)
    sums = np.zeros((len(items), K))
    counts = np.zeros((len(items), K), dtype=np.int64)
    greedy = np.zeros((len(items), K), dtype=np.int64)
    block_size = scoring.model_block_size(model)
    with scoring.eval_mode(model):
        for i, it in enumerate(items):
            rows = cropped(it, block_size)
            L = max(len(t) for t, _, _ in rows)
            x = torch.zeros((len(rows), L), dtype=torch.long)
            for k, (t, _, _) in enumerate(rows):
                x[k, : len(t)] = torch.tensor(t)
            x = x.to(device)
            with precision.autocast(device, autocast_dtype):
                logits, _ = model(x)  # [K, L, vocab]
            for k, (t, start, _) in enumerate(rows):
                lg = logits[k, start - 1 : len(t) - 1].float()
                y = x[k, start : len(t)]
                sums[i, k] = F.cross_entropy(lg, y, reduction="sum").item()
                counts[i, k] = len(y)
                greedy[i, k] = int((lg.argmax(-1) == y).sum())
    return sums, counts, greedy


def centered(acc: float, baseline_percent: float) -> float:
    """(acc - b) / (1 - b), b = baseline_percent / 100: 0 at chance, 1 when all are right."""
    b = 0.01 * baseline_percent
    return (acc - b) / (1.0 - b)


def evaluate_core(
    model: nn.Module,
    tasks: Sequence[Task],
    info: dist.DistInfo,
    max_per_task: int = 0,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    progress: bool = False,
) -> dict[str, Any]:
    """CORE of `model` on `tasks`, each capped at its first `max_per_task` rows in the seeded
    order (0 = all): {"core", "tasks": {label: {"n", "acc", "centered", "baseline", "shots",
    "kind"}}}. Collective: every rank calls it with the same arguments; the examples of all
    tasks are scored in one packed stream split across ranks, the correct counts all-reduced,
    so every rank returns the same dict."""
    check_vocab(model)
    check_cap(max_per_task, tasks)
    per_task = [t.items(max_per_task) for t in tasks]
    items = [it for its in per_task for it in its]
    task_of = np.repeat(np.arange(len(tasks)), [len(its) for its in per_task])
    mine, scores = score_items(model, items, info, autocast_dtype, batching, progress)
    correct = np.zeros(len(tasks), dtype=np.int64)
    for j, i in enumerate(mine):
        if item_correct(items[i], scores.sums[j], scores.counts[j], scores.greedy[j]):
            correct[task_of[i]] += 1
    total = dist.all_reduce_sum(torch.from_numpy(correct).to(info.device))
    correct = total.cpu().numpy()
    out: dict[str, Any] = {"tasks": {}}
    for t, its, c in zip(tasks, per_task, correct, strict=True):
        acc = float(c) / len(its)
        out["tasks"][t.spec.label] = {
            "n": len(its),
            "acc": acc,
            "centered": centered(acc, t.spec.random_baseline),
            "baseline": t.spec.random_baseline,
            "shots": t.spec.num_fewshot,
            "kind": t.spec.kind,
        }
    out["core"] = float(np.mean([r["centered"] for r in out["tasks"].values()]))
    return out


def _fmt(v: float | None, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.4f}"


def core_table(label: str, result: dict[str, Any]) -> str:
    """Our per-task accuracy and centered accuracy beside GPT-2's published accuracy for the four
    sizes (where nanochat publishes one), and the CORE line beside GPT-2's CORE."""
    sizes = GPT2_SIZES_CORE
    head = f"{'task':<34} {'shots':>5} {'n':>6} {'acc':>7} {'centered':>9}"
    head += "".join(f" {'GPT-2 ' + s:>11}" for s in sizes)
    lines = [f"CORE of {label}", head, "-" * len(head)]
    for name, r in result["tasks"].items():
        published = GPT2_CORE_TASK_ACC.get(name, (None,) * len(sizes))
        line = f"{name[:34]:<34} {r['shots']:>5} {r['n']:>6} {r['acc']:>7.4f} {r['centered']:>9.4f}"
        lines.append(line + "".join(f" {_fmt(v, 11)}" for v in published))
    lines.append("-" * len(head))
    core = f"{'CORE (mean centered)':<34} {'':>5} {'':>6} {'':>7} {result['core']:>9.4f}"
    lines.append(core + "".join(f" {GPT2_CORE[s]:>11.4f}" for s in sizes))
    lines.append(
        "GPT-2 columns: accuracy per task where nanochat publishes it, CORE on the last line "
        f"(GPT-2 capability: CORE > {GPT2_CORE_BAR}). Comparable only on the full bundle with "
        "no --core-max-per-task (docs/reference.md, CORE)."
    )
    return "\n".join(lines)
