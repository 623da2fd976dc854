"""Entry point so that `python train.py ...` and `torchrun ... train.py ...` both work."""

import sys

if __name__ == "__main__":
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        from gpt2repro.config import help_text  # no torch import: --help answers at once

        print(help_text("train.py"))
        raise SystemExit(0)
    from gpt2repro.train import main

    raise SystemExit(main())
