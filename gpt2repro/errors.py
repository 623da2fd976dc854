"""The one exception type for problems a user can cause, and the way entry points print it.

Every entry point wraps its body in `run_cli`, which prints a `UserError` as a single line
(`error: ...`) and exits with status 2; `--debug` (or GPT2REPRO_DEBUG=1) shows the traceback.

A launcher cannot always pass status 2 on: torchrun reports any failed worker as status 1. So when
GPT2REPRO_INPUT_ERROR_FILE names a path, `run_cli` also writes that line there (the first process
to fail writes it; the others leave it; a `RankFailed`, another rank's crash, is not written), and
launch/restart_until_done.sh, which sets the variable, stops retrying when the file exists after
an attempt.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

DEBUG_HELP = "show the full traceback of an error (also GPT2REPRO_DEBUG=1)"
EXIT_INTERRUPTED = 130  # the shell's status for Ctrl-C
EXIT_BROKEN_PIPE = 141  # the shell's status for a process killed by SIGPIPE
INPUT_ERROR_FILE_ENV = "GPT2REPRO_INPUT_ERROR_FILE"


class UserError(Exception):
    """Something the user can fix: a config key, a file, a world size. The message says how."""


class RankFailed(UserError):
    """Another rank crashed (not an input error). Printed as one line like a UserError, so the log
    holds one traceback, the failing rank's; but not written to GPT2REPRO_INPUT_ERROR_FILE, so
    restart_until_done.sh restarts as after any crash."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """List --debug in a CLI's --help (run_cli consumes it before the parser sees it)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def run_cli(
    main: Callable[[list[str]], int | None],
    argv: list[str] | None = None,
    on_interrupt: str = "rerun the same command to continue",
) -> int:
    """Run `main(argv)`; print a UserError as one line and return exit status 2; Ctrl-C is one
    line too (`on_interrupt` says how to go on) and status 130; output into a closed pipe ends
    quietly with status 141."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("GPT2REPRO_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except UserError as e:
        if not isinstance(e, RankFailed):  # also under --debug: it is an input error all the same
            report_input_error(f"error: {e}")
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: {on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as a shell tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return EXIT_BROKEN_PIPE


def report_input_error(line: str) -> None:
    """Write `line` (made one line) to the file $GPT2REPRO_INPUT_ERROR_FILE names, if it is set.

    The file is created exclusively, so among several ranks the first to fail writes and the rest
    find it there and leave it. Best effort: a path that cannot be written is ignored, because the
    error itself is already on stderr and must not be masked by a second one."""
    path = os.environ.get(INPUT_ERROR_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(" ".join(line.splitlines()) + "\n")
    except (OSError, ValueError):  # exists already, unwritable, or not a valid path
        pass
