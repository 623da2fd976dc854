"""HellaSwag: its raw rows -> generic multiple-choice Examples, scored by gpt2repro.scoring.

The reference method (llm.c / build-nanogpt `hellaswag.py`): context tokens, then the tokens of
`" " + ending`; cross-entropy over the ending tokens only. `acc` = argmin of the summed loss,
`acc_norm` = argmin of the per-token mean loss, `acc_norm_char` = argmin of the summed loss divided
by the ending's character length (lm-evaluation-harness's normalization). The published figures
set beside ours: gpt2repro.reference.PUBLISHED.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from gpt2repro import dist, scoring
from gpt2repro.errors import UserError
from gpt2repro.reference import PUBLISHED
from gpt2repro.scoring import DEFAULT_BATCHING, Batching, Example
from gpt2repro.tokenizer import get_encoding

DEFAULT_HELLASWAG = "data/hellaswag/hellaswag_val.jsonl"
N_ENDINGS = 4


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


def make_example(ctx: str, endings: Sequence[str], label: int) -> Example:
    """Tokenize like the reference: encode(ctx), encode(" " + ending)."""
    enc = get_encoding()
    return Example(
        context=ctx,
        continuations=tuple(endings),
        label=label,
        context_tokens=tuple(enc.encode_ordinary(ctx)),
        continuation_tokens=tuple(tuple(enc.encode_ordinary(" " + e)) for e in endings),
    )


def load_hellaswag(path: str | Path, limit: int = 0) -> list[Example]:
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
    examples: list[Example] = []
    for row in read_hellaswag_rows(path):
        examples.append(make_example(row["ctx"], row["endings"], row["label"]))
        if 0 < limit <= len(examples):
            break
    if not examples:
        raise UserError(f"HellaSwag file {path} holds no examples")
    return examples


def score_hellaswag(
    model: nn.Module,
    examples: Sequence[Example],
    info: dist.DistInfo,
    autocast_dtype: torch.dtype | None = None,
    batching: Batching = DEFAULT_BATCHING,
    progress: bool = False,
) -> dict:
    """HellaSwag accuracy: {"n", "acc", "acc_norm", "acc_norm_char"} over all ranks' examples.

    Collective (`scoring.accuracy`): every rank returns the same dict.
    """
    scoring.require_gpt2_vocab(
        model, "HellaSwag", "turn HellaSwag off for it (eval.hellaswag_every=0)"
    )
    return scoring.accuracy(model, examples, info, autocast_dtype, batching, progress)


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
