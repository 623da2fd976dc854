"""What the three scripts beside this file share: run one gpt2repro.prep source's command line.

The scripts import the installed package (`pip install -e .`, which `make venv` runs), not the
checkout: a script's directory, not the repository, is on sys.path. Without the package this is
one line saying how to install it.
"""

import importlib
import sys


def run(source: str) -> int:
    """`gpt2repro.prep.<source>.cli()` with the script's arguments; its exit status."""
    try:
        module = importlib.import_module(f"gpt2repro.prep.{source}")
    except ModuleNotFoundError as e:
        if e.name != "gpt2repro":
            raise
        print(
            "error: gpt2repro is not installed; run `pip install -e .` (or `make venv`) first",
            file=sys.stderr,
        )
        return 2
    return module.cli()
