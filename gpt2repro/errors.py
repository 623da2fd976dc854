"""The one exception type for problems a user can cause, and the way entry points print it.

Every entry point wraps its body in `run_cli`, which prints a `UserError` as a single line
(`error: ...`) and exits with status 2; `--debug` (or GPT2REPRO_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

DEBUG_HELP = "show the full traceback of an error (also GPT2REPRO_DEBUG=1)"
EXIT_INTERRUPTED = 130  # the shell's status for Ctrl-C


class UserError(Exception):
    """Something the user can fix: a config key, a file, a world size. The message says how."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """List --debug in a CLI's --help (run_cli consumes it before the parser sees it)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def run_cli(
    main: Callable[[list[str]], int | None],
    argv: list[str] | None = None,
    on_interrupt: str = "rerun the same command to continue",
) -> int:
    """Run `main(argv)`; print a UserError as one line and return exit status 2; Ctrl-C is one
    line too (`on_interrupt` says how to go on) and status 130."""
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
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: {on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
