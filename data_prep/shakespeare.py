"""The demo corpus: Shakespeare's 42 works -> token shards in data/shakespeare.

    python data_prep/shakespeare.py --help

A thin command line over gpt2repro.prep.shakespeare, the same as `gpt2repro prep shakespeare ...` and
`python -m gpt2repro.prep.shakespeare ...`.
"""

from _prep import run  # data_prep/_prep.py, beside this script

if __name__ == "__main__":
    raise SystemExit(run("shakespeare"))
