"""Tokenize FineWeb / FineWeb-Edu (HF `datasets`) or local text into llm.c `.bin` token shards.

    python data_prep/fineweb.py --help

A thin command line over gpt2repro.prep.fineweb, the same as `gpt2repro prep fineweb ...` and
`python -m gpt2repro.prep.fineweb ...`.
"""

from _prep import run  # data_prep/_prep.py, beside this script

if __name__ == "__main__":
    raise SystemExit(run("fineweb"))
