"""Fetch (or copy from --bundle) and verify the CORE eval bundle, or build its tasks from HF.

    python data_prep/core.py --help

A thin command line over gpt2repro.prep.core, the same as `gpt2repro prep core ...` and
`python -m gpt2repro.prep.core ...`.
"""

from _prep import run  # data_prep/_prep.py, beside this script

if __name__ == "__main__":
    raise SystemExit(run("core"))
