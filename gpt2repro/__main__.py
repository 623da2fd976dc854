"""`python -m gpt2repro VERB ...`: the `gpt2repro` command (gpt2repro/cli.py) without the install."""

from gpt2repro.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
