"""Entry point so that `python train.py ...` and `torchrun ... train.py ...` both work."""

from gpt2repro.train import main

if __name__ == "__main__":
    raise SystemExit(main())
