"""The demo corpus: Shakespeare's 42 works -> token shards in data/shakespeare.

    python data_prep/shakespeare.py --help

A thin command line over gpt2repro.prep.shakespeare, the same as `gpt2repro prep shakespeare ...` and
`python -m gpt2repro.prep.shakespeare ...`. It imports the installed package (`pip install -e .`, which
`make venv` runs), not the checkout: a script's directory, not the repository, is on sys.path.
"""

import sys

try:
    from gpt2repro.prep import shakespeare
except ModuleNotFoundError as e:
    if e.name != "gpt2repro":
        raise
    print(
        "error: gpt2repro is not installed; run `pip install -e .` (or `make venv`) first",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(shakespeare.cli())
