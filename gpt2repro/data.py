"""THE token shard format (read/write) and the resumable, rank-aware token loader.

Shard format (llm.c's, also read by modded-nanogpt; defined here and nowhere else):
    header: 256 little-endian int32 = [MAGIC 20240520, VERSION 1, n_tokens, 0, ...]  (1024 bytes)
    body:   n_tokens little-endian uint16 token ids
build-nanogpt's headerless `.npy` uint16 shards are read too (never written).

Loader layout (see docs/data.md): a shard of n tokens holds (n - 1) // T windows; window k is the
T + 1 tokens starting at k * T (consecutive windows share one token, so every token but a shard's
first is a target exactly once per epoch; windows never cross shards). An epoch is one ordered list
of all windows (train: shard order and window order within each shard permuted from (seed, epoch);
val: files in sorted order, windows in order). Global batch g is windows [g*W*B, (g+1)*W*B) of
that list and rank r takes rows [r*B, (r+1)*B), so W ranks with batch B see exactly what 1 rank with
batch W*B sees. The windows left over at an epoch's end (fewer than W*B) are dropped, the same on
every rank.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt2repro.atomic import atomic_open
from gpt2repro.errors import UserError

if TYPE_CHECKING:  # torch is imported by the loader only: data_prep workers never need it
    import torch

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = 2**16 - 1  # uint16
SHARD_SUFFIXES = (".bin", ".npy")
MANIFEST = "manifest.json"  # data prep's list of the shards it wrote (gpt2repro.prep.shards)
_PREP_HINT = "run data_prep/fineweb.py or data_prep/shakespeare.py to create shards"


# --------------------------------------------------------------------------- the format


def encode_header(n_tokens: int) -> bytes:
    """The 1024-byte llm.c header for a shard of `n_tokens` tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, n_tokens
    return header.tobytes()


def _as_uint16(tokens: np.ndarray, what: str) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{what}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.dtype == np.uint16:
        return tokens.astype("<u2", copy=False)
    if tokens.size and (tokens.min() < 0 or tokens.max() > MAX_TOKEN):
        raise ValueError(f"{what}: token ids must fit in uint16 [0, {MAX_TOKEN}]")
    return tokens.astype("<u2")


def shard_sha256(tokens: np.ndarray) -> str:
    """sha256 of the exact bytes `write_shard` writes for `tokens`."""
    tokens = _as_uint16(tokens, "shard_sha256")
    h = hashlib.sha256(encode_header(len(tokens)))
    h.update(np.ascontiguousarray(tokens).data.cast("B"))
    return h.hexdigest()


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write `tokens` as an llm.c `.bin` shard; atomic (temp file, fsync, rename)."""
    path = Path(path)
    tokens = np.ascontiguousarray(_as_uint16(tokens, str(path)))
    with atomic_open(path, "wb") as f:
        f.write(encode_header(len(tokens)))
        f.write(tokens.data.cast("B"))


def allow_open_files(n_shards: int, option: str = "data.dir", spare: int = 256) -> None:
    """Make room for `n_shards` memory-mapped shards (each holds an open file) plus `spare` for
    everything else: raise this process's soft open-file limit up to its hard limit if needed
    (10B tokens in 1M-token shards are 10,000 files; many systems start at a soft limit of 1,024),
    or say in one line what to change when even the hard limit is too low."""
    import resource  # POSIX only: imported where it is used (Linux and macOS runs)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n_shards + spare
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise UserError(
            f"{option} holds {n_shards:,} shards, each kept open, but this process may open at "
            f"most {hard:,} files (`ulimit -Hn`); raise the limit (ulimit -n {need}, or "
            "LimitNOFILE / limits.conf) or write fewer, larger shards (--shard-size)"
        )
    target = max(need, 65536)  # generous, so a later, larger directory needs no second change
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """A validated, read-only uint16 memmap of a shard's tokens (`.bin` llm.c or `.npy`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"shard {path} does not exist; {_PREP_HINT}")
    if path.suffix == ".npy":
        return _read_npy(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(
            f"shard {path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header "
            f"(truncated copy?); delete it and re-run the data_prep script that wrote it"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise UserError(
            f"shard {path} has magic {int(header[0])}, not {MAGIC}: not an llm.c token shard "
            f"(build-nanogpt shards end in .npy); re-create it with data_prep/fineweb.py"
        )
    if header[1] != VERSION:
        raise UserError(
            f"shard {path} has version {int(header[1])}, this reader knows version {VERSION}; "
            f"re-create it with data_prep/fineweb.py"
        )
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        raise UserError(
            f"shard {path} is {size} bytes but its header says {n} tokens ({expected} bytes): "
            f"truncated or corrupt; delete it and re-run the data_prep script that wrote it"
        )
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(
            f"shard {path} is not a readable .npy file ({e}); delete it and re-create it"
        ) from None
    if arr.dtype != np.uint16 or arr.ndim != 1:
        raise UserError(
            f"shard {path} holds {arr.dtype} of shape {arr.shape}; expected a 1-D uint16 token "
            f"array (build-nanogpt format); re-create it with data_prep/fineweb.py"
        )
    return arr


SHARD_NAME = re.compile(
    r"^(?P<prefix>.+)_(?P<split>train|val)_(?P<index>\d{6})\.(?P<suffix>bin|npy)$"
)
"""A shard's file name: `{prefix}_{train|val}_{6-digit index}.{bin|npy}` (the prefix may hold `_`)."""


def shard_paths(data_dir: str | os.PathLike, split: str, option: str = "data.dir") -> list[Path]:
    """The split's shards (`{prefix}_{split}_{index:06d}.bin` or `.npy`), sorted by index, after
    `verified_shards` checked the whole directory. `option`: the key or flag the user set it with
    (messages)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    by_split = verified_shards(data_dir, option)
    mine = by_split.get(split, [])
    d = Path(data_dir)
    if len({p.suffix for p in mine}) > 1:
        prefix = mine[0].name.rsplit(f"_{split}_", 1)[0]
        raise UserError(
            f"data directory {d} holds both .bin and .npy {split} shards of prefix "
            f"{prefix}; keep one format per directory (move the others out)"
        )
    if not mine:
        others = sorted(p.name for p in d.iterdir() if p.suffix in SHARD_SUFFIXES)
        others = [n for n in others if not SHARD_NAME.match(n)]
        near = f" ({others[0]} does not match that name)" if others else ""
        raise UserError(
            f"data directory {d} holds no {split} shards ({{prefix}}_{split}_NNNNNN.bin or .npy)"
            f"{near}; {_PREP_HINT}"
        )
    return mine


def verified_shards(data_dir: str | os.PathLike, option: str = "data.dir") -> dict[str, list[Path]]:
    """Every shard of a data directory by split ({'train': [...], 'val': [...]}, each sorted by
    index), after checking that the directory is whole (a split's shards in two formats are
    refused by `shard_paths`); cheap (names, sizes and one small JSON
    file: no shard is read), so every start runs it.

    Refused in one line naming the shard: a shard name that is not a regular file (a link pointing
    nowhere: storage not mounted), two prefixes or two formats, a gap in the shard numbering, and,
    when `manifest.json` (data prep's list) is present, any shard missing, extra (renamed ones
    are both) or of another size than the manifest says. The shards' contents are checked by data
    prep (sha256, when it finds a complete manifest) and by resume (`data_fingerprint`).
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"data directory {d} does not exist ({option}); {_PREP_HINT}")
    found: list[tuple[re.Match, Path]] = []
    for p in sorted(d.iterdir()):
        m = SHARD_NAME.match(p.name)
        if m is None:
            continue
        if not p.is_file():
            raise UserError(f"{option} {d}: shard {p.name} {_not_a_file(p)}")
        found.append((m, p))
    prefixes = sorted({m["prefix"] for m, _ in found})
    if len(prefixes) > 1:
        raise UserError(
            f"data directory {d} holds shards of {len(prefixes)} prefixes "
            f"({', '.join(prefixes)}); keep one dataset per directory (move the others out)"
        )
    if (d / MANIFEST).exists() or (d / MANIFEST).is_symlink():
        _check_against_manifest(d, {p.name: p for _, p in found}, option)
    _check_numbering(d, [(int(m["index"]), m["split"], p.name) for m, p in found], option)
    by_split: dict[str, list[Path]] = {}
    for m, p in sorted(found, key=lambda mp: int(mp[0]["index"])):
        by_split.setdefault(m["split"], []).append(p)
    return by_split


def _not_a_file(p: Path) -> str:
    """What a path that should be a shard file is instead, and the fix (for messages)."""
    if p.is_symlink():
        target = os.readlink(p)
        return (
            f"is a link to {target}, which does not exist (storage not mounted, or the data "
            "moved?); mount or copy the data there, or remove the link"
        )
    if p.is_dir():
        return "is a directory, not a shard file; move it out of the data directory"
    return "is not a regular file; move it out of the data directory"


def _check_against_manifest(d: Path, found: dict[str, Path], option: str) -> None:
    """The shards in `d` are exactly those manifest.json lists, each of the listed size."""
    path = d / MANIFEST
    fix = f"re-run the data_prep script that wrote {d} (it rebuilds missing and damaged shards)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(
            f"{option} {d}: {MANIFEST} cannot be read ({e}); {fix}, or move {MANIFEST} aside "
            "to train without its check"
        ) from None
    if isinstance(manifest, dict) and "shards" not in manifest:
        return  # another tool's manifest.json: nothing to check against
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("tokens"), int)
        for e in entries
    ):
        raise UserError(
            f"{option} {d}: {MANIFEST} is not a data prep manifest (a list of shards, each with "
            f"file and tokens); {fix}, or move {MANIFEST} aside to train without its check"
        )
    listed = {e["file"]: e["tokens"] for e in entries}
    extra = sorted(set(found) - set(listed))
    for name, tokens in listed.items():
        if name not in found:
            instead = f" ({extra[0]}, which it does not list, is there: renamed?)" if extra else ""
            raise UserError(
                f"{option} {d}: shard {name}, listed in {MANIFEST}, is missing{instead}; restore "
                f"it, or {fix}"
            )
        size, expected = found[name].stat().st_size, HEADER_BYTES + 2 * tokens
        if name.endswith(".bin") and size != expected:
            raise UserError(
                f"{option} {d}: shard {name} is {size:,} bytes but {MANIFEST} lists it with "
                f"{tokens:,} tokens ({expected:,} bytes): truncated or replaced; {fix}"
            )
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(
            f"{option} {d}: shard {extra[0]}{more} is not listed in {MANIFEST} (added or "
            f"renamed?); move it out of {d}, or {fix}"
        )


def _check_numbering(d: Path, shards: list[tuple[int, str, str]], option: str) -> None:
    """No gap in the shard numbering, per split and over both splits together (data prep numbers
    val 0 and train 1, 2, ...; other layouts number each split from 0): a gap is a shard deleted or
    not copied, which training would otherwise skip without a word. (A missing *last* shard leaves
    no gap: only the manifest can tell.) `shards`: (index, split, file name)."""
    groups = [[s for s in shards if s[1] == split] for split in ("val", "train")]
    for group in [*groups, shards]:
        names: dict[int, str] = {}
        for index, _, name in sorted(group):
            names.setdefault(index, name)
        indices = sorted(names)
        for a, b in zip(indices, indices[1:], strict=False):
            if b != a + 1:
                raise UserError(
                    f"{option} {d}: no shard numbered {a + 1:06d} between {names[a]} and "
                    f"{names[b]} (deleted, or not copied?); restore it, or re-run the data_prep "
                    f"script that wrote {d}"
                )


FINGERPRINT_VERSION = 1
_SAMPLE_BYTES = 8192  # read at a shard's start, middle and end for its fingerprint


def data_fingerprint(data_dir: str | os.PathLike) -> dict:
    """The identity of a data directory's contents, as resume compares it (never the spelling of
    its path): every shard's name, size in bytes and a hash of 8 KiB at its start, middle and end
    (after `verified_shards`). About 24 KiB read per shard: a second or so for 10,000 shards, so
    it is taken at every start rather than a full sha256 of billions of tokens; two corpora whose
    shards agree in name, size and those bytes are taken as the same data."""
    by_split = verified_shards(data_dir)
    shards = []
    for p in sorted((p for paths in by_split.values() for p in paths), key=lambda p: p.name):
        size = p.stat().st_size
        h = hashlib.sha256()
        with p.open("rb") as f:
            for offset in sorted(
                {0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)}
            ):
                f.seek(offset)
                h.update(f.read(_SAMPLE_BYTES))
        shards.append([p.name, size, h.hexdigest()[:16]])
    return {"version": FINGERPRINT_VERSION, "shards": shards}


def fingerprint_difference(saved: dict, now: dict) -> str | None:
    """How two `data_fingerprint`s differ, naming the first shard (by name) that does, with a
    count of the others; None when they are the same data."""
    if saved.get("version") != now.get("version"):
        return f"fingerprint version {saved.get('version')}, now {now.get('version')}"
    old = {name: (size, h) for name, size, h in saved["shards"]}
    new = {name: (size, h) for name, size, h in now["shards"]}
    diffs = []
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            diffs.append(f"shard {name} is gone")
        elif name not in old:
            diffs.append(f"shard {name} is new")
        elif old[name][0] != new[name][0]:
            diffs.append(f"shard {name} is {new[name][0]:,} bytes, was {old[name][0]:,}")
        elif old[name][1] != new[name][1]:
            diffs.append(f"shard {name} holds other tokens (same name and size)")
    if not diffs:
        return None
    more = f" (and {len(diffs) - 1} more shards differ)" if len(diffs) > 1 else ""
    return diffs[0] + more


def token_id_problem(
    data_dir: str | os.PathLike,
    vocab_size: int,
    rank: int = 0,
    world_size: int = 1,
    splits: tuple[str, ...] = ("train", "val"),
) -> str | None:
    """The first shard (of this rank's share: every world_size-th, both splits) holding a token
    id >= vocab_size, as a one-line problem with its fix; None when all ids fit.

    A vectorised scan of the memory-mapped shards, about 0.1 s per 100M tokens from the page
    cache: cheap next to a run, and it names the shard instead of an IndexError mid-run.
    """
    if vocab_size > 65535:
        return None  # every uint16 id fits
    paths = [p for split in splits for p in shard_paths(data_dir, split)]
    for path in paths[rank::world_size]:
        try:  # a problem is returned, not raised: the caller shares it with every rank
            tokens = read_shard(path)
        except UserError as e:
            return str(e)
        step = 1 << 24
        top = max((int(tokens[i : i + step].max()) for i in range(0, len(tokens), step)), default=0)
        if top >= vocab_size:
            return (
                f"shard {path} holds token id {top} but model.vocab_size is {vocab_size}; "
                f"set --model.vocab_size={top + 1} or more (50257 for GPT-2 tokens), or "
                "re-create the shard if it is corrupt"
            )
    return None


def load_tokens(data_dir: str | os.PathLike, split: str, n_tokens: int | None) -> np.ndarray:
    """The first `n_tokens` tokens (None = all) of the split's shards, in order, as uint16."""
    parts: list[np.ndarray] = []
    have = 0
    for path in shard_paths(data_dir, split):
        if n_tokens is not None and have >= n_tokens:
            break
        shard = read_shard(path)
        take = len(shard) if n_tokens is None else min(len(shard), n_tokens - have)
        parts.append(np.asarray(shard[:take]))
        have += take
    if n_tokens is not None and have < n_tokens:
        # validation reads eval.val_tokens + 1 tokens (the +1 is the last target)
        budget = f"e.g. eval.val_tokens={have - 1}, " if have > 1 else ""
        raise UserError(
            f"{data_dir} holds only {have:,} {split} tokens but {n_tokens:,} were asked for; "
            f"lower the token budget ({budget}validation reads eval.val_tokens + 1 tokens) "
            "or prepare more data"
        )
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


# --------------------------------------------------------------------------- the loader


class TokenLoader:
    """Batches of (x, y) int64 [B, T] windows from memory-mapped shards; rank-aware, resumable.

    Every rank must use the same data_dir, split, seq_len, seed and (batch_size * world_size).
    """

    STATE_VERSION = 1

    def __init__(
        self,
        data_dir: str,
        split: str,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        import torch  # the loader's own: data prep imports this module and never loads torch

        if batch_size <= 0 or seq_len <= 0:
            raise UserError(f"batch size ({batch_size}) and seq_len ({seq_len}) must be positive")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        self.data_dir, self.split = str(data_dir), split
        self.B, self.T = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        self.shuffle = split == "train"  # validation reads in file order
        self.paths, short = shards_with_a_window(data_dir, split, seq_len)
        if short and rank == 0:
            names = ", ".join(f"{p.name} ({n:,} tokens)" for p, n in short[:3])
            more = f" and {len(short) - 3} more" if len(short) > 3 else ""
            print(
                f"note: skipping {len(short)} {split} shard(s) shorter than one window of "
                f"seq_len+1 = {seq_len + 1} tokens: {names}{more}"
            )
        allow_open_files(len(self.paths), option="data.dir")
        self.shards = [read_shard(p) for p in self.paths]  # one open file each (the memmap's)
        self.n_windows = [(len(s) - 1) // seq_len for s in self.shards]
        self.total_windows = sum(self.n_windows)
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = self.total_windows // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{data_dir} ({split}) holds {self.total_windows} windows of {seq_len + 1} tokens, "
                f"fewer than one global batch of {self.global_batch} (batch size x world size); "
                f"lower the batch size or seq_len, or prepare more data"
            )
        self._pin = self.device.type == "cuda"
        self._host: torch.Tensor | None = None  # [B, T+1] int64, pinned on CUDA
        self._copy_done: torch.cuda.Event | None = None
        self.reset()

    # -- position ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the first batch of epoch 0."""
        self.epoch = 0
        self.pos = 0  # windows of this epoch consumed by all ranks together
        self._set_epoch(0)

    def _set_epoch(self, epoch: int) -> None:
        n = len(self.shards)
        if self.shuffle:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            self._order = np.arange(n)
        counts = [self.n_windows[i] for i in self._order]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()  # epoch position -> shard
        self._perm_cache: dict[int, np.ndarray] = {}

    def _window_perm(self, shard: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        perm = self._perm_cache.get(shard)
        if perm is None:
            if len(self._perm_cache) >= 4:  # positions advance monotonically: keep a few
                self._perm_cache.pop(next(iter(self._perm_cache)))
            rng = np.random.default_rng([self.seed, self.epoch, shard])
            perm = rng.permutation(self.n_windows[shard])
            self._perm_cache[shard] = perm
        return perm

    def _window(self, pos: int) -> tuple[int, int]:
        """Epoch position -> (shard index, token offset of the window)."""
        j = bisect.bisect_right(self._starts, pos) - 1
        shard = int(self._order[j])
        k = pos - self._starts[j]
        perm = self._window_perm(shard)
        if perm is not None:
            k = int(perm[k])
        return shard, k * self.T

    # -- batches ----------------------------------------------------------------------------

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): int64 [B, T] on `device`; y[:, t] is the token after x[:, t]."""
        import torch  # see __init__

        if self.pos + self.global_batch > self.total_windows:  # the rest would not fill a batch
            self.epoch += 1
            self.pos = 0
            self._set_epoch(self.epoch)
        first = self.pos + self.rank * self.B
        self.pos += self.global_batch
        if not self._pin:
            host_t = torch.empty((self.B, self.T + 1), dtype=torch.int64)  # callers may keep it
        else:
            if self._host is None:
                self._host = torch.empty((self.B, self.T + 1), dtype=torch.int64, pin_memory=True)
            elif self._copy_done is not None:
                self._copy_done.synchronize()  # the previous async copy still reads this buffer
            host_t = self._host
        host = host_t.numpy()
        for row in range(self.B):
            shard, off = self._window(first + row)
            host[row] = self.shards[shard][off : off + self.T + 1]
        if self.device.type == "cpu":
            buf = host_t
        elif self._pin:
            # The copy runs on self.device's current stream; the event must be recorded on that
            # same stream (Event.record() with no stream uses the *current device's* stream).
            with torch.cuda.device(self.device):
                buf = host_t.to(self.device, non_blocking=True)
                self._copy_done = torch.cuda.Event()
                self._copy_done.record(torch.cuda.current_stream(self.device))
        else:
            buf = host_t.to(self.device)
        return buf[:, :-1], buf[:, 1:]  # views of one [B, T+1] tensor

    # -- resume -----------------------------------------------------------------------------

    def _fingerprint(self) -> dict:
        return {
            "split": self.split,
            "seq_len": self.T,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shards": [p.name for p in self.paths],
            "shard_tokens": [len(s) for s in self.shards],
        }

    def state_dict(self) -> dict:
        """JSON-serializable position: the next batch comes from (epoch, window position)."""
        return {
            "version": self.STATE_VERSION,
            "epoch": self.epoch,
            "position": self.pos,  # windows consumed in this epoch
            "global_batch": self.global_batch,
            **self._fingerprint(),
        }

    def load_state_dict(self, d: dict) -> None:
        """Continue exactly where `state_dict()` was taken (same data and settings required)."""
        if d.get("version") != self.STATE_VERSION:
            raise UserError(f"loader state version {d.get('version')} is not {self.STATE_VERSION}")
        mine = self._fingerprint()
        for key, value in mine.items():
            if d.get(key) != value:
                if key in ("shards", "shard_tokens"):  # name the shard, not a truncated list
                    what = _shard_list_difference(d.get("shards"), d.get("shard_tokens"), mine)
                else:
                    what = f"{key}: saved {_short(d.get(key))}, now {_short(value)}"
                raise UserError(
                    f"the checkpoint's data loader state does not match {self.data_dir} "
                    f"({what}); resume with the same data dir, seq_len and seed, or start a new run"
                )
        # The position counts windows, so a different global batch (another world size) resumes
        # at the same place in the same epoch order; only the split of rows over ranks changes.
        self.epoch = int(d["epoch"])
        self._set_epoch(self.epoch)
        self.pos = int(d["position"])


def shards_with_a_window(
    data_dir: str | os.PathLike, split: str, seq_len: int
) -> tuple[list[Path], list[tuple[Path, int]]]:
    """(the split's shards holding at least one window of seq_len + 1 tokens, [(each shorter
    shard, its tokens)]). Shorter ones (data prep's last shard, the remainder of the stream)
    cannot form a window; a split where every shard is that short is a one-line error.
    """
    usable, short = [], []
    for p in shard_paths(data_dir, split):
        n = len(read_shard(p))
        if n >= seq_len + 1:
            usable.append(p)
        else:
            short.append((p, n))
    if not usable:
        longest, n = max(short, key=lambda pn: pn[1])
        raise UserError(
            f"every {split} shard in {data_dir} is shorter than one window of seq_len+1 = "
            f"{seq_len + 1} tokens (the longest, {longest.name}, has {n:,}); lower "
            "train.seq_len or prepare the data with a larger --shard-size"
        )
    return usable, short


def _shard_list_difference(names: object, tokens: object, now: dict) -> str:
    """The first train shard that differs between a saved loader state's lists (`names`,
    `tokens`) and `now` (a loader's `_fingerprint`), in words."""
    if not isinstance(names, list) or not isinstance(tokens, list) or len(names) != len(tokens):
        return f"shards: saved {_short(names)}"
    old = dict(zip(names, tokens, strict=True))
    new = dict(zip(now["shards"], now["shard_tokens"], strict=True))
    for i, name in enumerate(now["shards"]):
        if i >= len(names) or names[i] != name:
            if name not in old:
                return f"shard {name} is new (the checkpoint's loader did not read it)"
            return f"shard {name} is at place {i} of the list, not {names.index(name)}"
        if old[name] != new[name]:
            return f"shard {name} holds {new[name]:,} tokens, the checkpoint's {old[name]:,}"
    missing = [n for n in names if n not in new]
    if missing:
        return f"shard {missing[0]} is gone (the checkpoint's loader read it)"
    return f"shards: saved {_short(names)}"


def _short(value: object) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."
