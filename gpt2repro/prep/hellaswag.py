"""Fetch HellaSwag's validation split (10,042 examples) for gpt2repro.evaluate.

    python data_prep/hellaswag.py                         # -> data/hellaswag/hellaswag_val.jsonl
    python data_prep/hellaswag.py --file /mnt/hellaswag_val.jsonl   # air-gapped: validate + copy

(or `gpt2repro prep hellaswag ...`, or `python -m gpt2repro.prep.hellaswag ...`).
The file is downloaded from the rowanz/hellaswag repository, written atomically (temp file, fsync,
rename) and checked: 10,042 JSON lines, each with `ctx`, four `endings` and a `label` 0..3, the
schema `gpt2repro.hellaswag` reads (`check_hellaswag_row`).
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gpt2repro.atomic import atomic_open, check_output_path
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.hellaswag import read_hellaswag_rows

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
FILENAME = "hellaswag_val.jsonl"
N_EXAMPLES = 10042
TRIES = 4  # download attempts: about 14 s of waiting, plus each attempt's timeout
BACKOFF_S = 2.0  # the wait before the second attempt, doubled before each next one
TIMEOUT_S = 30  # one attempt's connect/read timeout


def validate(path: Path, shown: Path | None = None) -> int:
    """Check the file is HellaSwag's val split; return the number of examples.

    Each row is checked against the schema the evaluation reads (`check_hellaswag_row`), so a
    file accepted here is never refused by `python -m gpt2repro.evaluate`.
    """
    shown = shown or path
    try:
        n = sum(1 for _ in read_hellaswag_rows(path, shown))
    except UserError as e:
        raise UserError(f"{e}; not hellaswag_val.jsonl? download {URL} again") from None
    if n != N_EXAMPLES:
        raise UserError(
            f"{shown} holds {n} examples, expected {N_EXAMPLES} (truncated download?); "
            f"download {URL} again"
        )
    return n


def _copy_validated(src: Any, dest: Path, total: int | None, quiet: bool) -> None:
    """Stream the file object `src` into `dest` atomically: written beside it, validated, renamed."""
    bar = None
    if not quiet:
        from tqdm import tqdm  # an optional package (the `data` extra), for the bar only

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
    try:
        with atomic_open(dest, "wb", check=lambda tmp: validate(tmp, shown=dest)) as f:
            for block in iter(lambda: src.read(1 << 20), b""):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()


def open_url(url: str, tries: int = TRIES) -> Any:
    """The HTTP response for `url`, after up to `tries` attempts with a growing wait between them
    (BACKOFF_S, then doubled: 2, 4, 8 s; each attempt times out after TIMEOUT_S): a dropped route
    or a busy server often comes back. A 4xx answer is not retried (the file is not there), nor is
    a URL that cannot be right. The last failure is one line with the manual recipe."""
    reason: object = "no attempt"
    for attempt in range(1, tries + 1):
        try:
            return urllib.request.urlopen(url, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:  # the server answered: no such file, forbidden
                raise UserError(
                    f"{url} answered HTTP {e.code} ({e.reason}); download hellaswag_val.jsonl "
                    f"elsewhere and run python data_prep/hellaswag.py --file PATH/{FILENAME}"
                ) from None
            reason = f"HTTP {e.code} {e.reason}"
        except ValueError as e:  # not a URL urllib can open: no retry can fix it
            raise UserError(f"cannot download {url} ({e})") from None
        except (urllib.error.URLError, OSError) as e:  # no route, DNS, refused, timed out
            reason = getattr(e, "reason", e)
        if attempt < tries:
            delay = BACKOFF_S * 2 ** (attempt - 1)
            print(
                f"download of {url} failed ({reason}); try {attempt + 1} of {tries} in {delay:g} s",
                flush=True,
            )
            time.sleep(delay)
    raise UserError(
        f"cannot download {url} ({reason}; {tries} tries); offline, download that URL elsewhere "
        f"and run python data_prep/hellaswag.py --file PATH/{FILENAME}"
    )


def prepare(
    out_dir: str | Path = "data/hellaswag",
    file: str | Path | None = None,
    quiet: bool = False,
    tries: int = TRIES,
) -> Path:
    """The validated `hellaswag_val.jsonl` in `out_dir` (downloaded, with up to `tries`
    attempts, or copied from `file`)."""
    out = check_output_path(out_dir, "--out-dir", directory=True)  # before any download
    dest = check_output_path(out / FILENAME, "--out-dir", directory=False)
    if dest.is_file() and file is None:
        validate(dest)
        if not quiet:
            print(f"{dest}: present and valid ({N_EXAMPLES} examples)")
        return dest
    if file is not None:
        src_path = Path(file)
        if not src_path.is_file():
            raise UserError(f"--file {src_path} does not exist; download {URL} to it first")
        validate(src_path)
        if src_path.resolve() == dest.resolve():
            return dest
        with src_path.open("rb") as src:
            _copy_validated(src, dest, total=src_path.stat().st_size, quiet=quiet)
    else:
        response = open_url(URL, tries)
        with response:
            length = response.headers.get("Content-Length")
            try:
                total = int(length) if length else None
                _copy_validated(response, dest, total=total, quiet=quiet)
            except (urllib.error.URLError, OSError) as e:
                raise UserError(
                    f"download of {URL} broke off ({e}); run again, or download it elsewhere and "
                    f"pass --file"
                ) from None
    if not quiet:
        print(f"{dest}: {N_EXAMPLES} examples")
    return dest


def main(argv: list[str]) -> int:
    """Fetch or copy the validated HellaSwag file the arguments describe; 0 when done."""
    p = argparse.ArgumentParser(prog="data_prep/hellaswag.py", description=__doc__.split("\n")[0])
    add_debug_flag(p)
    p.add_argument("--out-dir", default="data/hellaswag", help="where hellaswag_val.jsonl goes")
    p.add_argument("--file", help="a local hellaswag_val.jsonl to validate and copy (no network)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--tries", type=int, default=TRIES, help="download attempts, 2, 4, 8 s apart (at least 1)"
    )
    args = p.parse_args(argv)
    if args.tries < 1:
        raise UserError(f"--tries {args.tries}: give at least 1")
    prepare(args.out_dir, args.file, quiet=args.quiet, tries=args.tries)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The command line (data_prep/hellaswag.py, `gpt2repro prep hellaswag`): `main` with
    one-line errors. Returns the exit status."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
