"""What the bad-input table's cases are made of: the command lines, the tiny run, and `Case`.

The table itself is `test_bad_inputs.py`; cases grouped by area live in `cases_*.py` beside it
(each with `build(w)`, the files its cases need in the world directory, and `cases()`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from conftest import REPO, TINY_SHAPE

from gpt2repro.config import ModelConfig

PY = sys.executable
MODEL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512)
TINY = [
    *TINY_SHAPE,
    "--train.max_steps=2",
    "--eval.every=0",
]

TRAIN = [PY, str(REPO / "train.py")]
TRAIN_M = [PY, "-m", "gpt2repro.train"]
FINEWEB = [PY, str(REPO / "data_prep" / "fineweb.py")]
SHAKESPEARE = [PY, str(REPO / "data_prep" / "shakespeare.py")]
HELLASWAG = [PY, str(REPO / "data_prep" / "hellaswag.py")]
EVALUATE = [PY, "-m", "gpt2repro.evaluate"]
SAMPLE = [PY, "-m", "gpt2repro.sample"]
EXPORT = [PY, "-m", "gpt2repro.export"]
BENCH = [PY, "-m", "gpt2repro.bench"]
CONFIG = [PY, "-m", "gpt2repro.config"]


@dataclass
class Case:
    """One bad input: the command (`{w}` stands for the world directory) and what its one line
    must contain; `not_in_stdout`: output that shows work was done before the refusal; `env`:
    variables set for this case over the test's environment (`{w}` too; None removes one)."""

    id: str
    cmd: list[str]
    needles: list[str]
    not_in_stdout: list[str] = field(default_factory=list)
    env: dict[str, str | None] = field(default_factory=dict)
