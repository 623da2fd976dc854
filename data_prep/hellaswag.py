"""Fetch HellaSwag's validation split (10,042 examples) for the evaluation.

    python data_prep/hellaswag.py --help

A thin command line over gpt2repro.prep.hellaswag, the same as `gpt2repro prep hellaswag ...` and
`python -m gpt2repro.prep.hellaswag ...`.
"""

from _prep import run  # data_prep/_prep.py, beside this script

if __name__ == "__main__":
    raise SystemExit(run("hellaswag"))
