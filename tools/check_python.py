"""Refuse, in one line, a Python older than the project needs (make runs it before the venv).

Kept to syntax that Python 3.6 and later parse (no `from __future__ import annotations`, no
newer syntax), so an old interpreter reaches the message rather than a SyntaxError; pip would
otherwise refuse only after downloading and installing torch.
"""

import sys

MINIMUM = (3, 11)


def problem(version, executable):  # no annotations: `Sequence[int]` needs Python 3.9
    """The one-line message for interpreter `executable` at `version` (a sys.version_info or
    a tuple of ints), or None when it is new enough."""
    major, minor = version[0], version[1]
    if (major, minor) >= MINIMUM:
        return None
    return (
        f"error: gpt2repro needs Python >= {MINIMUM[0]}.{MINIMUM[1]}; {executable} is "
        f"{major}.{minor}: install python3.11 or newer and run `make PYTHON=python3.11 ...` "
        "(after `rm -rf .venv` if one was made with this Python)"
    )


if __name__ == "__main__":
    message = problem(sys.version_info, sys.executable)
    if message:
        sys.stderr.write(message + "\n")
        sys.exit(2)
