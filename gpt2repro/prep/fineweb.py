"""Tokenize FineWeb / FineWeb-Edu (HF `datasets`) or local text into llm.c `.bin` token shards.

    python data_prep/fineweb.py                                   # fineweb-edu sample-10BT
    python data_prep/fineweb.py --dataset fineweb --sample 100BT --streaming
    python data_prep/fineweb.py --input 'corpus/*.jsonl' --out-dir data/mine --prefix mine

(or `gpt2repro prep fineweb ...`, or `python -m gpt2repro.prep.fineweb ...`). This module holds
the sources (local .jsonl/.json/.parquet/.txt files, the text ones also .gz or .zst; HF FineWeb
at a pinned revision) and the CLI;
gpt2repro.prep.shards writes the shards: [50256] + encode_ordinary(text) per
document in input order, --shard-size tokens per shard, shard 0 the validation shard, bytes
independent of --workers, atomic and resumable after a kill (progress.json, then manifest.json).
HF sources are pinned to a dataset revision (--revision, default the Hub's current sha), recorded
in progress/manifest; a resume reads that revision and refuses another.
See docs/data.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO

from gpt2repro.errors import UserError, add_debug_flag, run_cli
from gpt2repro.lock import check_dir_path
from gpt2repro.prep.shards import (
    DEFAULT_SHARD_SIZE,
    MANIFEST,
    MIN_SHARD_SIZE,
    ON_INTERRUPT,
    PROGRESS,
    Item,
    ShardOptions,
    Stream,
    check_min_shard_size,
    check_out_dir,
    check_sizes,
    check_workers,
    jsonl_items,
    read_json,
    write_shards,
)
from gpt2repro.services import hub_offline_mode, hub_problem

HF_DATASETS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
SAMPLES = ("10BT", "100BT", "350BT")
HUB_TIMEOUT_S = 30  # each request to the hub: a missing route fails in this time, not minutes
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
# .jsonl/.json/.txt compressed: .gz by the standard library, .zst by the `zstandard` package
# (optional: the `data` extra); a bare `.zst` is taken as JSON lines (`x.zst` = `x.jsonl.zst`)
COMPRESSIONS = (".gz", ".zst")
READABLE = "*.jsonl, *.json, *.parquet, *.txt, each of those but parquet + .gz or .zst"
ZSTD_INSTALL = "pip install zstandard (or pip install -e '.[data]')"


# --------------------------------------------------------------------------- sources


def input_format(path: Path) -> tuple[str, str] | None:
    """(format, compression) of an input file by its name: format one of jsonl, json, parquet,
    txt; compression '' (none), '.gz' or '.zst'. None: not a file this reads."""
    name, compression = path.name, ""
    for c in COMPRESSIONS:
        if name.endswith(c) and len(name) > len(c):
            name, compression = name[: -len(c)], c
    suffix = Path(name).suffix
    if suffix == ".parquet":
        return ("parquet", "") if not compression else None  # parquet compresses inside
    if suffix in LOCAL_SUFFIXES:
        return suffix[1:], compression
    if compression == ".zst" and suffix == "":
        return "jsonl", compression
    return None


def expand_inputs(spec: str) -> list[Path]:
    """Files named by a path, a directory (every entry in it) or a glob; sorted.

    Every file named is read, or the whole input is refused naming the ones it cannot read (a
    name of another format, a directory, a link pointing nowhere, no read permission): nothing
    is skipped without a word. A .zst needs the `zstandard` package, checked here.
    """
    p = Path(spec)
    if p.is_dir():
        entries = sorted(p.iterdir())
    elif p.is_file():
        entries = [p]
    else:
        entries = sorted(Path(f) for f in glob.glob(spec, recursive=True))
    if not entries:
        raise UserError(
            f"--input {spec} matches no files; give a file, a directory or a quoted glob of "
            f"{READABLE} files"
        )
    problems = [f"{f} ({why})" for f in entries if (why := _unreadable(f)) is not None]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(
            f"--input {spec}: cannot read {'; '.join(problems[:3])}{more}; it reads {READABLE}: "
            "move the others out, or give a quoted glob of the files to read"
        )
    zst = [f for f in entries if (input_format(f) or ("", ""))[1] == ".zst"]
    if zst:
        try:
            import zstandard  # noqa: F401  an optional package (the `data` extra), for .zst only
        except ImportError:
            raise UserError(
                f"--input file {zst[0]} is zstandard-compressed and the zstandard package is not "
                f"installed; {ZSTD_INSTALL}"
            ) from None
    return entries


def _unreadable(f: Path) -> str | None:
    """Why `f` cannot be an input file, in a few words; None when it can."""
    if f.is_symlink() and not f.exists():
        return f"a link to {os.readlink(f)}, which does not exist"
    if f.is_dir():
        return "a directory: --input reads one level; use a glob such as 'DIR/**/*.jsonl'"
    if not f.is_file():
        return "not a regular file"
    if input_format(f) is None:
        return "not a format this reads"
    if not os.access(f, os.R_OK):
        return "no read permission"
    return None


def check_input_and_out_dir(spec: str, files: list[Path] | None, out_dir: str) -> None:
    """Refuse an --out-dir that overlaps the input: the same directory, one inside the other, or
    an input file inside it (data prep writes, checks and may rebuild files there, and its
    messages may advise deleting it). `files`: the input files once expanded (None: before)."""
    check_dir_path(Path(out_dir), "--out-dir")  # a file, a link loop or a dangling link: named
    out = Path(out_dir).resolve()
    given = Path(spec)
    if given.is_dir():
        src = given.resolve()
        if src == out or src in out.parents or out in src.parents:
            where = "the same directory" if src == out else "--out-dir is inside --input"
            if out in src.parents:
                where = "--input is inside --out-dir"
            raise UserError(
                f"--input {spec} and --out-dir {out_dir} overlap ({where}); write the shards to "
                "a directory outside the input"
            )
    for f in files or []:
        if out in f.resolve().parents:
            raise UserError(
                f"--input file {f} is inside --out-dir {out_dir}; write the shards to a directory "
                "outside the input"
            )


class InputPosition:
    """How far the reading is through local input files, in bytes as they lie on disk: the
    files finished, plus the current file's position (its raw, still compressed, offset; for
    parquet, the rows read as a fraction of its size). The progress bar follows it, so its total
    (the files' sizes) and its ETA hold to the end whatever the compression."""

    def __init__(self) -> None:
        self.done = 0
        self.current: Callable[[], int] = lambda: 0

    def value(self) -> int:
        return self.done + self.current()

    def finish_file(self, size: int) -> None:
        self.done += size
        self.current = lambda: 0


def local_stream(files: list[Path], text_field: str, start: int = 0) -> Stream:
    """The documents of local files from stream index `start` on, and how to measure progress:
    documents when every file says how many it holds (parquet's metadata; one per .txt), else
    the bytes read through the files as they lie on disk."""
    formats = [(input_format(f) or ("jsonl", ""))[0] for f in files]
    if files and all(fmt == "parquet" for fmt in formats):
        import pyarrow.parquet as pq  # an optional package (the `data` extra), for parquet only

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return Stream(items=local_items(files, text_field, start), documents=rows)
    if files and all(fmt == "txt" for fmt in formats):
        return Stream(items=local_items(files, text_field, start), documents=len(files))
    position = InputPosition()
    return Stream(
        items=local_items(files, text_field, start, position),
        nbytes=sum(f.stat().st_size for f in files),
        position=position.value,
    )


def local_items(
    files: list[Path], text_field: str, start: int = 0, position: InputPosition | None = None
) -> Iterator[Item]:
    """The documents of local files in order, from stream index `start` on; `position`, when
    given, follows the reading through the files."""
    skip = start
    position = position or InputPosition()
    for path in files:
        fmt, compression = input_format(path) or ("jsonl", "")
        size = path.stat().st_size
        if fmt == "parquet":
            skip = yield from _parquet_items(path, text_field, skip, position)
            position.finish_file(size)
            continue
        try:
            with _open_input(path, compression) as (f, raw):
                position.current = raw.tell
                if fmt == "txt":  # one document per file
                    if skip:
                        skip -= 1
                    else:
                        yield ("bytes", f.read(), str(path))
                elif fmt == "json" and _is_json_array(f):
                    skip = yield from _json_array_items(f, path, text_field, skip)
                else:  # JSON lines (.jsonl, or .json that is not one array)
                    skip = yield from jsonl_items(path, skip, f)
        except UserError:
            raise
        except Exception as e:  # a damaged .gz (OSError, EOFError, zlib.error) or .zst (ZstdError)
            if (
                not isinstance(e, OSError | EOFError | zlib.error)
                and type(e).__name__ != "ZstdError"
            ):
                raise
            raise UserError(_damaged(path, e)) from None
        position.finish_file(size)


def _damaged(path: Path, e: BaseException) -> str:
    """A local input file that fails while it is read, in one line."""
    return (
        f"--input file {path} cannot be read ({type(e).__name__}: {str(e)[:120]}): damaged or "
        "truncated? replace it with a good copy and run again (the shards written so far are kept)"
    )


@contextlib.contextmanager
def _open_input(
    path: Path, compression: str
) -> Iterator[tuple[io.BufferedReader | gzip.GzipFile, BinaryIO]]:
    """`path` opened for reading bytes, decompressed on the fly (.gz, .zst) where it is, and the
    raw file under it (its offset is the progress through the file)."""
    with path.open("rb") as raw:
        if compression == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz, raw
        elif compression == ".zst":
            import zstandard  # an optional package (the `data` extra), for .zst only

            yield io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), raw
        else:
            yield raw, raw


def _is_json_array(f: io.BufferedReader | gzip.GzipFile) -> bool:
    """Whether the file holds one JSON array (peeked: the file stays at its start)."""
    return f.peek(4096).lstrip().startswith(b"[")


def _json_array_items(
    f: io.BufferedReader | gzip.GzipFile, path: Path, text_field: str, skip: int
) -> Generator[Item, None, int]:
    """The rows of a file holding one JSON array, after dropping `skip`; returns the skip left."""
    try:
        rows = json.loads(f.read())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or remove the file") from None
    for i, row in enumerate(rows):
        if skip:
            skip -= 1
            continue
        text = row.get(text_field) if isinstance(row, dict) else None
        yield ("text", text, f"{path}[{i}]")
    return skip


def _parquet_items(
    path: Path, text_field: str, skip: int, position: InputPosition
) -> Generator[Item, None, int]:
    """The rows of a parquet file, after dropping `skip`; returns the skip left. `position`
    follows the rows read as a fraction of the file's size."""
    import pyarrow.parquet as pq  # an optional package (the `data` extra), for parquet input only

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise UserError(
            f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
            f"pass --text-field with the right one"
        )
    n = pf.metadata.num_rows
    if skip >= n:
        return skip - n
    row = 0
    size = path.stat().st_size
    position.current = lambda: size * row // max(n, 1)
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if skip:
                skip -= 1
            else:
                yield ("text", text, f"{path}:row {row}")
            row += 1
    return skip


def hf_source(dataset: str, sample: str, text_field: str, revision: str | None = None) -> dict:
    """The settings that identify a FineWeb sample (what resume compares), at a pinned revision."""
    return {
        "kind": "huggingface",
        "path": HF_DATASETS[dataset],
        "name": f"sample-{sample}",
        "split": "train",
        "text_field": text_field,
        "revision": revision,
    }


def saved_revision(out_dir: Path) -> str | None:
    """The dataset revision an earlier run recorded in `out_dir` (progress or manifest), if any."""
    for name in (PROGRESS, MANIFEST):
        saved = read_json(out_dir / name)
        if saved is not None:
            return saved.get("settings", {}).get("source", {}).get("revision")
    return None


def resolve_revision(repo_id: str) -> str:
    """The commit sha the Hub's default branch of dataset `repo_id` points at now (the hub's
    own errors propagate: `main` turns them into one line)."""
    import huggingface_hub  # an optional package (comes with `datasets`), for HF sources only

    sha = huggingface_hub.HfApi().dataset_info(repo_id, timeout=HUB_TIMEOUT_S).sha
    if sha is None:
        raise UserError(
            f"the Hub gave no revision for {repo_id}; pass --revision with a commit sha of that "
            "dataset (or 'main')"
        )
    return sha


def check_hub(repo_id: str, revision: str) -> None:
    """One request, with a timeout, that the hub answers and has this revision of the dataset,
    before `datasets` tries (it retries a missing route 5 times, then raises a ConnectionError).
    Skipped in offline mode (HF_HUB_OFFLINE=1): then `datasets` reads its cache, or says it
    cannot."""
    if hub_offline_mode():
        return
    import huggingface_hub  # an optional package (comes with `datasets`), for HF sources only

    huggingface_hub.HfApi().dataset_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)


def hf_revision(out_dir: Path, repo_id: str, requested: str | None) -> str:
    """The revision to read: the one a resumed run started with, else --revision, else the Hub's."""
    saved = saved_revision(out_dir)
    if saved is not None:
        if requested is not None and requested != saved:
            raise UserError(
                f"{out_dir} was started from {repo_id} revision {saved}, not --revision "
                f"{requested}; drop --revision to resume at {saved}, or use another --out-dir"
            )
        return saved
    return requested if requested is not None else resolve_revision(repo_id)


def hf_stream(source: dict, streaming: bool, start: int = 0) -> Stream:
    """The rows of an HF dataset from stream index `start` on; its number of rows if known."""
    import datasets  # an optional package (the `data` extra), for HF sources only

    check_hub(source["path"], source["revision"])
    ds = datasets.load_dataset(
        source["path"],
        name=source["name"],
        split=source["split"],
        streaming=streaming,
        revision=source["revision"],
        columns=[source["text_field"]],  # parquet builder: read only the text column
    )
    total: int | None = None
    try:
        total = len(ds)
    except TypeError:  # streaming datasets have no len(); the card may know
        info = getattr(ds, "info", None)
        splits = getattr(info, "splits", None) or {}
        split = splits.get(source["split"]) if hasattr(splits, "get") else None
        total = getattr(split, "num_examples", None) or None
    field = source["text_field"]
    label = f"{source['path']}/{source['name']}"

    # A Dataset's skip is a cheap index select; an IterableDataset's still reads (and drops, in
    # Arrow batches) every row before `start` (see docs/data.md, "Resume cost").
    rest = ds.skip(start) if start else ds
    items = (("text", row.get(field), f"{label} row {i}") for i, row in enumerate(rest, start))
    return Stream(items=items, documents=total)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="data_prep/fineweb.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_debug_flag(p)
    src = p.add_argument_group("source (one of)")
    src.add_argument(
        "--dataset", choices=sorted(HF_DATASETS), help="HF dataset (default fineweb-edu)"
    )
    src.add_argument("--sample", choices=SAMPLES, default="10BT", help="HF sample config")
    src.add_argument("--streaming", action="store_true", help="stream instead of downloading")
    src.add_argument(
        "--revision",
        help="HF dataset commit sha or branch (default: the Hub's current sha, recorded for resume)",
    )
    src.add_argument(
        "--input",
        help="local .jsonl/.json/.parquet/.txt (.jsonl/.json/.txt also .gz or .zst): a file, a "
        "dir (every file in it) or a quoted glob",
    )
    p.add_argument("--text-field", default="text", help="JSON/parquet field holding the text")
    p.add_argument("--out-dir", help="default data/edu_fineweb10B (or data/fineweb10B, ...)")
    p.add_argument("--prefix", help="shard name prefix (default edufineweb / fineweb / data)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="tokens per shard")
    p.add_argument(
        "--allow-small-shards",
        action="store_true",
        help=f"allow --shard-size below {MIN_SHARD_SIZE:,} (tests, toy corpora)",
    )
    p.add_argument("--val-docs", type=int, help="validation shard = exactly the first N documents")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.add_argument("--strict", action="store_true", help="stop at the first bad document")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = p.parse_args(argv)
    if args.input and args.dataset:
        raise UserError("give either --input (local files) or --dataset (HF), not both")
    if args.input and args.revision:
        raise UserError("--revision applies to --dataset (HF) only; drop it with --input")
    check_sizes(args.shard_size, args.val_docs)
    check_min_shard_size(args.shard_size, args.allow_small_shards)
    check_workers(args.workers)
    return args


def main(argv: list[str]) -> int:
    """Write the shards the arguments describe; 0 when done (a UserError for bad input)."""
    args = parse_args(argv)
    options = ShardOptions(
        shard_size=args.shard_size,
        val_items=args.val_docs,
        workers=args.workers,
        strict=args.strict,
        text_field=args.text_field,
        quiet=args.quiet,
    )
    if args.input:
        if not args.out_dir:
            raise UserError("--input needs --out-dir (where the shards go)")
        check_input_and_out_dir(args.input, None, args.out_dir)  # before anything reads either
        check_out_dir(args.out_dir, args.prefix or "data")
        files = expand_inputs(args.input)
        check_input_and_out_dir(args.input, files, args.out_dir)
        settings = {
            "source": {
                "kind": "local",
                "files": [[str(f.resolve()), f.stat().st_size] for f in files],
                "text_field": args.text_field,
            }
        }
        write_shards(
            lambda start: local_stream(files, text_field=args.text_field, start=start),
            args.out_dir,
            settings,
            prefix=args.prefix or "data",
            options=options,
        )
        return 0
    dataset = args.dataset or "fineweb-edu"
    short = "edu_fineweb" if dataset == "fineweb-edu" else "fineweb"
    out_dir = args.out_dir or f"data/{short}{args.sample[:-1]}"
    prefix = args.prefix or ("edufineweb" if dataset == "fineweb-edu" else "fineweb")
    check_out_dir(out_dir, prefix)  # before the revision lookup (network) and any download
    repo_id = HF_DATASETS[dataset]
    try:
        revision = hf_revision(Path(out_dir), repo_id, args.revision)
        source = hf_source(dataset, args.sample, args.text_field, revision)
        write_shards(
            lambda start: hf_stream(source, streaming=args.streaming, start=start),
            out_dir,
            {"source": source},
            prefix=prefix,
            options=options,
        )
    except Exception as e:  # the hub's failures, of many types, become one line; others pass
        problem = hub_problem(
            e,
            f"dataset {repo_id}",
            offline_recipe=(
                f"where there is network run `hf download {repo_id} --repo-type dataset "
                f"--include 'sample/{args.sample}/*' --local-dir DIR`, copy DIR here, then "
                f"`python data_prep/fineweb.py --input DIR/sample/{args.sample} --out-dir "
                f"{out_dir} --prefix {prefix}`"
            ),
            answered_hint=(
                f"pass --revision with a commit sha or branch {repo_id} has (its history: "
                f"https://huggingface.co/datasets/{repo_id}/commits/main)"
                if args.revision
                else "try again later, or pass --revision with a commit sha of that dataset"
            ),
        )
        if problem is None:
            raise
        if (Path(out_dir) / PROGRESS).exists():  # the connection broke off mid-way
            problem += "; the shards written so far are kept: rerun the same command to continue"
        raise UserError(problem) from None
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The command line (data_prep/fineweb.py, `gpt2repro prep fineweb`): `main` with one-line
    errors; Ctrl-C says how to resume. Returns the exit status."""
    return run_cli(main, argv, on_interrupt=ON_INTERRUPT)


if __name__ == "__main__":
    raise SystemExit(cli())
