"""Tokenize FineWeb / FineWeb-Edu (HF `datasets`) or local text into llm.c `.bin` token shards.

    python data_prep/fineweb.py                                   # fineweb-edu sample-10BT
    python data_prep/fineweb.py --dataset fineweb --sample 100BT --streaming
    python data_prep/fineweb.py --input 'corpus/*.jsonl' --out-dir data/mine --prefix mine

Every document becomes [50256] + encode_ordinary(text), in input order. Shards hold --shard-size
tokens (the last one fewer); a document that reaches a shard's end continues in the next shard
(like llm.c). Shard 0 is the validation shard (`{prefix}_val_000000.bin`), the rest are
`{prefix}_train_000001.bin`, ... The bytes do not depend on --workers.

Resumable and atomic: each shard is written to a temp file, fsynced and renamed; then
`progress.json` records where the next shard starts in the document stream (document index and
tokens of that document already written). A killed run started again with the same arguments
re-streams from there and ends with byte-identical shards. `manifest.json` is written last.
HF sources are pinned to a dataset revision (--revision, default the Hub's current sha), recorded
in progress/manifest; a resume reads that revision and refuses another.
See docs/data.md.
"""

from __future__ import annotations

import argparse
import collections
import copy
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gpt2repro.atomic import write_json  # noqa: E402
from gpt2repro.data import SHARD_NAME, shard_sha256, write_shard  # noqa: E402
from gpt2repro.errors import UserError, run_cli  # noqa: E402
from gpt2repro.tokenizer import EOT, get_encoding  # noqa: E402

HF_DATASETS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
SAMPLES = ("10BT", "100BT", "350BT")
DEFAULT_SHARD_SIZE = 100_000_000
MAX_SHARD_SIZE = 2**31 - 1  # the header's n_tokens is an int32
MAX_SHARDS = 10**6  # shard names carry a 6-digit index
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FAULT_ENV = "GPT2REPRO_FAULT_AFTER_SHARDS"  # test hook: os._exit after writing N shards
CHUNK_DOCS = 256  # documents per worker task
CHUNK_BYTES = 1 << 20  # ... or this much text, whichever comes first
MAX_EXAMPLES = 100  # skipped documents listed by name in the manifest
MAX_PRINTED = 20  # ... and on the console

# An item of the document stream: (kind, payload, where).
#   kind "json":  payload is one JSON line (bytes), text under the text field
#   kind "bytes": payload is a whole UTF-8 file (bytes)
#   kind "text":  payload is the text (str), or None/other when the row had no usable text
Item = tuple[str, Any, str]


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
        else:  # JSON lines (.jsonl, or .json that is not one array)
            with path.open("rb") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue  # blank lines are not documents
                    if skip:
                        skip -= 1
                        continue
                    yield ("json", line, f"{path}:{lineno}")


def _is_json_array(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _parquet_items(path: Path, text_field: str, skip: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

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
        saved = _read_json(out_dir / name)
        if saved is not None:
            return saved.get("settings", {}).get("source", {}).get("revision")
    return None


def resolve_revision(repo_id: str) -> str:
    """The commit sha the Hub's default branch of dataset `repo_id` points at now."""
    import huggingface_hub

    try:
        return huggingface_hub.HfApi().dataset_info(repo_id).sha
    except Exception as e:  # offline, rate limited, ...: any failure has the same remedy
        raise UserError(
            f"could not look up the current revision of {repo_id} ({type(e).__name__}: "
            f"{str(e)[:120]}); pass --revision with a commit sha of that dataset (or 'main')"
        ) from None


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


def hf_items(source: dict, streaming: bool, start: int = 0) -> tuple[Iterator[Item], int | None]:
    """(items from stream index `start`, number of documents if known) of an HF dataset."""
    import datasets

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

    def items() -> Iterator[Item]:
        for i, row in enumerate(rest, start):
            yield ("text", row.get(field), f"{label} row {i}")

    return items(), total


# --------------------------------------------------------------------------- tokenizing


def _to_text(kind: str, payload: Any, text_field: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why this document is skipped)."""
    if kind in ("json", "bytes"):
        try:
            raw = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"undecodable bytes (not UTF-8 at byte {e.start})"
        if kind == "json":
            try:
                row = json.loads(raw)
            except ValueError as e:
                return None, f"invalid JSON ({e.msg})"
            if not isinstance(row, dict):
                return None, "not a JSON object"
            if text_field not in row:
                return None, f"missing text field {text_field!r}"
            payload = row[text_field]
        else:
            payload = raw
    if payload is None:
        return None, f"missing text field {text_field!r}"
    if not isinstance(payload, str):
        return None, f"text field {text_field!r} is not a string"
    if not payload:
        return None, "empty text"
    return payload, None


def encode_chunk(job: tuple[str, list[Item]]) -> tuple[np.ndarray, np.ndarray, list]:
    """Tokenize one chunk: (uint16 tokens, per-item token counts (0 = skipped), skipped items).

    Each good document contributes [EOT] + encode_ordinary(text); skipped ones nothing.
    """
    text_field, items = job
    enc = get_encoding()
    lens = np.zeros(len(items), dtype=np.int64)
    encoded: list[tuple[int, list[int]]] = []
    bad: list[tuple[int, str, str]] = []
    for i, (kind, payload, where) in enumerate(items):
        text, reason = _to_text(kind, payload, text_field)
        if reason is not None:
            bad.append((i, where, reason))
            continue
        ids = enc.encode_ordinary(text)  # plain loop: the batch API adds a thread pool per call
        encoded.append((i, ids))
        lens[i] = len(ids) + 1
    tokens = np.empty(int(lens.sum()), dtype=np.uint16)
    pos = 0
    for _, ids in encoded:
        tokens[pos] = EOT
        tokens[pos + 1 : pos + 1 + len(ids)] = ids
        pos += len(ids) + 1
    return tokens, lens, bad


def _init_worker() -> None:
    get_encoding()


def _chunks(
    items: Iterable[Item], start: int, text_field: str, val_items: int | None
) -> Iterator[tuple[int, tuple[str, list[Item]], int]]:
    """(stream index of the chunk's first item, job, payload bytes); never crosses `val_items`."""
    cur: list[Item] = []
    nbytes = 0
    pos = start
    for item in items:
        cur.append(item)
        payload = item[1]
        nbytes += len(payload) if isinstance(payload, bytes | str) else 0
        pos += 1
        if len(cur) >= CHUNK_DOCS or nbytes >= CHUNK_BYTES or pos == val_items:
            yield pos - len(cur), (text_field, cur), nbytes
            cur, nbytes = [], 0
    if cur:
        yield pos - len(cur), (text_field, cur), nbytes


def ordered_map(
    fn: Callable[[Any], Any], jobs: Iterable[tuple[int, Any, int]], workers: int
) -> Iterator[tuple[int, int, int, Any]]:
    """Yield (start, n_items, nbytes, fn(job)) in input order with at most 2*workers in flight.

    Pool.imap would do the ordering, but its feeder thread reads the input without limit, so a
    fast reader and slow tokenizers would buffer the whole dataset in memory.
    """
    if workers <= 1:
        for start, job, nbytes in jobs:
            yield start, len(job[1]), nbytes, fn(job)
        return
    import multiprocessing as mp
    import threading

    # fork is near-free and inherits the loaded tokenizer, but forking a process that runs
    # threads (tqdm's monitor, datasets' downloads) can deadlock a child: then spawn.
    get_encoding()
    single = threading.active_count() == 1 and "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if single else "spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        pending: collections.deque = collections.deque()
        for start, job, nbytes in jobs:
            pending.append((start, len(job[1]), nbytes, pool.apply_async(fn, (job,))))
            if len(pending) >= 2 * workers:
                s, n, b, res = pending.popleft()
                yield s, n, b, res.get()
        while pending:
            s, n, b, res = pending.popleft()
            yield s, n, b, res.get()


# --------------------------------------------------------------------------- state files


def _write_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=1)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(
            f"{path} is not valid JSON (edited by hand?); delete the out dir and start again"
        ) from None


def _check_same(saved: dict, settings: dict, path: Path) -> None:
    if saved != settings:
        diff = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        raise UserError(
            f"{path} was written with different settings ({', '.join(diff)}: "
            f"{str(saved.get(diff[0]))[:80]} vs now {str(settings.get(diff[0]))[:80]}); "
            f"use another --out-dir, or delete this one to start over"
        )


def _empty_stats() -> dict:
    return {"total": 0, "by_reason": {}, "examples": []}


def _add_bad(stats: dict, bad: list[tuple[int, str, str]]) -> None:
    for _, where, reason in bad:
        stats["total"] += 1
        key = reason.split(" (")[0]
        stats["by_reason"][key] = stats["by_reason"].get(key, 0) + 1
        if len(stats["examples"]) < MAX_EXAMPLES:
            stats["examples"].append(f"{where}: {reason}")


# --------------------------------------------------------------------------- the writer


def write_shards(
    open_items: Callable[[int], Iterator[Item]],
    out_dir: str | os.PathLike,
    settings: dict,
    *,
    prefix: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    strict: bool = False,
    text_field: str = "text",
    val_items: int | None = None,
    total_docs: int | Callable[[], int | None] | None = None,
    total_bytes: int | None = None,
    quiet: bool = False,
) -> dict:
    """Tokenize the document stream into shards in `out_dir`; resume a killed run; return the manifest.

    `open_items(start)` yields the stream from item index `start` on (deterministically).
    `settings` identifies the source; resuming with other settings is refused. `val_items`:
    the first N items form the validation shard exactly (default: the first `shard_size` tokens).
    """
    check_sizes(shard_size, val_items)
    if "/" in prefix or os.sep in prefix or not _prefix_round_trips(prefix):
        raise UserError(
            f"--prefix {prefix!r} does not give shard names the loader reads back "
            f"({{prefix}}_train_000001.bin); use a non-empty name without '/'"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        **settings,
        "prefix": prefix,
        "shard_size": shard_size,
        "val_items": val_items,
        "tokenizer": "gpt2 (tiktoken r50k_base), [50256] + encode_ordinary(text) per document",
        "format": "llm.c .bin v1 (magic 20240520, uint16 tokens)",
    }
    manifest_path, progress_path = out / MANIFEST, out / PROGRESS
    manifest = _read_json(manifest_path)
    if manifest is not None:
        _check_same(manifest.get("settings", {}), settings, manifest_path)
        if manifest.get("complete"):
            if not quiet:
                print(f"{out}: already complete ({manifest_path}); nothing to do")
            return manifest
    state = _read_json(progress_path)
    if state is not None:
        _check_same(state.get("settings", {}), settings, progress_path)
    else:
        stray = sorted(out.glob(f"{prefix}_*.bin"))
        if stray:
            raise UserError(
                f"{out} already holds {stray[0].name} but no {PROGRESS} or {MANIFEST}; refusing to "
                f"overwrite it: use an empty --out-dir or delete those shards"
            )
        state = {
            "settings": settings,
            "shards": [],
            "next_item": 0,
            "skip_tokens": 0,
            "skipped": _empty_stats(),
        }
    for tmp in out.glob(f".{prefix}_*.tmp"):  # temp files of a killed run
        tmp.unlink(missing_ok=True)

    fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    written_here = 0
    shard_index = len(state["shards"])
    start = int(state["next_item"])
    skip = int(state["skip_tokens"])  # tokens of item `start` already in the previous shard
    stats = copy.deepcopy(state["skipped"])
    printed = 0
    buf = np.empty(shard_size, dtype=np.uint16)
    fill = 0

    def flush(n: int, next_item: int, next_skip: int, snapshot: dict) -> None:
        nonlocal shard_index, written_here
        if shard_index >= MAX_SHARDS:
            raise UserError(
                f"more than {MAX_SHARDS:,} shards of {shard_size:,} tokens; raise --shard-size"
            )
        split = "val" if shard_index == 0 else "train"
        name = f"{prefix}_{split}_{shard_index:06d}.bin"
        tokens = buf[:n]
        entry = {
            "file": name,
            "split": split,
            "tokens": int(n),
            "documents": int(np.count_nonzero(tokens == EOT)),  # documents that start here
            "sha256": shard_sha256(tokens),
        }
        write_shard(out / name, tokens)
        written_here += 1
        if fault_after and written_here >= fault_after:
            os._exit(3)  # test hook: die between the shard's rename and the progress update
        state["shards"].append(entry)
        state.update(next_item=next_item, skip_tokens=next_skip, skipped=snapshot)
        _write_json(progress_path, state)
        shard_index += 1

    items = open_items(start)
    if callable(total_docs):  # known only once the source is open (HF datasets)
        total_docs = total_docs()
    bar = None  # created after the first chunk, so the worker pool starts before its thread
    t0 = time.perf_counter()
    docs_done = tokens_done = 0
    end = start
    jobs = _chunks(items, start, text_field, val_items)
    for cstart, n_items, nbytes, (toks, lens, bad) in ordered_map(encode_chunk, jobs, workers):
        end = cstart + n_items
        if bar is None and not quiet:
            bar = _progress_bar(total_docs, total_bytes, start)
        if bad:
            for _, where, reason in bad:
                if strict:
                    raise UserError(f"{where}: {reason} (--strict; drop --strict to skip it)")
                if printed < MAX_PRINTED and not quiet:
                    _write_line(bar, f"skipped {where}: {reason}")
                    printed += 1
        cum = np.cumsum(lens)
        off = skip if cstart == start else 0
        while off < len(toks):
            take = min(shard_size - fill, len(toks) - off)
            buf[fill : fill + take] = toks[off : off + take]
            fill += take
            off += take
            if fill == shard_size:
                j = int(np.searchsorted(cum, off, side="right"))  # first item not finished
                next_item = cstart + j
                next_skip = int(off - (cum[j] - lens[j])) if j < n_items else 0
                if val_items is not None and shard_index == 0 and next_item < val_items:
                    raise UserError(
                        f"the validation documents exceed one shard of {shard_size:,} tokens; "
                        f"raise --shard-size or use fewer validation documents"
                    )
                snapshot = copy.deepcopy(stats)
                _add_bad(snapshot, [b for b in bad if b[0] < j])
                flush(fill, next_item, next_skip, snapshot)
                fill = 0
        _add_bad(stats, bad)
        if val_items is not None and shard_index == 0 and end == val_items:
            if fill == 0:
                raise UserError("no usable validation documents; check the input")
            flush(fill, end, 0, copy.deepcopy(stats))
            fill = 0
        docs_done += n_items - len(bad)
        tokens_done += len(toks)
        _update_bar(bar, n_items, nbytes, docs_done, tokens_done, time.perf_counter() - t0)
    if fill:
        flush(fill, end, 0, copy.deepcopy(stats))
    if bar is not None:
        bar.close()
    if not state["shards"]:
        raise UserError("the input holds no usable documents; check --input / --text-field")
    manifest = {
        "complete": True,
        "settings": settings,
        "shards": state["shards"],
        "documents": sum(s["documents"] for s in state["shards"]),
        "tokens": sum(s["tokens"] for s in state["shards"]),
        "skipped": stats,
    }
    _write_json(manifest_path, manifest)
    progress_path.unlink(missing_ok=True)
    if not quiet:
        _summary(out, manifest)
    return manifest


def check_sizes(shard_size: int, val_items: int | None) -> None:
    """Refuse a --shard-size the header cannot hold and a --val-docs below 1."""
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise UserError(
            f"--shard-size {shard_size:,} is outside [1, {MAX_SHARD_SIZE:,}] (the shard header "
            f"stores the token count as int32); pass a size in that range"
        )
    if val_items is not None and val_items < 1:
        raise UserError(
            f"--val-docs {val_items} must be at least 1 (or left out: the val shard is then "
            f"the first --shard-size tokens)"
        )


def _prefix_round_trips(prefix: str) -> bool:
    m = SHARD_NAME.match(f"{prefix}_train_000001.bin")
    return m is not None and m["prefix"] == prefix


def _progress_bar(total_docs: int | None, total_bytes: int | None, start: int) -> Any:
    from tqdm import tqdm

    if total_docs is not None:  # ETA from documents
        return tqdm(total=total_docs, initial=start, unit="doc", unit_scale=True, smoothing=0.05)
    # local files: ETA from bytes read (a resumed run re-counts from zero)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, smoothing=0.05)


def _update_bar(bar: Any, n_items: int, nbytes: int, docs: int, tokens: int, dt: float) -> None:
    if bar is None:
        return
    bar.update(n_items if bar.unit == "doc" else nbytes)
    dt = max(dt, 1e-9)
    bar.set_postfix_str(f"{docs / dt:,.0f} doc/s {tokens / dt / 1e6:.2f}M tok/s", refresh=False)


def _write_line(bar: Any, line: str) -> None:
    if bar is None:
        print(line, file=sys.stderr)
    else:
        bar.write(line, file=sys.stderr)


def _summary(out: Path, manifest: dict) -> None:
    n_val = sum(1 for s in manifest["shards"] if s["split"] == "val")
    print(
        f"{out}: {manifest['tokens']:,} tokens, {manifest['documents']:,} documents in "
        f"{len(manifest['shards'])} shards ({n_val} val); skipped {manifest['skipped']['total']:,}"
    )
    for reason, n in manifest["skipped"]["by_reason"].items():
        print(f"  skipped {n:,}: {reason}")
    if len(manifest["shards"]) == 1:
        print("  note: one shard only, and shard 0 is the val shard; lower --shard-size for train")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="data_prep/fineweb.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
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
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common = dict(
        shard_size=args.shard_size,
        workers=args.workers,
        strict=args.strict,
        text_field=args.text_field,
        val_items=args.val_docs,
        quiet=args.quiet,
    )
    if args.input:
        files = expand_inputs(args.input)
        if not args.out_dir:
            raise UserError("--input needs --out-dir (where the shards go)")
        settings = {
            "source": {
                "kind": "local",
                "files": [[str(f.resolve()), f.stat().st_size] for f in files],
                "text_field": args.text_field,
            }
        }
        write_shards(
            lambda start: local_items(files, args.text_field, start),
            args.out_dir,
            settings,
            prefix=args.prefix or "data",
            total_bytes=sum(f.stat().st_size for f in files),
            **common,
        )
        return 0
    dataset = args.dataset or "fineweb-edu"
    short = "edu_fineweb" if dataset == "fineweb-edu" else "fineweb"
    out_dir = args.out_dir or f"data/{short}{args.sample[:-1]}"
    revision = hf_revision(Path(out_dir), HF_DATASETS[dataset], args.revision)
    source = hf_source(dataset, args.sample, args.text_field, revision)
    totals: dict[str, int | None] = {}

    def open_items(start: int) -> Iterator[Item]:
        items, totals["docs"] = hf_items(source, args.streaming, start)
        return items

    write_shards(
        open_items,
        out_dir,
        {"source": source},
        prefix=args.prefix or ("edufineweb" if dataset == "fineweb-edu" else "fineweb"),
        total_docs=lambda: totals.get("docs"),
        **common,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
