"""The one exception type for problems a user can cause, and the way entry points print it.

Every entry point wraps its body in `run_cli`, which prints a `UserError` as a single line
(`error: ...`) and exits with status 2; `--debug` (or GPT2REPRO_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix: a config key, a file, a world size. The message says how."""


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; print a UserError as one line and return exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("GPT2REPRO_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
