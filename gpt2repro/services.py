"""External services: wandb's login and the Hugging Face hub, and the one line for each failure.

Which failure is an input error (a UserError: exit status 2, so launch/restart_until_done.sh does
not retry it) and which is not, on purpose:

- `log.wandb_mode=online` with no wandb login here: an input error, found at start-up before any
  training (`wandb_problem`), as is the wandb package missing; retrying cannot log in.
- wandb unreachable at start, or failing during the run: not an error at all. The run goes on
  (metrics.WandbLogger falls back to offline, or goes on without wandb, with one warning): the run
  never dies for its dashboard, and every number is in metrics.jsonl anyway.
- the hub unreachable (no route, DNS, a timeout, HF_HUB_OFFLINE=1, not in the local cache): an
  input error with the offline recipe (`hf download ...` where there is network, then the local
  copy: data prep's `--input DIR`, evaluate's and sample's `--hf DIR`); a retry on the same
  machine rarely helps, and data prep is not run by the restart loop.
- the hub answered no (no such repo or revision, gated, an HTTP error): an input error naming
  what it refused; only then is `--revision` suggested.

Torch-free and without wandb or huggingface_hub imports: the checks read environment variables
and files, and the hub's exceptions are told apart by their class names (requests, httpx and
huggingface_hub raise their own types, and none of them needs to be installed to classify).
`python -m gpt2repro.services wandb-login` is launch/cloud_setup.sh's check before it starts a
job that asks for online.
"""

from __future__ import annotations

import argparse
import importlib.util
import netrc
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from gpt2repro.errors import UserError, add_debug_flag, run_cli

WANDB_DEFAULT_HOST = "https://api.wandb.ai"  # wandb's own default for WANDB_BASE_URL

# Exception class names (anywhere in an exception's MRO) that mean the hub was never reached:
# the builtins, requests/urllib3, httpx, and huggingface_hub's offline and not-cached errors.
_UNREACHABLE = frozenset(
    {
        "ConnectionError",  # builtin (datasets raises it), and requests' own
        "TimeoutError",
        "gaierror",  # DNS
        "MaxRetryError",
        "NewConnectionError",
        "Timeout",
        "ConnectTimeout",
        "ReadTimeout",
        "TransportError",  # httpx: ConnectError, ReadTimeout, ... (a response never came)
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",  # not in the cache, and the network is off or unreachable
    }
)
# huggingface_hub's errors for a hub that answered (an HTTP status): what it said is the cause.
_ANSWERED = frozenset({"HfHubHTTPError", "HTTPStatusError", "HTTPError"})


# --------------------------------------------------------------------------- wandb


def netrc_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The netrc file wandb reads its key from: $NETRC, else ~/.netrc (~/_netrc where only that
    exists, as wandb does)."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    unix, windows = home / ".netrc", home / "_netrc"
    return windows if windows.exists() and not unix.exists() else unix


def wandb_problem(mode: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """For log.wandb_mode=`mode`: what would stop wandb at start-up, as the one-line refusal, or
    None. Found without the network and without importing wandb (so a training start-up pays
    nothing): the package missing (online or offline), or, online, no API key where wandb looks
    for one, in its order: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, then the netrc entry
    (`wandb login` writes it) for the host of WANDB_BASE_URL (default api.wandb.ai). Whether the
    key is valid only the server can say; wandb.init finds that out.
    """
    if mode == "disabled":
        return None
    if importlib.util.find_spec("wandb") is None:
        return (
            f"log.wandb_mode={mode} needs wandb: pip install 'gpt2repro[wandb]' "
            "(or set --log.wandb_mode=disabled)"
        )
    if mode != "online" or environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    host = urlsplit(environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST).netloc
    path = netrc_file(environ)
    found = "no WANDB_API_KEY"
    try:
        entry = netrc.netrc(path).authenticators(host) if path.is_file() else None
        found += f", no {host} entry in {path}"
    except netrc.NetrcParseError as e:  # unreadable: say so, it is the user's file
        entry = None
        found += f", {path} unreadable ({e.msg}, line {e.lineno})"
    except OSError as e:
        entry = None
        found += f", {path} unreadable ({e.strerror or e})"
    if entry is not None and entry[2]:
        return None
    return (
        f"log.wandb_mode=online but wandb has no login here ({found}); run `wandb login` "
        "(or export WANDB_API_KEY=...), or train with --log.wandb_mode=offline and upload later "
        "with `wandb sync` (docs/wandb.md)"
    )


# --------------------------------------------------------------------------- the Hugging Face hub


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or while handling, outermost first (a context
    that `raise ... from None` hid is left out, as Python's own traceback leaves it out)."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        if cur.__cause__ is not None:
            todo.append(cur.__cause__)
        elif cur.__context__ is not None and not cur.__suppress_context__:
            todo.append(cur.__context__)


def _first(e: BaseException, names: frozenset[str]) -> BaseException | None:
    """The outermost exception of `e`'s chain with one of these class names in its MRO (a broken
    pipe, a ConnectionError too, is a local worker's, not the network's)."""
    return next(
        (
            x
            for x in _chain(e)
            if {c.__name__ for c in type(x).__mro__} & names and not isinstance(x, BrokenPipeError)
        ),
        None,
    )


def hub_unreachable(e: BaseException) -> bool:
    """Whether `e` (or what it came from) says the hub was never reached: no route, DNS, a
    timeout, offline mode, or a file not in the cache while offline."""
    return _first(e, _UNREACHABLE) is not None


def hub_answered(e: BaseException) -> bool:
    """Whether the hub answered (an HTTP status: no such repo or revision, gated, a 5xx)."""
    return not hub_unreachable(e) and _first(e, _ANSWERED) is not None


def hub_offline_mode(environ: Mapping[str, str] = os.environ) -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set to a true value: no request is made."""
    values = (environ.get("HF_HUB_OFFLINE", ""), environ.get("HF_DATASETS_OFFLINE", ""))
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in values)


def _reason(e: BaseException) -> str:
    """The cause for the one line: the offline switch, else the type and first line (at most
    100 characters) of the outermost exception that says what happened."""
    if hub_offline_mode() or _first(e, frozenset({"OfflineModeIsEnabled"})) is not None:
        return "HF_HUB_OFFLINE=1 is set"
    x = _first(e, _UNREACHABLE) or _first(e, _ANSWERED) or e
    text = (str(x).strip().splitlines() or [""])[0][:100]
    return f"{type(x).__name__}: {text}" if text else type(x).__name__


def hub_problem(e: BaseException, what: str, offline_recipe: str, answered_hint: str) -> str | None:
    """The one line for a hub failure while reading `what` (e.g. "dataset X"), or None when `e`
    is not the hub's (the caller re-raises it). Unreachable: the cause and `offline_recipe` (what
    to download where there is network and how to use it here); answered: what it said and
    `answered_hint` (e.g. which --revision to pass)."""
    if isinstance(e, UserError):
        return None
    if hub_unreachable(e):
        return f"cannot reach the Hugging Face hub for {what} ({_reason(e)}); {offline_recipe}"
    if hub_answered(e):
        return f"the Hugging Face hub refused {what} ({_reason(e)}); {answered_hint}"
    return None


# --------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    """`wandb-login`: exit 0 when wandb has a key here, else the one-line error (status 2)."""
    p = argparse.ArgumentParser(
        prog="python -m gpt2repro.services",
        description="check that an external service can be used here before a job starts",
    )
    add_debug_flag(p)
    p.add_argument("check", choices=["wandb-login"], help="wandb-login: wandb has an API key")
    p.parse_args(argv)
    problem = wandb_problem("online")
    if problem is not None:
        raise UserError(problem)
    print("wandb: logged in (an API key is configured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
