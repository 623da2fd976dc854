"""Tokenize FineWeb / FineWeb-Edu (HF `datasets`) or local text into llm.c `.bin` token shards.

    python data_prep/fineweb.py                                   # fineweb-edu sample-10BT
    python data_prep/fineweb.py --dataset fineweb --sample 100BT --streaming
    python data_prep/fineweb.py --input 'corpus/*.jsonl' --out-dir data/mine --prefix mine

(or `gpt2repro prep fineweb ...`, or `python -m gpt2repro.prep.fineweb ...`). This module holds
the sources (local .jsonl/.json/.parquet/.txt files, HF FineWeb at a pinned revision) and the CLI;
gpt2repro.prep.shards writes the shards: [50256] + encode_ordinary(text) per
document in input order, --shard-size tokens per shard, shard 0 the validation shard, bytes
independent of --workers, atomic and resumable after a kill (progress.json, then manifest.json).
HF sources are pinned to a dataset revision (--revision, default the Hub's current sha), recorded
in progress/manifest; a resume reads that revision and refuses another.
See docs/data.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path

from gpt2repro.errors import UserError, add_debug_flag, run_cli
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


# --------------------------------------------------------------------------- sources


def expand_inputs(spec: str) -> list[Path]:
    """Files named by a path, a directory (its supported files) or a glob; sorted."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in LOCAL_SUFFIXES and f.is_file())
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
    if not files:
        raise UserError(
            f"--input {spec} matches no files; give a file, a directory or a quoted glob of "
            f"{', '.join(LOCAL_SUFFIXES)} files"
        )
    for f in files:
        if f.suffix not in LOCAL_SUFFIXES:
            raise UserError(
                f"--input file {f} has an unsupported suffix; use {', '.join(LOCAL_SUFFIXES)}"
            )
    return files


def local_stream(files: list[Path], text_field: str, start: int = 0) -> Stream:
    """The documents of local files from stream index `start` on; their total size in bytes."""
    return Stream(
        items=local_items(files, text_field, start), nbytes=sum(f.stat().st_size for f in files)
    )


def local_items(files: list[Path], text_field: str, start: int = 0) -> Iterator[Item]:
    """The documents of local files in order, from stream index `start` on."""
    skip = start
    for path in files:
        if path.suffix == ".txt":  # one document per file
            if skip:
                skip -= 1
                continue
            yield ("bytes", path.read_bytes(), str(path))
        elif path.suffix == ".parquet":
            skip = yield from _parquet_items(path, text_field, skip)
        elif path.suffix == ".json" and _is_json_array(path):
            skip = yield from _json_array_items(path, text_field, skip)
        else:  # JSON lines (.jsonl, or .json that is not one array)
            skip = yield from jsonl_items(path, skip)


def _is_json_array(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _json_array_items(path: Path, text_field: str, skip: int) -> Generator[Item, None, int]:
    """The rows of a file holding one JSON array, after dropping `skip`; returns the skip left."""
    try:
        rows = json.loads(path.read_bytes())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or remove the file") from None
    for i, row in enumerate(rows):
        if skip:
            skip -= 1
            continue
        text = row.get(text_field) if isinstance(row, dict) else None
        yield ("text", text, f"{path}[{i}]")
    return skip


def _parquet_items(path: Path, text_field: str, skip: int) -> Generator[Item, None, int]:
    """The rows of a parquet file, after dropping `skip`; returns the skip left."""
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
    src.add_argument("--input", help="local .jsonl/.json/.parquet/.txt: a file, a dir or a glob")
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
        check_out_dir(args.out_dir, args.prefix or "data")
        files = expand_inputs(args.input)
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
