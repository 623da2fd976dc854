"""The shard format and the TokenLoader: header round trip and errors, layout, ranks, resume."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2repro.data import (
    HEADER_BYTES,
    MAGIC,
    TokenLoader,
    data_fingerprint,
    encode_header,
    fingerprint_difference,
    load_tokens,
    read_shard,
    shard_paths,
    shard_sha256,
    write_shard,
)
from gpt2repro.errors import UserError


def _shards(tmp: Path, sizes: list[int], split: str = "train", seed: int = 0) -> list[np.ndarray]:
    """Shards whose token k is a distinct value per position, so windows can be identified."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(sizes):
        toks = rng.integers(0, 50257, size=n, dtype=np.uint16)
        write_shard(tmp / f"t_{split}_{i:06d}.bin", toks)
        out.append(toks)
    return out


# --------------------------------------------------------------------------- format


def test_header_round_trip_and_llmc_layout(tmp_path: Path) -> None:
    toks = np.array([50256, 15496, 995, 0, 65535], dtype=np.uint16)
    p = tmp_path / "x_train_000001.bin"
    write_shard(p, toks)
    raw = p.read_bytes()
    # exactly what llm.c's loader reads: 256 int32 LE header, then uint16 LE tokens
    header = struct.unpack("<256i", raw[:HEADER_BYTES])
    assert header[:3] == (20240520, 1, 5) and not any(header[3:])
    assert struct.unpack("<5H", raw[HEADER_BYTES:]) == tuple(int(t) for t in toks)
    assert len(raw) == HEADER_BYTES + 2 * len(toks)
    back = read_shard(p)
    assert back.dtype == np.uint16 and np.array_equal(back, toks)
    assert shard_sha256(toks) == __import__("hashlib").sha256(raw).hexdigest()
    assert encode_header(5) == raw[:HEADER_BYTES]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_write_shard_rejects_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a_train_0.bin", np.array([70000]))
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a_train_0.bin", np.array([-1]))


def _bad_header(tmp_path: Path, ints: list[int], n_body: int) -> Path:
    header = np.zeros(256, dtype="<i4")
    header[: len(ints)] = ints
    p = tmp_path / "bad_train_000001.bin"
    p.write_bytes(header.tobytes() + b"\0\0" * n_body)
    return p


@pytest.mark.parametrize(
    "ints,n_body,needle",
    [
        ([123, 1, 4], 4, "magic 123"),
        ([MAGIC, 7, 4], 4, "version 7"),
        ([MAGIC, 1, 10], 4, "header says 10 tokens"),  # truncated
        ([MAGIC, 1, 2], 4, "header says 2 tokens"),  # trailing garbage
    ],
)
def test_header_errors_name_file_and_fix(
    tmp_path: Path, ints: list[int], n_body: int, needle: str
) -> None:
    p = _bad_header(tmp_path, ints, n_body)
    with pytest.raises(UserError) as e:
        read_shard(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg
    assert "re-create" in msg or "re-run" in msg


def test_short_file_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "s_train_000001.bin"
    p.write_bytes(b"\1\2\3")
    with pytest.raises(UserError, match="shorter than the 1024-byte header"):
        read_shard(p)
    with pytest.raises(UserError, match="does not exist"):
        read_shard(tmp_path / "nope_train_1.bin")


def test_npy_shards(tmp_path: Path) -> None:
    toks = np.arange(3000, dtype=np.uint16)
    np.save(tmp_path / "edufineweb_train_000001.npy", toks)
    np.save(tmp_path / "edufineweb_val_000000.npy", toks[:100])
    assert np.array_equal(read_shard(tmp_path / "edufineweb_train_000001.npy"), toks)
    assert [p.name for p in shard_paths(tmp_path, "val")] == ["edufineweb_val_000000.npy"]
    np.save(tmp_path / "wrong_train_000002.npy", toks.astype(np.int32))
    with pytest.raises(UserError, match="expected a 1-D uint16"):
        read_shard(tmp_path / "wrong_train_000002.npy")


def test_shard_paths_and_load_tokens(tmp_path: Path) -> None:
    a = _shards(tmp_path, [100, 50, 70])
    with pytest.raises(UserError, match="no val shards.*data_prep/fineweb.py"):
        shard_paths(tmp_path, "val")
    with pytest.raises(UserError, match="does not exist"):
        shard_paths(tmp_path / "missing", "train")
    assert [p.name for p in shard_paths(tmp_path, "train")] == [
        f"t_train_{i:06d}.bin" for i in range(3)
    ]
    got = load_tokens(tmp_path, "train", 160)
    assert np.array_equal(got, np.concatenate(a)[:160])
    assert np.array_equal(load_tokens(tmp_path, "train", None), np.concatenate(a))
    with pytest.raises(UserError, match="only 220 train tokens"):
        load_tokens(tmp_path, "train", 221)


def test_shard_names_split_and_prefix_by_regex(tmp_path: Path) -> None:
    toks = np.arange(100, dtype=np.uint16)
    write_shard(tmp_path / "my_val_set_val_000000.bin", toks)
    for i in (1, 2, 3):  # numbered without a gap (a gap is refused: see below)
        write_shard(tmp_path / f"my_val_set_train_{i:06d}.bin", toks)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / ".my_val_set_train_000003.bin.x1.tmp").write_bytes(b"")  # a writer's temp file
    # the split is the part before the index, not "_val_" anywhere in the name
    assert [p.name for p in shard_paths(tmp_path, "val")] == ["my_val_set_val_000000.bin"]
    assert [p.name for p in shard_paths(tmp_path, "train")] == [
        f"my_val_set_train_{i:06d}.bin" for i in (1, 2, 3)
    ]
    # a name the pattern does not match is not a shard, and the error says so
    only_odd = tmp_path / "odd"
    only_odd.mkdir()
    write_shard(only_odd / "x_val_1.bin", toks)
    with pytest.raises(UserError, match=r"no val shards.*x_val_1\.bin does not match"):
        shard_paths(only_odd, "val")


def test_shard_paths_refuses_mixed_prefixes_and_formats(tmp_path: Path) -> None:
    toks = np.arange(100, dtype=np.uint16)
    write_shard(tmp_path / "a_val_000000.bin", toks)
    write_shard(tmp_path / "a_train_000001.bin", toks)
    write_shard(tmp_path / "b_train_000001.bin", toks)
    for split in ("train", "val"):  # another dataset's shards are refused for either split
        with pytest.raises(UserError) as e:
            shard_paths(tmp_path, split)
        msg = str(e.value)
        assert str(tmp_path) in msg and "2 prefixes (a, b)" in msg and "\n" not in msg
    (tmp_path / "b_train_000001.bin").unlink()
    assert len(shard_paths(tmp_path, "train")) == 1
    np.save(tmp_path / "a_train_000002.npy", toks)
    with pytest.raises(UserError, match=r"both \.bin and \.npy train shards of prefix a"):
        shard_paths(tmp_path, "train")
    assert [p.name for p in shard_paths(tmp_path, "val")] == ["a_val_000000.bin"]


# --------------------------------------------------------------------------- loader


def _windows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, ...]]:
    full = torch.cat([x, y[:, -1:]], dim=1)
    assert torch.equal(full[:, 1:], y)  # y is x shifted by one
    return [tuple(r) for r in full.tolist()]


def _all_windows(shards: list[np.ndarray], T: int) -> Counter:
    c: Counter = Counter()
    for s in shards:
        for k in range((len(s) - 1) // T):
            c[tuple(int(v) for v in s[k * T : k * T + T + 1])] += 1
    return c


def test_val_loader_sequential_and_repeatable(tmp_path: Path) -> None:
    shards = _shards(tmp_path, [41, 33], split="val")
    T, B = 8, 2
    loader = TokenLoader(str(tmp_path), "val", B, T)
    x, y = loader.next_batch()
    assert x.dtype == torch.int64 and x.shape == (B, T) and y.shape == (B, T)
    assert x[0].tolist() == shards[0][0:8].tolist() and y[0].tolist() == shards[0][1:9].tolist()
    assert x[1].tolist() == shards[0][8:16].tolist()
    first = [loader.next_batch() for _ in range(4)]
    loader.reset()
    loader.next_batch()
    again = [loader.next_batch() for _ in range(4)]
    for (a, b), (c, d) in zip(first, again, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    # 5 + 4 windows = 9 -> 4 batches per epoch; the 5th call starts epoch 1 at the beginning
    fresh = TokenLoader(str(tmp_path), "val", B, T)
    batches = [fresh.next_batch()[0] for _ in range(5)]
    assert torch.equal(batches[4], batches[0])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_disjoint_and_cover_the_epoch(tmp_path: Path, world: int) -> None:
    shards = _shards(tmp_path, [161, 97, 130])
    T, B = 8, 2
    loaders = [TokenLoader(str(tmp_path), "train", B, T, r, world, seed=5) for r in range(world)]
    steps = loaders[0].steps_per_epoch
    total = sum((len(s) - 1) // T for s in shards)
    assert steps == total // (B * world)
    seen: Counter = Counter()
    for _ in range(steps):
        for ld in loaders:
            seen.update(_windows(*ld.next_batch()))
    universe = _all_windows(shards, T)
    assert sum(seen.values()) == steps * B * world
    assert all(v == 1 for v in seen.values())  # disjoint across ranks and steps
    assert set(seen) <= set(universe)
    assert len(universe) - len(seen) == total % (B * world)  # only the tail is dropped


def test_rank_equivalence_two_ranks_equal_one_with_double_batch(tmp_path: Path) -> None:
    _shards(tmp_path, [300, 211, 190])
    T, B = 8, 3
    one = TokenLoader(str(tmp_path), "train", 2 * B, T, seed=11)
    two = [TokenLoader(str(tmp_path), "train", B, T, r, 2, seed=11) for r in range(2)]
    for _ in range(3 * one.steps_per_epoch + 1):  # across epoch boundaries too
        x1, y1 = one.next_batch()
        parts = [ld.next_batch() for ld in two]
        assert torch.equal(x1, torch.cat([p[0] for p in parts]))  # same rows, same order
        assert torch.equal(y1, torch.cat([p[1] for p in parts]))


def test_train_shuffles_per_epoch_deterministically(tmp_path: Path) -> None:
    _shards(tmp_path, [401, 305])  # 50 + 38 windows: no tail dropped
    T, B = 8, 4
    a = TokenLoader(str(tmp_path), "train", B, T, seed=1)
    b = TokenLoader(str(tmp_path), "train", B, T, seed=1)
    c = TokenLoader(str(tmp_path), "train", B, T, seed=2)
    n = a.steps_per_epoch
    ea = [a.next_batch()[0] for _ in range(2 * n)]
    eb = [b.next_batch()[0] for _ in range(2 * n)]
    ec = [c.next_batch()[0] for _ in range(n)]
    assert all(torch.equal(p, q) for p, q in zip(ea, eb, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(ea[:n], ec, strict=True))
    epoch0 = torch.cat(ea[:n]).tolist()
    epoch1 = torch.cat(ea[n:]).tolist()
    assert epoch0 != epoch1  # a new order each epoch ...
    assert sorted(epoch0) == sorted(epoch1)  # ... of the same windows
    unshuffled = TokenLoader(str(tmp_path), "train", B, T)
    unshuffled.shuffle = False
    unshuffled.reset()
    seq = unshuffled.next_batch()[0]
    assert seq[0].tolist() == read_shard(tmp_path / "t_train_000000.bin")[:T].tolist()


def test_state_dict_resume_gives_identical_batches(tmp_path: Path) -> None:
    _shards(tmp_path, [250, 170])
    T, B = 8, 2
    ref = TokenLoader(str(tmp_path), "train", B, T, rank=1, world_size=2, seed=3)
    for _ in range(ref.steps_per_epoch + 2):  # into the second epoch
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # plain JSON
    expected = [ref.next_batch() for _ in range(ref.steps_per_epoch)]
    resumed = TokenLoader(str(tmp_path), "train", B, T, rank=1, world_size=2, seed=3)
    resumed.load_state_dict(state)
    for ex, got in zip(expected, [resumed.next_batch() for _ in expected], strict=True):
        assert torch.equal(ex[0], got[0]) and torch.equal(ex[1], got[1])
    other = TokenLoader(str(tmp_path), "train", B, T + 1, seed=3)
    with pytest.raises(UserError, match="seq_len"):
        other.load_state_dict(state)
    # One process with the same global batch (2B) continues with exactly the union of the rows
    # both ranks would have had: the loader position does not depend on the world size.
    rank0 = TokenLoader(str(tmp_path), "train", B, T, rank=0, world_size=2, seed=3)
    rank0.load_state_dict(state)
    single = TokenLoader(str(tmp_path), "train", 2 * B, T, seed=3)
    single.load_state_dict(state)
    for ex1, _ in zip(expected, range(3), strict=False):
        ex0 = rank0.next_batch()
        got = single.next_batch()
        assert torch.equal(got[0], torch.cat([ex0[0], ex1[0]]))


def test_loader_skips_a_shard_shorter_than_one_window_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Data prep's remainder shard (5 tokens < seq_len + 1) is skipped: the batches are exactly
    those of the directory without it, and a note names it."""
    kept = tmp_path / "kept"
    both = tmp_path / "both"
    kept.mkdir()
    both.mkdir()
    _shards(kept, [100])
    _shards(both, [100, 5])
    capsys.readouterr()
    ref = TokenLoader(str(kept), "train", 2, 8, seed=4)
    assert capsys.readouterr().out == ""
    got = TokenLoader(str(both), "train", 2, 8, seed=4)
    note = capsys.readouterr().out.strip()
    assert (
        note.startswith("note: skipping 1 train shard") and "t_train_000001.bin (5 tokens)" in note
    )
    for _ in range(30):  # past an epoch boundary (12 windows per epoch, 2 per batch)
        (x0, y0), (x1, y1) = ref.next_batch(), got.next_batch()
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_loader_errors(tmp_path: Path) -> None:
    _shards(tmp_path, [5, 8])
    with pytest.raises(UserError, match="shorter than one window") as e:
        TokenLoader(str(tmp_path), "train", 1, 8)
    assert "t_train_000001.bin, has 8" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no val shards"):
        TokenLoader(str(tmp_path), "val", 1, 8)
    d = tmp_path / "small"
    d.mkdir()
    _shards(d, [33])
    with pytest.raises(UserError, match="fewer than one global batch"):
        TokenLoader(str(d), "train", 3, 8, rank=0, world_size=2)


def test_loader_reads_npy_and_batches_are_independent(tmp_path: Path) -> None:
    toks = np.arange(1000, dtype=np.uint16)
    np.save(tmp_path / "e_train_000001.npy", toks)
    ld = TokenLoader(str(tmp_path), "train", 2, 16)
    ld.shuffle = False  # file order, to name the expected windows
    ld.reset()
    x0, _ = ld.next_batch()
    x1, _ = ld.next_batch()
    assert x0[0].tolist() == list(range(16)) and x1[0].tolist() == list(range(32, 48))
    assert x0[0, 0].item() == 0  # the first batch was not overwritten by the second


def test_token_ids_beyond_the_vocab_are_named_with_their_shard(tmp_path: Path) -> None:
    from gpt2repro.data import token_id_problem

    ok = np.arange(100, dtype=np.uint16)
    write_shard(tmp_path / "t_val_000000.bin", ok)
    write_shard(tmp_path / "t_train_000001.bin", ok)
    bad = ok.copy()
    bad[57] = 700  # one bad id deep in a train shard
    write_shard(tmp_path / "t_train_000002.bin", bad)
    assert token_id_problem(tmp_path, vocab_size=50257) is None
    problem = token_id_problem(tmp_path, vocab_size=512)
    assert problem is not None and "t_train_000002.bin" in problem and "token id 700" in problem
    assert "--model.vocab_size=701" in problem
    # split across ranks: only the rank holding that shard reports it
    found = [token_id_problem(tmp_path, 512, rank=r, world_size=2) for r in range(2)]
    assert sum(p is not None for p in found) == 1
    assert token_id_problem(tmp_path, vocab_size=50) is not None  # the other shards too


def test_token_scan_reports_a_bad_shard_instead_of_raising(tmp_path: Path) -> None:
    """Every rank must reach the collective that shares the problem: a broken shard in one
    rank's share comes back as a problem, not an exception on that rank alone."""
    from gpt2repro.data import token_id_problem

    ok = np.arange(100, dtype=np.uint16)
    write_shard(tmp_path / "t_train_000001.bin", ok)
    (tmp_path / "t_train_000002.bin").write_bytes(b"\x00" * 10)  # truncated
    problem = token_id_problem(tmp_path, vocab_size=512, splits=("train",))
    assert problem is not None and "t_train_000002.bin" in problem
    assert token_id_problem(tmp_path, 512, rank=0, world_size=2, splits=("train",)) is None
    # no val shards: fine when only train is scanned (eval.every=0)
    write_shard(tmp_path / "t_train_000002.bin", ok)
    assert token_id_problem(tmp_path, 512, splits=("train",)) is None
    with pytest.raises(UserError, match="no val shards"):
        token_id_problem(tmp_path, 512)


def test_the_open_file_limit_is_raised_for_many_shards_or_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each memory-mapped shard holds an open file: a directory of more shards than the soft
    limit allows raises the soft limit (up to the hard one), or fails in one line naming ulimit
    and --shard-size when the hard limit is too low."""
    import resource

    from gpt2repro.data import allow_open_files

    limits = {"now": (64, 100_000)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda which, lim: limits.update(now=lim))
    _shards(tmp_path, [40] * 3)
    TokenLoader(tmp_path, "train", batch_size=1, seq_len=8)  # 3 + 256 spare > 64: raised
    assert limits["now"] == (65536, 100_000)
    allow_open_files(90_000)  # more than 65,536: raised to what is needed
    assert limits["now"] == (90_256, 100_000)
    limits["now"] = (64, 100_000)
    with pytest.raises(UserError, match=r"ulimit -n .*--shard-size"):
        allow_open_files(200_000)
    assert limits["now"] == (64, 100_000)  # unchanged when it cannot help


# --------------------------------------------------------------------------- whole directory


def _prepped(tmp: Path, n_train: int = 3) -> Path:
    """A directory as data prep leaves it: val 0, train 1..n, and manifest.json listing them."""
    rng = np.random.default_rng(1)
    entries = []
    for i in range(n_train + 1):
        split = "val" if i == 0 else "train"
        toks = rng.integers(0, 50257, size=200 + i, dtype=np.uint16)
        name = f"t_{split}_{i:06d}.bin"
        write_shard(tmp / name, toks)
        entries.append({"file": name, "split": split, "tokens": len(toks)})
    (tmp / "manifest.json").write_text(json.dumps({"complete": True, "shards": entries}))
    return tmp


def _refusal(d: Path, split: str = "train") -> str:
    with pytest.raises(UserError) as e:
        shard_paths(d, split)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    return msg


def test_a_shard_missing_from_the_manifest_is_named(tmp_path: Path) -> None:
    d = _prepped(tmp_path)
    assert len(shard_paths(d, "train")) == 3
    (d / "t_train_000003.bin").unlink()  # the last one: no gap, only the manifest can tell
    msg = _refusal(d)
    assert "t_train_000003.bin" in msg and "missing" in msg and "data_prep" in msg
    _refusal(d, "val")  # the whole directory is checked, whichever split is asked for


def test_an_extra_renamed_or_resized_shard_is_named(tmp_path: Path) -> None:
    d = _prepped(tmp_path)
    write_shard(d / "t_train_000004.bin", np.arange(10, dtype=np.uint16))
    assert "t_train_000004.bin" in (msg := _refusal(d)) and "not listed" in msg
    (d / "t_train_000004.bin").unlink()
    (d / "t_train_000003.bin").rename(d / "t_train_000005.bin")  # renamed: named both ways
    msg = _refusal(d)
    assert "t_train_000003.bin" in msg and "t_train_000005.bin" in msg and "renamed" in msg
    (d / "t_train_000005.bin").rename(d / "t_train_000003.bin")
    with open(d / "t_train_000002.bin", "r+b") as f:  # truncated: shorter than listed
        f.truncate(HEADER_BYTES + 100)
    msg = _refusal(d)
    assert "t_train_000002.bin" in msg and f"{HEADER_BYTES + 100:,} bytes" in msg


def test_a_gap_in_the_numbering_is_refused_without_a_manifest(tmp_path: Path) -> None:
    d = _prepped(tmp_path)
    (d / "manifest.json").unlink()
    (d / "t_train_000002.bin").unlink()  # from the middle
    msg = _refusal(d)
    assert "000002" in msg and "t_train_000001.bin" in msg and "t_train_000003.bin" in msg
    (d / "t_train_000001.bin").unlink()  # the first train shard: a gap after the val shard
    assert "000001" in _refusal(d)
    # each split numbered from 0 (another common layout) has no gap
    other = tmp_path / "other"
    other.mkdir()
    _shards(other, [50, 50], "val")
    _shards(other, [50, 50, 50], "train")
    assert len(shard_paths(other, "train")) == 3 and len(shard_paths(other, "val")) == 2


def test_a_dangling_link_or_a_directory_as_a_shard_is_refused(tmp_path: Path) -> None:
    for manifest in (True, False):
        d = tmp_path / f"m{manifest}"
        d.mkdir()
        _prepped(d)
        if not manifest:
            (d / "manifest.json").unlink()
        (d / "t_train_000002.bin").unlink()
        (d / "t_train_000002.bin").symlink_to("/mnt/not-mounted/t_train_000002.bin")
        msg = _refusal(d)
        assert "t_train_000002.bin" in msg and "/mnt/not-mounted" in msg and "does not exist" in msg
    d = tmp_path / "dir"
    d.mkdir()
    _prepped(d)
    (d / "t_train_000003.bin").unlink()
    (d / "t_train_000003.bin").mkdir()
    assert "is a directory" in _refusal(d)


def test_an_unreadable_manifest_is_named_and_another_tools_is_ignored(tmp_path: Path) -> None:
    d = _prepped(tmp_path)
    (d / "manifest.json").write_text('{"shards": [1, 2]}')
    assert "manifest.json" in (msg := _refusal(d)) and "not a data prep manifest" in msg
    (d / "manifest.json").write_text("{not json")
    assert "manifest.json cannot be read" in _refusal(d)
    (d / "manifest.json").write_text('{"name": "another tool"}')
    assert len(shard_paths(d, "train")) == 3


def test_the_fingerprint_is_content_not_the_paths_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _prepped(tmp_path / "a")
    fp = data_fingerprint(d)
    assert [s[0] for s in fp["shards"]] == [f"t_{s}.bin" for s in (
        "train_000001", "train_000002", "train_000003", "val_000000")]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(d)
    for spelling in ("a", "./a/", str(d), "link"):
        assert fingerprint_difference(fp, data_fingerprint(spelling)) is None
    # other tokens under the same names and sizes
    e = _prepped(tmp_path / "b")
    toks = read_shard(e / "t_train_000002.bin").copy()
    toks[len(toks) // 2] ^= 1
    write_shard(e / "t_train_000002.bin", toks)
    diff = fingerprint_difference(fp, data_fingerprint(e))
    assert diff == "shard t_train_000002.bin holds other tokens (same name and size)"
    write_shard(e / "t_train_000004.bin", toks)
    json_manifest = json.loads((e / "manifest.json").read_text())
    json_manifest["shards"].append({"file": "t_train_000004.bin", "tokens": len(toks)})
    (e / "manifest.json").write_text(json.dumps(json_manifest))
    diff = fingerprint_difference(fp, data_fingerprint(e))
    assert diff == (
        "shard t_train_000002.bin holds other tokens (same name and size) (and 1 more shards "
        "differ)"
    )


def test_a_loader_state_of_other_shards_names_the_shard(tmp_path: Path) -> None:
    d = _prepped(tmp_path)
    state = TokenLoader(str(d), "train", batch_size=1, seq_len=16).state_dict()
    names = [f"x_train_{i:06d}.bin" for i in range(40)]  # a long list: the message names one
    for saved, needle in [
        ({"shards": names, "shard_tokens": [200] * 40}, "t_train_000001.bin is new"),
        ({"shard_tokens": [201, 202, 999]}, "t_train_000003.bin holds 203 tokens, the checkpoint's 999"),
        ({"shards": [*state["shards"], "t_train_000009.bin"], "shard_tokens": [201, 202, 203, 5]}, "t_train_000009.bin is gone"),
    ]:  # fmt: skip
        loader = TokenLoader(str(d), "train", batch_size=1, seq_len=16)
        with pytest.raises(UserError) as e:
            loader.load_state_dict({**state, **saved})
        assert needle in str(e.value) and "..." not in str(e.value)
