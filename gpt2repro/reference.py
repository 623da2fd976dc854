"""Published numbers our runs are compared against, and when each comparison is fair.

The sources of every figure are in docs/reference.md ("Published results"); this module holds the
same numbers for the code that prints or plots them (`python -m gpt2repro.evaluate`, the report).
No torch: the report's `--help` and page stay light.
"""

from __future__ import annotations

import json
from pathlib import Path

# OpenAI GPT-2 124M's validation loss (nats/token) on the FineWeb-Edu val shard with 1024-token
# windows (build-nanogpt `play.ipynb`). Comparable only with a loss measured the same way: on the
# data data_prep/fineweb.py makes from FINEWEB_EDU, with seq_len 1024 (`gpt2_val_loss_comparable`).
GPT2_124M_VAL_LOSS = 3.2924
GPT2_124M_VAL_SEQ_LEN = 1024
FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"  # the Hugging Face dataset, as manifest.json names it

# HellaSwag validation split (10,042 examples), zero-shot:
# name -> (acc, acc_norm, acc_norm_char); None where the source gives no number for that column.
# acc_norm (per token) is comparable with our `acc_norm`, acc_norm_char (per character,
# lm-evaluation-harness) with our `acc_norm_char`; the GPT-3 paper's single figure is conventionally
# set beside acc_norm.
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


def data_source(data_dir: str | Path) -> str | None:
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


def gpt2_val_loss_comparable(data_dir: str | Path, seq_len: int | None) -> bool:
    """Whether GPT2_124M_VAL_LOSS may be set beside a validation loss measured on the shards of
    `data_dir` with `seq_len`-token windows: FineWeb-Edu data (by its manifest, not its folder's
    name) and 1024-token windows, as OpenAI's figure was measured."""
    return seq_len == GPT2_124M_VAL_SEQ_LEN and data_source(data_dir) == FINEWEB_EDU


# CORE (DCLM's 22-task metric as nanochat computes it; docs/reference.md, "CORE"). OpenAI GPT-2
# measured by nanochat with its eval bundle (README leaderboard row 0 and dev/LEADERBOARD.md for
# 1.5B; dev/estimate_gpt3_core.ipynb for all four sizes).
GPT2_SIZES_CORE = ("124M", "355M", "774M", "1.5B")
GPT2_CORE = {"124M": 0.1139, "355M": 0.1849, "774M": 0.2146, "1.5B": 0.2565}
GPT2_CORE_BAR = 0.256525  # "GPT-2 capability" on nanochat's leaderboard: CORE above GPT-2 1.5B's
# The per-task raw accuracies nanochat publishes for the four sizes (dev/estimate_gpt3_core.ipynb,
# to the 0.1% it prints); the other 16 tasks' per-task scores are not published.
GPT2_CORE_TASK_ACC: dict[str, tuple[float, float, float, float]] = {
    "hellaswag_zeroshot": (0.309, 0.390, 0.440, 0.502),
    "lambada_openai": (0.323, 0.426, 0.488, 0.523),
    "hellaswag": (0.308, 0.395, 0.444, 0.512),
    "piqa": (0.623, 0.670, 0.698, 0.725),
    "arc_easy": (0.412, 0.480, 0.535, 0.595),
    "arc_challenge": (0.222, 0.262, 0.264, 0.299),
}
# GPT-3's CORE as nanochat estimates it from six overlapping tasks (dev/estimate_gpt3_core.ipynb,
# "Estimated": GPT-3 was never evaluated on CORE).
GPT3_CORE_ESTIMATES = {
    "GPT-3 125M": 0.1484,
    "GPT-3 350M": 0.2159,
    "GPT-3 760M": 0.2659,
    "GPT-3 1.3B": 0.2914,
}
