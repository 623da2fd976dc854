"""Bad-input cases: data verified by content, data prep inputs and outputs (the table is test_bad_inputs.py)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
from badinput import FINEWEB, MODEL, PY, TINY, TRAIN, TRAIN_M, Case

from gpt2repro import checkpoint
from gpt2repro.config import OptimConfig, load_config, to_dict
from gpt2repro.data import HEADER_BYTES, data_fingerprint, shard_sha256, write_shard

EVALUATE = [PY, "-m", "gpt2repro.evaluate"]
# `python -m gpt2repro.prep.fineweb` as if zstandard were not installed (None in sys.modules makes
# its import fail), whether or not this venv has it
FINEWEB_NO_ZSTD = [
    PY,
    "-c",
    "import runpy, sys; sys.modules['zstandard'] = None; sys.argv[0] = 'fineweb'; "
    "runpy.run_module('gpt2repro.prep.fineweb', run_name='__main__')",
]


def _prepped(d: Path, seed: int = 0, manifest: bool = True) -> None:
    """A data directory as data prep leaves it: val 0, train 1-3 (ids below MODEL's vocab) and
    manifest.json listing them."""
    d.mkdir()
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(4):
        split = "val" if i == 0 else "train"
        toks = rng.integers(0, 500, size=1000, dtype=np.uint16)
        name = f"t_{split}_{i:06d}.bin"
        write_shard(d / name, toks)
        entries.append({"file": name, "split": split, "tokens": 1000, "sha256": shard_sha256(toks)})
    if manifest:
        (d / "manifest.json").write_text(json.dumps({"complete": True, "shards": entries}))


def build(w: Path) -> None:
    """The files these cases need, made in the world directory `w` before any case runs."""
    _prepped(w / "dv_missing")
    (w / "dv_missing" / "t_train_000003.bin").unlink()  # the last: no gap, the manifest tells
    _prepped(w / "dv_extra")
    shutil.copy(w / "dv_extra" / "t_train_000003.bin", w / "dv_extra" / "t_train_000004.bin")
    _prepped(w / "dv_renamed")
    (w / "dv_renamed" / "t_train_000002.bin").rename(w / "dv_renamed" / "t_train_000009.bin")
    _prepped(w / "dv_size")
    with open(w / "dv_size" / "t_train_000002.bin", "r+b") as f:
        f.truncate(HEADER_BYTES + 600)  # a truncated copy: still a whole number of tokens
    for name, manifest in (("dv_gap", False), ("dv_gap_manifest", True)):
        _prepped(w / name, manifest=manifest)
        (w / name / "t_train_000002.bin").unlink()  # deleted from the middle
    _prepped(w / "dv_gap_first", manifest=False)
    (w / "dv_gap_first" / "t_train_000001.bin").unlink()
    for name, manifest in (("dv_link", True), ("dv_link_bare", False)):
        _prepped(w / name, manifest=manifest)
        (w / name / "t_train_000002.bin").unlink()
        (w / name / "t_train_000002.bin").symlink_to(w / "unmounted" / "t_train_000002.bin")
    _prepped(w / "dv_dir", manifest=False)
    (w / "dv_dir" / "t_train_000003.bin").unlink()
    (w / "dv_dir" / "t_train_000003.bin").mkdir()
    _prepped(w / "dv_badjson")
    (w / "dv_badjson" / "manifest.json").write_text('{"complete": true, "shards": [')
    # a run trained on dv_a, and dv_b: other tokens under the same names and sizes
    _prepped(w / "dv_a", seed=1)
    _prepped(w / "dv_b", seed=2)
    from gpt2repro.model import GPT  # torch: as test_bad_inputs.build_world imports it
    from gpt2repro.optim import build_optimizer

    cfg, _ = load_config([*TINY, f"--data.dir={w / 'dv_a'}"])
    assert cfg.model == MODEL
    model = GPT(MODEL)
    checkpoint.save(
        w / "dv_run",
        2,
        model,
        build_optimizer(model, OptimConfig(), "cpu"),
        state={
            "step": 2,
            "tokens": 512,
            "config": to_dict(cfg),
            "data_fingerprint": data_fingerprint(w / "dv_a"),
        },
        loader_state={"position": 0},
        keep_last=0,
    )
    shutil.copytree(w / "dv_a", w / "dv_a_less")  # the run's data, its last shard gone
    (w / "dv_a_less" / "manifest.json").unlink()
    (w / "dv_a_less" / "t_train_000003.bin").unlink()
    # data prep inputs
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(3))
    (w / "dv_corpus").mkdir()
    (w / "dv_corpus" / "a.jsonl").write_text(docs)
    (w / "dv_mixed_in").mkdir()
    (w / "dv_mixed_in" / "a.jsonl").write_text(docs)
    (w / "dv_mixed_in" / "notes.md").write_text("my notes\n")
    (w / "dv_subdir_in" / "more").mkdir(parents=True)
    (w / "dv_subdir_in" / "a.jsonl").write_text(docs)
    (w / "dv_link_in").mkdir()
    (w / "dv_link_in" / "a.jsonl").write_text(docs)
    (w / "dv_link_in" / "b.jsonl").symlink_to(w / "unmounted" / "b.jsonl")
    (w / "dv_zst_in").mkdir()
    (w / "dv_zst_in" / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(16))
    (w / "dv_gz_in").mkdir()
    (w / "dv_gz_in" / "a.jsonl.gz").write_bytes(gzip.compress(docs.encode() * 50, mtime=0)[:-30])


def _train(data: str, run: str, cli: list[str] = TRAIN) -> list[str]:
    return [*cli, *TINY, f"--data.dir={{w}}/{data}", f"--run.dir={{w}}/{run}"]


def _fineweb(src: str, out: str, *extra: str, cli: list[str] = FINEWEB) -> list[str]:
    return [*cli, "--input", src, "--out-dir", out, "--workers", "1", "--quiet", *extra]


def cases() -> list[Case]:
    fix = "re-run the data_prep script"
    return [
        # ---- training refuses a data directory that is not whole, naming the shard
        Case("data-manifest-shard-missing", _train("dv_missing", "dr1"), ["{w}/dv_missing", "t_train_000003.bin", "missing", fix]),
        Case("data-manifest-shard-extra", _train("dv_extra", "dr2", TRAIN_M), ["t_train_000004.bin", "not listed in manifest.json"]),
        Case("data-manifest-shard-renamed", _train("dv_renamed", "dr3"), ["t_train_000002.bin", "t_train_000009.bin", "renamed"]),
        Case("data-manifest-shard-wrong-size", _train("dv_size", "dr4"), ["t_train_000002.bin", "1,624 bytes", "truncated", fix]),
        Case("data-gap-without-manifest", _train("dv_gap", "dr5"), ["{w}/dv_gap", "000002", "t_train_000001.bin", "t_train_000003.bin"]),
        Case("data-gap-with-manifest", _train("dv_gap_manifest", "dr6", TRAIN_M), ["t_train_000002.bin", "missing"]),
        Case("data-gap-first-train-shard", _train("dv_gap_first", "dr7"), ["000001", "t_val_000000.bin"]),
        Case("data-dangling-link-shard", _train("dv_link", "dr8"), ["t_train_000002.bin", "{w}/unmounted/t_train_000002.bin", "does not exist"]),
        Case("data-dangling-link-shard-no-manifest", _train("dv_link_bare", "dr9", TRAIN_M), ["t_train_000002.bin", "does not exist", "mounted"]),
        Case("data-shard-is-a-directory", _train("dv_dir", "dr10"), ["t_train_000003.bin", "is a directory"]),
        Case("data-manifest-not-json", _train("dv_badjson", "dr11"), ["{w}/dv_badjson", "manifest.json cannot be read"]),
        Case("data-evaluate-val-data-gap", [*EVALUATE, "--checkpoint", "{w}/run", "--val-data", "{w}/dv_gap", "--val-tokens", "256", "--device", "cpu"], ["--val-data", "000002"], ["val_loss"]),
        # ---- resume compares the data by content, naming the shard that differs
        Case("data-resume-other-data-same-names", _train("dv_b", "dv_run"), ["data.dir", "t_train_000001.bin holds other tokens", "--checkpoint.allow_changes=data.dir"]),
        Case("data-resume-a-shard-of-the-run-gone", _train("dv_a_less", "dv_run", TRAIN_M), ["data.dir", "shard t_train_000003.bin is gone"]),
        # ---- data prep: inputs it cannot read are named, overlapping directories refused
        Case("data-prep-input-is-out-dir", _fineweb("{w}/dv_corpus", "{w}/dv_corpus"), ["--input {w}/dv_corpus", "--out-dir", "the same directory"]),
        Case("data-prep-out-dir-inside-input", _fineweb("{w}/dv_corpus", "{w}/dv_corpus/shards"), ["--out-dir is inside --input"]),
        Case("data-prep-input-inside-out-dir", _fineweb("{w}/dv_corpus", "{w}"), ["--input is inside --out-dir"]),
        Case("data-prep-input-file-inside-out-dir", _fineweb("{w}/dv_corpus/a.jsonl", "{w}/dv_corpus"), ["a.jsonl is inside --out-dir"]),
        Case("data-prep-input-unreadable-type", _fineweb("{w}/dv_mixed_in", "{w}/do1"), ["notes.md", "not a format this reads"]),
        Case("data-prep-input-subdirectory", _fineweb("{w}/dv_subdir_in", "{w}/do2"), ["more (a directory", "glob"]),
        Case("data-prep-input-dangling-link", _fineweb("{w}/dv_link_in", "{w}/do3"), ["b.jsonl", "{w}/unmounted/b.jsonl", "does not exist"]),
        Case("data-prep-zst-without-zstandard", _fineweb("{w}/dv_zst_in", "{w}/do4", cli=FINEWEB_NO_ZSTD), ["a.jsonl.zst", "pip install zstandard"]),
        Case("data-prep-damaged-gz", _fineweb("{w}/dv_gz_in", "{w}/do5", "--shard-size", "1000000"), ["a.jsonl.gz cannot be read", "EOFError"]),
        Case("data-prep-val-docs-beyond-the-corpus", _fineweb("{w}/dv_corpus", "{w}/do6", "--val-docs", "50"), ["--val-docs 50", "3 documents"]),
    ]  # fmt: skip
