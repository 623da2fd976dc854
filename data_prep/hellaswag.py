"""Fetch HellaSwag's validation split (10,042 examples) for the evaluation.

    python data_prep/hellaswag.py --help

A thin command line over gpt2repro.prep.hellaswag, the same as `gpt2repro prep hellaswag ...` and
`python -m gpt2repro.prep.hellaswag ...`. It imports the installed package (`pip install -e .`, which
`make venv` runs), not the checkout: a script's directory, not the repository, is on sys.path.
"""

import sys

try:
    from gpt2repro.prep import hellaswag
except ModuleNotFoundError as e:
    if e.name != "gpt2repro":
        raise
    print(
        "error: gpt2repro is not installed; run `pip install -e .` (or `make venv`) first",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(hellaswag.cli())
