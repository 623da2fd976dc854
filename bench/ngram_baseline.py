"""Count-based baselines for the demo's validation loss: what a unigram and an interpolated bigram
model, counted on the first N training tokens, score on the demo's validation tokens.

    python bench/ngram_baseline.py [--data-dir data/shakespeare] [--val-tokens 32768]

A floor to compare the demo with: a model that has seen N tokens and scores no better than the
bigram counts of N tokens has learned no more than which token follows which
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2repro.data import read_shard, shard_paths  # noqa: E402

VOCAB = 50257


def bigram_loss(train: np.ndarray, val: np.ndarray, lam: float) -> float:
    """Mean -log p(next | previous) over `val`: lam * bigram + (1 - lam) * add-0.1 unigram, or the
    unigram alone after a token never seen in `train`."""
    uni = np.bincount(train, minlength=VOCAB).astype(np.float64)
    p_uni = (uni + 0.1) / (uni.sum() + 0.1 * VOCAB)
    pairs = Counter(zip(train[:-1].tolist(), train[1:].tolist(), strict=True))
    total = 0.0
    for prev, nxt in zip(val[:-1].tolist(), val[1:].tolist(), strict=True):
        if uni[prev]:
            total -= np.log(lam * pairs.get((prev, nxt), 0) / uni[prev] + (1 - lam) * p_uni[nxt])
        else:
            total -= np.log(p_uni[nxt])
    return total / (len(val) - 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default="data/shakespeare")
    ap.add_argument("--val-tokens", type=int, default=32768, help="eval.val_tokens of the demo")
    ap.add_argument("--budgets", default="350000,700000,1000000,0", help="0 = all")
    args = ap.parse_args()
    load = lambda split: np.concatenate(  # noqa: E731
        [np.asarray(read_shard(p), dtype=np.int64) for p in shard_paths(args.data_dir, split)]
    )
    train, val = load("train"), load("val")[: args.val_tokens + 1]
    print(f"{len(train):,} training tokens; {len(val) - 1:,} validation predictions")
    for budget in (int(b) for b in args.budgets.split(",")):
        t = train[:budget] if budget else train
        uni = np.bincount(t, minlength=VOCAB).astype(np.float64)
        p_uni = (uni + 0.1) / (uni.sum() + 0.1 * VOCAB)
        uni_loss = float(-np.log(p_uni[val[1:]]).mean())
        best = min((bigram_loss(t, val, lam), lam) for lam in (0.5, 0.6, 0.7, 0.8))
        print(
            f"first {len(t):>9,} tokens: unigram {uni_loss:.3f}, bigram {best[0]:.3f} (lam {best[1]})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
