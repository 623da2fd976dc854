"""The resumable shard writer: a document stream -> llm.c `.bin` token shards (see docs/data.md).

A library module (the sources gpt2repro.prep.fineweb and gpt2repro.prep.shakespeare and
`python -m gpt2repro.bench data` call it); the shard format itself is gpt2repro.data's.

Every document becomes [50256] + encode_ordinary(text), in stream order. Shards hold `shard_size`
tokens (the last one fewer); a document that reaches a shard's end continues in the next shard
(like llm.c). Shard 0 is the validation shard (`{prefix}_val_000000.bin`), the rest are
`{prefix}_train_000001.bin`, ... The bytes do not depend on the number of workers.

Resumable and atomic: each shard is written to a temp file, fsynced and renamed; then
`progress.json` records where the next shard starts in the document stream (document index and
tokens of that document already written). A killed run started again with the same arguments
re-streams from there and ends with byte-identical shards. `manifest.json` is written last.

A source is a function `open_items(start) -> Stream`: the documents from stream index `start` on
(deterministically: the same start gives the same items), plus the size of the whole stream where
known, for the progress bar. It is called once per run, and not at all when the out dir is complete.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gpt2repro import fault
from gpt2repro.atomic import check_output_path, write_json
from gpt2repro.data import HEADER_BYTES, MANIFEST, SHARD_NAME, shard_sha256, write_shard
from gpt2repro.errors import UserError
from gpt2repro.lock import DirLock
from gpt2repro.tokenizer import EOT, get_encoding

DEFAULT_SHARD_SIZE = 100_000_000
MAX_SHARD_SIZE = 2**31 - 1  # the header's n_tokens is an int32
# The CLIs' lower bound (the library takes any size >= 1). Windows never cross shards, so a shard
# loses up to seq_len tokens at its end: at most 0.1% at 1M tokens and T = 1024. And every shard is
# one file, one manifest entry and one open memory map in the loader: 10B tokens are 10,000 files
# at 1M, 10 million at 1,000. --allow-small-shards lifts it (tests, toy corpora).
MIN_SHARD_SIZE = 1_000_000
MAX_SHARDS = 10**6  # shard names carry a 6-digit index
PROGRESS = "progress.json"
# Ctrl-C's hint: a rerun with the same arguments resumes from progress.json
ON_INTERRUPT = "rerun the same command to resume from the last complete shard"
CHUNK_DOCS = 256  # documents per worker task
CHUNK_BYTES = 1 << 20  # ... or this much text, whichever comes first
MAX_EXAMPLES = 100  # skipped documents listed by name in the manifest
MAX_PRINTED = 20  # ... and on the console

# An item of the document stream: (kind, payload, where).
#   kind "json":  payload is one JSON line (bytes), text under the text field
#   kind "bytes": payload is a whole UTF-8 file (bytes)
#   kind "text":  payload is the text (str), or None/other when the row had no usable text
Item = tuple[str, Any, str]
# A skipped document: (index in its chunk, where, why).
Bad = tuple[int, str, str]


class Stream(NamedTuple):
    """What a source's `open_items(start)` returns."""

    items: Iterator[Item]  # the documents from stream index `start` on, in order
    documents: int | None = None  # documents in the whole stream, if known (ETA in documents)
    nbytes: int | None = None  # bytes of the whole input, if known (ETA in bytes otherwise)
    # bytes of the input consumed so far, in the units of `nbytes` (files as they lie on disk):
    # the bar follows it; without it the bar adds each chunk's text bytes
    position: Callable[[], int] | None = None


OpenItems = Callable[[int], Stream]


def jsonl_items(
    path: Path, skip: int = 0, lines: Iterable[bytes] | None = None
) -> Generator[Item, None, int]:
    """The documents of a JSON-lines file, one per non-blank line, after dropping the first `skip`.
    `lines`: the file's lines already opened (a decompressing reader), else `path` is opened.

    Returns how many of `skip` are left when the file holds fewer documents.
    """
    with contextlib.nullcontext(lines) if lines is not None else path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines are not documents
            if skip:
                skip -= 1
                continue
            yield ("json", line, f"{path}:{lineno}")
    return skip


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
            except ValueError as e:  # a JSONDecodeError, or an int past Python's digit limit
                why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                return None, f"invalid JSON ({why})"
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


def encode_chunk(job: tuple[str, list[Item]]) -> tuple[np.ndarray, np.ndarray, list[Bad]]:
    """Tokenize one chunk: (uint16 tokens, per-item token counts (0 = skipped), skipped items).

    Each good document contributes [EOT] + encode_ordinary(text); skipped ones nothing.
    """
    text_field, items = job
    enc = get_encoding()
    lens = np.zeros(len(items), dtype=np.int64)
    encoded: list[tuple[int, list[int]]] = []
    bad: list[Bad] = []
    for i, (kind, payload, where) in enumerate(items):
        text, reason = _to_text(kind, payload, text_field)
        if reason is not None:
            bad.append((i, where, reason))
            continue
        assert text is not None  # _to_text gives a text or a reason
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
    items: Iterable[Item], *, start: int, text_field: str, val_items: int | None
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


def read_json(path: Path) -> dict | None:
    """The JSON object in `path` (a progress or manifest file), or None when there is no file."""
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


def _read_manifest(out: Path, settings: dict) -> dict | None:
    """The manifest of an earlier run with these settings, or None; refuses other settings."""
    manifest = read_json(out / MANIFEST)
    if manifest is not None:
        _check_same(manifest.get("settings", {}), settings, out / MANIFEST)
    return manifest


def _resume_state(out: Path, settings: dict, *, prefix: str, repairing: bool = False) -> dict:
    """progress.json of a killed run with these settings, else a fresh state; clears temp files.

    The state: settings, shards written, next_item (stream index the next shard starts at),
    skip_tokens (tokens of that item already in the previous shard) and skipped (bad documents).
    `repairing`: a complete manifest's damaged shards are being rebuilt (its shards are expected).
    """
    state = read_json(out / PROGRESS)
    if state is not None:
        _check_same(state.get("settings", {}), settings, out / PROGRESS)
    else:
        stray = sorted(out.glob(f"{prefix}_*.bin"))
        if stray and not repairing:
            raise UserError(
                f"{out} already holds {stray[0].name} but no {PROGRESS} or {MANIFEST}; refusing to "
                f"overwrite it: use an empty --out-dir or delete those shards"
            )
        state = {
            "settings": settings,
            "shards": [],
            "next_item": 0,
            "skip_tokens": 0,
            "skipped": {"total": 0, "by_reason": {}, "examples": []},
        }
    for tmp in out.glob(f".{prefix}_*.tmp"):  # temp files of a killed run
        tmp.unlink(missing_ok=True)
    return state


def check_complete(out: Path, manifest: dict, prefix: str) -> tuple[list[str], dict[str, str]]:
    """Each shard a complete manifest lists, checked by presence, size and sha256 (the whole file:
    about 1 s per GB, once per data prep run, not per training start): ([what is wrong with each
    damaged one], {intact shard: its sha256}). A shard file the manifest does not list, or one
    that is a link pointing nowhere, is refused: neither is data prep's to replace."""
    damaged, intact = [], {}
    entries = manifest.get("shards")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("tokens"), int)
        for e in entries
    ):
        raise UserError(
            f"{out / MANIFEST} does not list its shards with file and tokens (edited by hand?); "
            "use another --out-dir, or delete this one to start over"
        )
    listed = {e["file"] for e in entries}
    for p in sorted(out.iterdir()):
        m = SHARD_NAME.match(p.name)
        if m is not None and m["prefix"] == prefix and p.name not in listed:
            raise UserError(
                f"--out-dir {out} holds {p.name}, which {MANIFEST} does not list; move it out of "
                "--out-dir, then rerun the same command"
            )
    for entry in entries:
        path = out / entry["file"]
        if path.is_symlink() and not path.exists():
            raise UserError(
                f"--out-dir {out}: shard {entry['file']} is a link to {os.readlink(path)}, which "
                "does not exist (storage not mounted?); mount it, or remove the link and rerun "
                "the same command to rebuild the shard"
            )
        if not path.is_file():
            damaged.append(f"shard {entry['file']} is missing")
            continue
        size, expected = path.stat().st_size, HEADER_BYTES + 2 * int(entry["tokens"])
        if size != expected:
            damaged.append(f"shard {entry['file']} is {size:,} bytes, not {expected:,}")
            continue
        with path.open("rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if sha != entry.get("sha256"):
            damaged.append(f"shard {entry['file']} does not match its sha256 in {MANIFEST}")
            continue
        intact[entry["file"]] = sha
    return damaged, intact


def _add_bad(stats: dict, bad: list[Bad]) -> None:
    for _, where, reason in bad:
        stats["total"] += 1
        key = reason.split(" (")[0]
        stats["by_reason"][key] = stats["by_reason"].get(key, 0) + 1
        if len(stats["examples"]) < MAX_EXAMPLES:
            stats["examples"].append(f"{where}: {reason}")


# --------------------------------------------------------------------------- the writer


class ShardBuffer:
    """One shard's worth of tokens (uint16). Each full shard is written atomically, then recorded
    in progress.json with where the next shard starts, so a killed run resumes from there."""

    def __init__(
        self, out: Path, state: dict, *, prefix: str, shard_size: int, val_items: int | None
    ) -> None:
        self.out, self.state, self.prefix = out, state, prefix
        self.shard_size, self.val_items = shard_size, val_items
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0  # tokens in buf
        self.start = int(state["next_item"])  # where this run starts in the document stream
        self.skip = int(state["skip_tokens"])  # tokens of item `start` already in the last shard
        self.end = self.start  # stream index after the last item added
        self.skipped = copy.deepcopy(state["skipped"])  # bad documents before `end`
        self.written = 0  # shards written by this process (the fault hook counts them)
        self.intact: dict[str, str] = {}  # a repair's shards already on disk, whole: name -> sha

    @property
    def index(self) -> int:
        """The index of the shard being filled."""
        return len(self.state["shards"])

    def add(self, first: int, tokens: np.ndarray, lens: np.ndarray, bad: list[Bad]) -> None:
        """Append an encoded chunk (items `first`, ... of the stream), writing every shard it fills.

        `lens`: tokens per item (0 = skipped); `bad`: the chunk's skipped items.
        """
        self.end = first + len(lens)
        cum = np.cumsum(lens)
        off, self.skip = self.skip, 0  # only a run's first chunk starts inside a document
        while off < len(tokens):
            take = min(self.shard_size - self.fill, len(tokens) - off)
            self.buf[self.fill : self.fill + take] = tokens[off : off + take]
            self.fill += take
            off += take
            if self.fill == self.shard_size:
                j = int(np.searchsorted(cum, off, side="right"))  # first item not finished
                next_skip = int(off - (cum[j] - lens[j])) if j < len(lens) else 0
                if self.val_items is not None and self.index == 0 and first + j < self.val_items:
                    raise UserError(
                        f"the validation documents exceed one shard of {self.shard_size:,} "
                        f"tokens (the first --val-docs {self.val_items:,}); raise --shard-size "
                        "or lower --val-docs"
                    )
                snapshot = copy.deepcopy(self.skipped)
                _add_bad(snapshot, [b for b in bad if b[0] < j])
                self.flush(next_item=first + j, next_skip=next_skip, skipped=snapshot)
        _add_bad(self.skipped, bad)
        if self.val_items is not None and self.index == 0 and self.end == self.val_items:
            if self.fill == 0:
                raise UserError("no usable validation documents; check the input")
            self.close()  # the val shard ends with the last validation document

    def close(self) -> None:
        """Write the tokens held (a shard shorter than shard_size), if any."""
        if self.fill:
            self.flush(next_item=self.end, next_skip=0, skipped=copy.deepcopy(self.skipped))

    def flush(self, *, next_item: int, next_skip: int, skipped: dict) -> None:
        """Write buf[:fill] as the next shard, then record it and the resume point."""
        if self.index >= MAX_SHARDS:
            raise UserError(
                f"more than {MAX_SHARDS:,} shards of {self.shard_size:,} tokens; raise --shard-size"
            )
        # made at the first shard: a run that fails before it (a source that does not open, a
        # bad --val-docs, a damaged input file) leaves nothing behind
        with _writing(self.out.parent, self.out.name):
            self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / PROGRESS).exists():
            # A fresh run records its start first: killed after the first shard's rename, it would
            # otherwise leave a shard and no progress.json, which the rerun refuses as strays.
            with _writing(self.out, PROGRESS):
                write_json(self.out / PROGRESS, self.state, indent=1)
        split = "val" if self.index == 0 else "train"
        name = f"{self.prefix}_{split}_{self.index:06d}.bin"
        tokens = self.buf[: self.fill]
        entry = {
            "file": name,
            "split": split,
            "tokens": int(self.fill),
            "documents": int(np.count_nonzero(tokens == EOT)),  # documents that start here
            "sha256": shard_sha256(tokens),
        }
        if self.intact.get(name) != entry["sha256"]:  # a repair keeps the intact shards as they are
            with _writing(self.out, name):
                write_shard(self.out / name, tokens)
        self.written += 1
        # GPT2REPRO_FAULT=exit-in-prep:N, the fault tests' hook: die between the N-th shard's
        # rename and the progress update
        fault.injected(0).inside("prep", self.written)
        self.state["shards"].append(entry)
        self.state.update(next_item=next_item, skip_tokens=next_skip, skipped=skipped)
        with _writing(self.out, PROGRESS):
            write_json(self.out / PROGRESS, self.state, indent=1)
        self.fill = 0


@contextlib.contextmanager
def _writing(out: Path, name: str) -> Iterator[None]:
    """A full disk or a permission error while writing `name` into `out` is one line saying what
    is kept (files are written atomically: a failed one leaves nothing) and how to go on."""
    try:
        yield
    except OSError as e:
        raise UserError(
            f"cannot write {out / name} ({e.strerror or e}); the shards written before it are "
            f"complete and kept: free space or fix the permissions of {out}, then rerun the same "
            "command to continue from them"
        ) from None


@dataclass(frozen=True)
class ShardOptions:
    """How `write_shards` cuts and reads its source. `shard_size`: tokens per shard. `val_items`:
    the first N items form the validation shard exactly (default: the first `shard_size` tokens).
    `workers`: tokenizer processes. `strict`: stop at the first bad document instead of skipping
    it. `text_field`: the key of a document's text. `quiet`: no progress bar or notes."""

    shard_size: int = DEFAULT_SHARD_SIZE
    val_items: int | None = None
    workers: int = 1
    strict: bool = False
    text_field: str = "text"
    quiet: bool = False


def write_shards(
    open_items: OpenItems,
    out_dir: str | os.PathLike,
    settings: dict,
    *,
    prefix: str,
    options: ShardOptions = ShardOptions(),
) -> dict:
    """Tokenize a source into shards in `out_dir`; resume a killed run; return the manifest.

    `open_items(start)` gives the stream from item index `start` on (see the module docstring).
    `settings` identifies the source; resuming with other settings is refused. One data prep per
    directory: `out_dir` is locked for the whole write (gpt2repro.lock; a second one refuses).
    """
    check_sizes(options.shard_size, options.val_items)
    check_prefix(prefix)
    out = check_out_dir(out_dir, prefix)
    with DirLock(out, "--out-dir"):  # released (its file removed) also after an error
        return _write_shards_locked(open_items, out, settings, prefix=prefix, options=options)


def _write_shards_locked(
    open_items: OpenItems,
    out_dir: str | os.PathLike,
    settings: dict,
    *,
    prefix: str,
    options: ShardOptions,
) -> dict:
    """write_shards' work, with `out_dir` locked."""
    shard_size, val_items, quiet = options.shard_size, options.val_items, options.quiet
    check_sizes(shard_size, val_items)
    check_prefix(prefix)
    out = check_out_dir(out_dir, prefix)
    settings = {
        **settings,
        "prefix": prefix,
        "shard_size": shard_size,
        "val_items": val_items,
        "tokenizer": "gpt2 (tiktoken r50k_base), [50256] + encode_ordinary(text) per document",
        "format": "llm.c .bin v1 (magic 20240520, uint16 tokens)",
    }
    manifest = _read_manifest(out, settings)
    intact: dict[str, str] | None = None  # a complete manifest's shards found whole: name -> sha
    if manifest is not None and manifest.get("complete"):
        damaged, intact = check_complete(out, manifest, prefix)
        if not damaged:
            if not quiet:
                print(f"{out}: already complete ({out / MANIFEST}); nothing to do")
            return manifest
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        print(
            f"note: {out}: {damaged[0]}{more}; rebuilding from the input (read again from the "
            "start; the intact shards are kept as they are)"
        )
        state = _resume_state(out, settings, prefix=prefix, repairing=True)
    else:
        state = _resume_state(out, settings, prefix=prefix)
    shards = ShardBuffer(out, state, prefix=prefix, shard_size=shard_size, val_items=val_items)
    shards.intact = intact or {}
    stream = open_items(shards.start)
    console = Console(stream, start=shards.start, quiet=quiet)
    jobs = _chunks(
        stream.items, start=shards.start, text_field=options.text_field, val_items=val_items
    )
    for first, n_items, nbytes, (tokens, lens, bad) in ordered_map(
        encode_chunk, jobs, options.workers
    ):
        console.begin_chunk()
        if bad and options.strict:
            _, where, reason = bad[0]
            raise UserError(f"{where}: {reason} (--strict; drop --strict to skip it)")
        console.skipped(bad)
        shards.add(first, tokens, lens, bad)
        console.end_chunk(
            n_items=n_items, nbytes=nbytes, docs=n_items - len(bad), tokens=len(tokens)
        )
    if val_items is not None and shards.index == 0 and 0 < shards.end < val_items:
        console.close()  # nothing written yet: the val shard closes at --val-docs
        raise UserError(
            f"--val-docs {val_items:,} is more than the {shards.end:,} documents of the input "
            f"(every one would be validation, none train); pass --val-docs below {shards.end:,}"
        )
    shards.close()
    console.close()
    if not state["shards"]:
        raise UserError("the input holds no usable documents; check --input / --text-field")
    manifest = {
        "complete": True,
        "settings": settings,
        "shards": state["shards"],
        "documents": sum(s["documents"] for s in state["shards"]),
        "tokens": sum(s["tokens"] for s in state["shards"]),
        "skipped": shards.skipped,
    }
    with _writing(out, MANIFEST):
        write_json(out / MANIFEST, manifest, indent=1)
    (out / PROGRESS).unlink(missing_ok=True)
    if not quiet:
        console.summary(out, manifest)
    return manifest


def check_workers(workers: int) -> None:
    """Refuse a --workers below 1 (it used to be taken as 'no pool' silently)."""
    if workers < 1:
        raise UserError(
            f"--workers {workers} must be at least 1 (the number of tokenizer processes; "
            f"{os.cpu_count() or 1} on this machine)"
        )


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


def check_min_shard_size(shard_size: int, allow_small: bool) -> None:
    """The CLIs' lower bound on --shard-size (MIN_SHARD_SIZE, see there for why)."""
    if shard_size < MIN_SHARD_SIZE and not allow_small:
        raise UserError(
            f"--shard-size {shard_size:,} is below {MIN_SHARD_SIZE:,} tokens (tiny shards mean "
            f"many files and tokens lost at each shard's end); pass {MIN_SHARD_SIZE:,} or more, "
            "use --val-docs N to split a small corpus, or add --allow-small-shards"
        )


def check_out_dir(out_dir: str | os.PathLike, prefix: str) -> Path:
    """`out_dir` can take this prefix's shards: a writable directory (or one that can be made)
    holding no shards of another prefix or format. Refused up front in one line, before any
    download or tokenizing; the loader would refuse such a mixed directory anyway."""
    out = check_output_path(out_dir, "--out-dir", directory=True)
    if not out.is_dir():
        return out
    for p in sorted(out.iterdir()):
        m = SHARD_NAME.match(p.name)
        if m is None or (m["prefix"] == prefix and m["suffix"] == "bin"):
            continue
        what = "a .npy shard" if m["suffix"] == "npy" else f"shards of prefix {m['prefix']!r}"
        raise UserError(
            f"--out-dir {out} holds {p.name} ({what}, not {prefix}_*.bin); refusing to mix "
            "datasets in one directory: use an empty --out-dir or move those shards out"
        )
    return out


def check_prefix(prefix: str) -> None:
    """Refuse a shard name prefix whose names the loader would not read back."""
    m = SHARD_NAME.match(f"{prefix}_train_000001.bin")
    if "/" in prefix or os.sep in prefix or m is None or m["prefix"] != prefix:
        raise UserError(
            f"--prefix {prefix!r} does not give shard names the loader reads back "
            f"({{prefix}}_train_000001.bin); use a non-empty name without '/'"
        )


# --------------------------------------------------------------------------- console


class Console:
    """What a run shows: a tqdm bar (documents/s, tokens/s, ETA), skipped documents, a summary."""

    def __init__(self, stream: Stream, *, start: int, quiet: bool) -> None:
        self.documents, self.nbytes = stream.documents, stream.nbytes
        self.position = stream.position if stream.documents is None else None
        self.start, self.quiet = start, quiet
        self.bar: Any = None  # a tqdm bar from the first chunk on (see begin_chunk)
        self.t0 = time.perf_counter()
        self.docs = self.tokens = self.printed = 0

    def begin_chunk(self) -> None:
        """Start the bar at the first chunk (after the worker pool, which must fork before tqdm's
        monitor thread exists)."""
        if self.bar is not None or self.quiet:
            return
        from tqdm import tqdm  # an optional package (the `data` extra), needed for the bar only

        if self.documents is not None:  # ETA from documents
            self.bar = tqdm(
                total=self.documents,
                initial=self.start,
                unit="doc",
                unit_scale=True,
                smoothing=0.05,
            )
        else:  # ETA from bytes read: where the reading is (a resume starts there), else from 0
            self.bar = tqdm(
                total=self.nbytes,
                initial=self.position() if self.position is not None else 0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                smoothing=0.05,
            )

    def skipped(self, bad: list[Bad]) -> None:
        """Name the first MAX_PRINTED skipped documents of the run (on stderr)."""
        for _, where, reason in bad:
            if self.printed < MAX_PRINTED and not self.quiet:
                self.bar.write(f"skipped {where}: {reason}", file=sys.stderr)
                self.printed += 1

    def end_chunk(self, *, n_items: int, nbytes: int, docs: int, tokens: int) -> None:
        """Advance the bar by a chunk of `n_items` items (`nbytes` of text, `docs` documents
        encoded into `tokens` tokens); show the run's documents/s and tokens/s."""
        self.docs += docs
        self.tokens += tokens
        if self.bar is None:
            return
        if self.position is not None:  # where the reading is through the input files
            self.bar.update(max(0, self.position() - self.bar.n))
        else:
            self.bar.update(n_items if self.bar.unit == "doc" else nbytes)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rates = f"{self.docs / dt:,.0f} doc/s {self.tokens / dt / 1e6:.2f}M tok/s"
        self.bar.set_postfix_str(rates, refresh=False)

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()

    @staticmethod
    def summary(out: Path, manifest: dict) -> None:
        """Totals, skipped documents by reason, and a note when there is no train shard."""
        n_val = sum(1 for s in manifest["shards"] if s["split"] == "val")
        skipped = manifest["skipped"]
        print(
            f"{out}: {manifest['tokens']:,} tokens, {manifest['documents']:,} documents in "
            f"{len(manifest['shards'])} shards ({n_val} val); skipped {skipped['total']:,}"
        )
        for reason, n in skipped["by_reason"].items():
            print(f"  skipped {n:,}: {reason}")
        if len(manifest["shards"]) == 1:
            print(
                "  note: one shard only, and shard 0 is the val shard; lower --shard-size for train"
            )
