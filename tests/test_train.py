"""Training loop: loss falls, DDP == 1 process, resume == uninterrupted, preemption, guards,
FSDP == DDP, checkpoint pruning, metrics schema, bad input. Tiny models on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SHAPE
from conftest import run_train as run

from gpt2repro import checkpoint
from gpt2repro.data import write_shard
from gpt2repro.runs import read_metrics, train_losses

TINY = [
    *TINY_SHAPE,
    "--optim.warmup_steps=3",
    "--optim.lr=1e-2",
    "--eval.every=0",
    "--log.every=1",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable token stream (rotations of one random pattern) in llm.c shards."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 500, size=64)
    toks = np.concatenate([np.roll(base, i % 7) for i in range(3000)]).astype(np.uint16)
    write_shard(d / "t_val_000000.bin", toks[:20000])
    write_shard(d / "t_train_000001.bin", toks[20000:120000])
    write_shard(d / "t_train_000002.bin", toks[120000:])
    return d


def args_for(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"--data.dir={corpus}", f"--run.dir={run_dir}", *extra]


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = checkpoint.resolve(run_dir)
    return torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)


def assert_params_close(
    pa: dict[str, torch.Tensor], pb: dict[str, torch.Tensor], rel: float
) -> None:
    """Each tensor within `rel` relative distance (norm of the difference over the norm)."""
    assert pa.keys() == pb.keys()
    for name in pa:
        dist_ = (pa[name] - pb[name]).norm() / pa[name].norm().clamp_min(1e-12)
        assert dist_ <= rel, (name, float(dist_))


def test_loss_falls_and_metrics_schema(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    p = run(
        args_for(
            corpus,
            rd,
            "--train.max_steps=30",
            "--eval.every=10",
            "--eval.val_tokens=2048",
            "--checkpoint.every=10",
        )
    )
    assert (
        "batch: 256 tokens/step = 4 seqs x 32 tokens x 1 processes x 2 accumulation steps"
        in p.stdout
    )
    recs = read_metrics(rd / "metrics.jsonl")
    train = [r for r in recs if "loss" in r and "event" not in r]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 31))
    for r in train:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "tokens", "tok_per_s", "mfu"}
        assert r["mfu"] is None  # CPU: never a guessed number
        assert r["tokens"] == r["step"] * 256
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 2.0
    assert recs[0]["event"] == "start" and recs[0]["world_size"] == 1 and "git_sha" in recs[0]
    assert recs[-1]["event"] == "done"
    assert (rd / "DONE").exists()
    # keep_last=3 default: steps 10, 20, 30 kept; latest points at 30
    assert (rd / "ckpt" / "latest").read_text().strip() == "step_00000030"
    # a second invocation of a finished run does nothing
    p2 = run(
        args_for(corpus, rd, "--train.max_steps=30", "--eval.every=10", "--eval.val_tokens=2048")
    )
    assert "already complete" in p2.stdout


def assert_two_processes_equal_one(
    corpus: Path, tmp_path: Path, steps: int, param_tol: float, *extra: str
) -> None:
    """1 process x 2 accumulation steps against 2 processes x 1: the same losses at every step
    (relative 1e-5) and the same final parameters (`param_tol`)."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [f"--train.max_steps={steps}", "--checkpoint.every=0", *extra]
    p1 = run(args_for(corpus, one, *common))  # 1 process x 2 accumulation steps
    p2 = run(args_for(corpus, two, *common), nproc=2)  # 2 processes x 1 accumulation step
    assert "1 processes x 2 accumulation" in p1.stdout
    assert "2 processes x 1 accumulation" in p2.stdout
    a, b = train_losses(one / "metrics.jsonl"), train_losses(two / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]), (k, a[k], b[k])
    assert_params_close(final_params(one), final_params(two), param_tol)


@pytest.mark.dist
def test_ddp_two_processes_equal_one_with_double_accumulation(corpus: Path, tmp_path: Path) -> None:
    assert_two_processes_equal_one(corpus, tmp_path, 8, 1e-5)


# The fast recipe's optimizer on the modern architecture (issue 20): torch.optim.Muon + AdamW.
MUON = ["--model.arch=modern", "--optim.name=muon", "--optim.muon_lr=0.02", "--optim.lr=3e-3"]


@pytest.mark.dist
def test_muon_ddp_two_processes_equal_one_with_double_accumulation(
    corpus: Path, tmp_path: Path
) -> None:
    """Every rank gets the same Muon update: DDP averages the gradients before the step, and
    Muon's orthogonalisation runs on the full (replicated) matrix on each rank."""
    assert_two_processes_equal_one(corpus, tmp_path, 6, 1e-4, *MUON)


def test_muon_sigkill_resume_is_bit_identical(corpus: Path, tmp_path: Path) -> None:
    """Muon's momentum buffers and AdamW's moments come back from the checkpoint exactly."""
    common = ["--train.max_steps=9", "--checkpoint.every=4", *MUON]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run(args_for(corpus, ref, *common))
    p = run(args_for(corpus, killed, *common), env={"GPT2REPRO_FAULT": "sigkill:6"}, check=False)
    assert p.returncode != 0 and checkpoint.find_latest(killed).name == "step_00000004"
    p = run(args_for(corpus, killed, *common))
    assert "resumed from" in p.stdout and "at step 4" in p.stdout
    a, b = train_losses(ref / "metrics.jsonl"), train_losses(killed / "metrics.jsonl")
    assert a == b  # bit-identical floats, every step
    pa, pb = final_params(ref), final_params(killed)
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


@pytest.mark.parametrize(
    "nproc,strategy",
    [
        (1, "ddp"),
        pytest.param(2, "ddp", marks=pytest.mark.dist),
        pytest.param(2, "fsdp", marks=[pytest.mark.dist, pytest.mark.slow]),  # ~27 s
    ],
)
def test_sigkill_resume_is_bit_identical(
    corpus: Path, tmp_path: Path, nproc: int, strategy: str
) -> None:
    common = ["--train.max_steps=16", "--checkpoint.every=5", f"--dist.strategy={strategy}"]
    ref = tmp_path / "ref"
    run(args_for(corpus, ref, *common), nproc=nproc)
    killed = tmp_path / "killed"
    p = run(
        args_for(corpus, killed, *common),
        nproc=nproc,
        env={"GPT2REPRO_FAULT": "sigkill:7"},
        check=False,
    )
    assert p.returncode != 0
    assert not (killed / "DONE").exists()
    assert checkpoint.find_latest(killed).name == "step_00000005"
    p = run(args_for(corpus, killed, *common), nproc=nproc)
    assert "resumed from" in p.stdout and "at step 5" in p.stdout
    a, b = train_losses(ref / "metrics.jsonl"), train_losses(killed / "metrics.jsonl")
    assert a == b  # bit-identical floats, every step
    pa, pb = final_params(ref), final_params(killed)
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


def test_sigterm_checkpoints_and_exits(corpus: Path, tmp_path: Path) -> None:
    common = ["--train.max_steps=12", "--checkpoint.every=100"]
    rd = tmp_path / "run"
    p = run(args_for(corpus, rd, *common), env={"GPT2REPRO_FAULT": "sigterm:4"}, check=False)
    assert p.returncode == 75, p.stderr
    assert "preempted by SIGTERM" in p.stdout
    stopped = checkpoint.find_latest(rd)
    assert stopped is not None and checkpoint.read_state(stopped)["step"] in (4, 5)
    run(args_for(corpus, rd, *common))
    ref = tmp_path / "ref"
    run(args_for(corpus, ref, *common))
    assert train_losses(rd / "metrics.jsonl") == train_losses(ref / "metrics.jsonl")


def test_nonfinite_guard_skips_or_stops(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "skip"
    run(args_for(corpus, rd, "--train.max_steps=8"), env={"GPT2REPRO_FAULT": "nan:3"})
    train = {r["step"]: r for r in read_metrics(rd / "metrics.jsonl") if "loss" in r}
    assert train[2]["skipped"] == 0 and train[3]["skipped"] == 1 and train[8]["skipped"] == 1
    assert all(np.isfinite(train[s]["loss"]) for s in (4, 5, 6, 7, 8))
    stop = tmp_path / "stop"
    p = run(
        args_for(corpus, stop, "--train.max_steps=8", "--guard.nonfinite=stop"),
        env={"GPT2REPRO_FAULT": "nan:3"},
        check=False,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: step 3: non-finite loss")


def test_spike_guard_skips_a_spike_and_counts_it(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "spike"
    p = run(
        args_for(
            corpus, rd, "--train.max_steps=16", "--guard.spike_zscore=4", "--guard.nonfinite=stop"
        ),
        env={"GPT2REPRO_FAULT": "spike:14"},
    )
    assert "step 14: loss spike; update skipped" in p.stdout  # a spike is not a non-finite stop
    train = {r["step"]: r for r in read_metrics(rd / "metrics.jsonl") if "loss" in r}
    assert train[13]["skipped"] == 0 and train[14]["skipped"] == 1 and train[16]["skipped"] == 1
    assert checkpoint.read_state(checkpoint.resolve(rd))["skipped"] == 1


def test_resume_from_an_older_checkpoint_moves_newer_ones_aside(
    corpus: Path, tmp_path: Path
) -> None:
    rd = tmp_path / "run"
    run(
        args_for(
            corpus, rd, "--train.max_steps=8", "--checkpoint.every=2", "--checkpoint.keep_last=3"
        )
    )
    assert sorted(p.name for p in (rd / "ckpt").glob("step_*")) == [
        "step_00000004",
        "step_00000006",
        "step_00000008",
    ]
    older = rd / "ckpt" / "step_00000004"
    p = run(
        args_for(
            corpus,
            rd,
            "--train.max_steps=10",
            "--checkpoint.every=2",
            "--checkpoint.keep_last=3",
            f"--checkpoint.resume={older}",
        )
    )
    assert "moved step_00000006 aside" in p.stdout and "at step 4" in p.stdout
    # the new branch's checkpoints are the ones kept; the old branch is kept aside, not deleted
    assert sorted(p.name for p in (rd / "ckpt").glob("step_*")) == [
        "step_00000006",
        "step_00000008",
        "step_00000010",
    ]
    assert len(list((rd / "ckpt").glob(".abandoned-step_0000000[68]-*"))) == 2
    assert checkpoint.find_latest(rd).name == "step_00000010"


@pytest.mark.dist
def test_fsdp_matches_ddp(corpus: Path, tmp_path: Path) -> None:
    common = ["--train.max_steps=4", "--checkpoint.every=0"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run(args_for(corpus, ddp, *common, "--dist.strategy=ddp"), nproc=2)
    run(args_for(corpus, fsdp, *common, "--dist.strategy=fsdp"), nproc=2)
    a, b = train_losses(ddp / "metrics.jsonl"), train_losses(fsdp / "metrics.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]), (k, a[k], b[k])
    # the FSDP checkpoint is a full state dict: loadable by a single process
    # Reduce-scatter sums in another order than all-reduce. The key part of c_attn's bias gets
    # a gradient that is zero up to rounding (softmax ignores a constant shift), so Adam turns
    # that rounding into full-size steps there; compare the model as a whole.
    pa, pb = final_params(ddp), final_params(fsdp)
    names = [n for n in pa if n != "lm_head.weight"]  # tied to wte: count once
    diff = torch.sqrt(sum(((pa[n] - pb[n]) ** 2).sum() for n in names))
    norm = torch.sqrt(sum((pa[n] ** 2).sum() for n in names))
    assert diff / norm <= 1e-5, float(diff / norm)


@pytest.mark.dist
def test_fsdp_checkpoint_resumes_on_another_world_size(corpus: Path, tmp_path: Path) -> None:
    """2 FSDP ranks write step 3, are killed; 1 process resumes and follows the 2-rank run."""
    common = ["--train.max_steps=6", "--checkpoint.every=3", "--dist.strategy=fsdp"]
    ref, moved = tmp_path / "ref", tmp_path / "moved"
    run(args_for(corpus, ref, *common), nproc=2)
    p = run(
        args_for(corpus, moved, *common), nproc=2, env={"GPT2REPRO_FAULT": "sigkill:4"}, check=False
    )
    assert p.returncode != 0
    p = run(args_for(corpus, moved, *common))  # one process, twice the accumulation
    assert "resuming with 1" in p.stdout and "at step 3" in p.stdout
    a, b = train_losses(ref / "metrics.jsonl"), train_losses(moved / "metrics.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]), (k, a[k], b[k])


def test_keep_last_prunes_old_checkpoints(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    run(
        args_for(
            corpus, rd, "--train.max_steps=10", "--checkpoint.every=2", "--checkpoint.keep_last=2"
        )
    )
    kept = sorted(p.name for p in (rd / "ckpt").iterdir() if p.is_dir())
    assert kept == ["step_00000008", "step_00000010"]
    state = checkpoint.read_state(rd / "ckpt" / "step_00000010")
    assert (
        state["step"] == 10 and state["tokens"] == 2560 and state["config"]["model"]["n_layer"] == 2
    )
    assert len(state["ranks"]) == 1 and "rng" in state["ranks"][0] and "loader" in state["ranks"][0]


def test_corrupt_newest_checkpoint_falls_back(corpus: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    run(
        args_for(corpus, rd, "--train.max_steps=6", "--checkpoint.every=3"),
        env={"GPT2REPRO_FAULT": "sigkill:6"},
        check=False,
    )
    newest = rd / "ckpt" / "step_00000006"
    assert newest.exists()
    with open(newest / "model.pt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"garbage")
    found = checkpoint.find_latest(rd)
    assert found is not None and found.name == "step_00000003"


@pytest.mark.dist
@pytest.mark.slow  # ~50 s on 2 CPU cores: two torch.compile runs
def test_compile_ddp_matches_eager(corpus: Path, tmp_path: Path) -> None:
    """torch.compile(DDP(model)) on 2 gloo ranks: the same losses as eager, to rounding."""
    common = ["--train.max_steps=3", "--checkpoint.every=0"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(args_for(corpus, eager, *common), nproc=2)
    run(args_for(corpus, compiled, *common, "--train.compile=true"), nproc=2)
    a, b = train_losses(eager / "metrics.jsonl"), train_losses(compiled / "metrics.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-4 * abs(a[k]), (k, a[k], b[k])


def _error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr
    return lines[-1]


def test_bad_input_one_clear_line(corpus: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error_line(run(args_for(empty, tmp_path / "r1", "--train.max_steps=2"), check=False))
    assert str(empty) in line and "data_prep" in line
    line = _error_line(
        run(args_for(corpus, tmp_path / "r2", "--train.total_batch_tokens=300"), check=False)
    )
    assert "train.total_batch_tokens=300" in line and "multiple" in line
    line = _error_line(run(args_for(corpus, tmp_path / "r3", "--train.seq_len=128"), check=False))
    assert "train.seq_len" in line and "block_size" in line
    afile = tmp_path / "a-file"
    afile.write_text("x")
    line = _error_line(run(args_for(corpus, afile / "run"), check=False))
    assert "not writable" in line and "--run.dir" in line
    # a checkpoint from another model shape
    rd = tmp_path / "r4"
    run(args_for(corpus, rd, "--train.max_steps=2"))
    line = _error_line(
        run(args_for(corpus, rd, "--train.max_steps=4", "--model.n_embd=64"), check=False)
    )
    assert "another model shape" in line and "n_embd=32 (config: 64)" in line
    assert "--checkpoint.resume=restart" in line  # the way to start over, named
    assert checkpoint.find_latest(rd).name == "step_00000002"  # nothing overwritten
    # resume=never on a directory with checkpoints refuses instead of overwriting them
    line = _error_line(
        run(args_for(corpus, rd, "--train.max_steps=2", "--checkpoint.resume=never"), check=False)
    )
    assert "resume=never" in line and "new --run.dir" in line
    line = _error_line(run([*TINY, "--optim.lrr=1"], check=False))
    assert "optim.lr" in line


def test_help_lists_every_field() -> None:
    p = run(["--help"])
    assert "--optim.lr" in p.stdout and "--checkpoint.resume" in p.stdout and "default" in p.stdout


def test_resolved_config_in_checkpoint_round_trips(corpus: Path, tmp_path: Path) -> None:
    from gpt2repro.config import from_dict, load_config

    rd = tmp_path / "run"
    args = args_for(corpus, rd, "--train.max_steps=2")
    run(args)
    state = json.loads((checkpoint.resolve(rd) / "state.json").read_text())
    cfg, _ = load_config(args)
    assert from_dict(state["config"]) == cfg


@pytest.fixture(scope="module")
def gpt2_vocab_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short run of a GPT-2-vocab model with val loss, HellaSwag and text samples in the loop;
    the tests below check its outputs (one training subprocess for all of them)."""
    from fixtures.hellaswag import write_hellaswag

    from gpt2repro.tokenizer import get_encoding

    tmp_path = tmp_path_factory.mktemp("gpt2_vocab_run")
    enc = get_encoding()
    docs = ["To be, or not to be, that is the question. " * 40, "All the world's a stage. " * 60]
    toks = np.concatenate([[enc.eot_token, *enc.encode_ordinary(d)] for d in docs * 5]).astype(
        np.uint16
    )
    corpus = tmp_path / "data"
    corpus.mkdir()
    write_shard(corpus / "x_val_000000.bin", toks[:2000])
    write_shard(corpus / "x_train_000001.bin", toks[2000:])
    hs = write_hellaswag(tmp_path / "hellaswag_val.jsonl", n=8)
    rd = tmp_path / "run"
    args = [
        *TINY,
        "--model.vocab_size=50257",
        "--model.block_size=128",
        f"--data.dir={corpus}",
        f"--run.dir={rd}",
        "--train.max_steps=4",
        "--eval.every=2",
        "--eval.val_tokens=512",
        "--eval.hellaswag_every=4",
        f"--eval.hellaswag_file={hs}",
        "--log.sample_every=4",
        "--log.sample_tokens=8",
        "--checkpoint.every=0",
    ]
    p = run(args)
    recs = read_metrics(rd / "metrics.jsonl")
    return {
        "args": args,
        "p": p,
        "recs": recs,
        "rd": rd,
        "corpus": corpus,
        "hs": hs,
        "toks": toks,
        "hsw": [r for r in recs if "hellaswag_acc" in r],
    }


def test_in_loop_val_loss_at_step_0_every_and_last(gpt2_vocab_run: dict) -> None:
    recs, p = gpt2_vocab_run["recs"], gpt2_vocab_run["p"]
    vals = [r["step"] for r in recs if "val_loss" in r]
    assert vals == [0, 2, 4]
    assert "eval step      4 | val_loss" in p.stdout


def test_in_loop_hellaswag_at_step_0_and_its_interval(gpt2_vocab_run: dict) -> None:
    hsw = gpt2_vocab_run["hsw"]
    assert [r["step"] for r in hsw] == [0, 4]
    assert all(0.0 <= r["hellaswag_acc_norm"] <= 1.0 for r in hsw)


def test_in_loop_text_sample_starts_with_the_prompt(gpt2_vocab_run: dict) -> None:
    samples = [r for r in gpt2_vocab_run["recs"] if "sample" in r]
    assert len(samples) == 1 and samples[0]["sample"].startswith("Hello, I'm a language model,")


def test_evaluate_cli_reproduces_the_in_loop_numbers(gpt2_vocab_run: dict, tmp_path: Path) -> None:
    """The run's checkpoint through `python -m gpt2repro.evaluate`: the same val loss and
    HellaSwag acc_norm as the last in-loop evaluation."""
    rd, corpus, hs = gpt2_vocab_run["rd"], gpt2_vocab_run["corpus"], gpt2_vocab_run["hs"]
    recs, hsw = gpt2_vocab_run["recs"], gpt2_vocab_run["hsw"]
    out = tmp_path / "eval.json"
    cmd = [
        sys.executable, "-m", "gpt2repro.evaluate", "--checkpoint", str(rd), "--val-data",
        str(corpus), "--val-tokens", "512", "--seq-len", "32", "--hellaswag", str(hs),
        "--json", str(out), "--device", "cpu",
    ]  # fmt: skip
    e = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert e.returncode == 0, e.stderr[-2000:]
    res = json.loads(out.read_text())
    assert abs(res["val_loss"] - [r for r in recs if "val_loss" in r][-1]["val_loss"]) < 1e-5
    assert res["hellaswag"]["acc_norm"] == hsw[-1]["hellaswag_acc_norm"]


def test_export_cli_gives_transformers_equal_logits(gpt2_vocab_run: dict, tmp_path: Path) -> None:
    """The run's checkpoint through `python -m gpt2repro.export`: a directory transformers
    loads, with the same logits as our model."""
    rd, toks = gpt2_vocab_run["rd"], gpt2_vocab_run["toks"]
    hf_dir = tmp_path / "hf"
    x = subprocess.run(
        [sys.executable, "-m", "gpt2repro.export", "--checkpoint", str(rd), "--out", str(hf_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert x.returncode == 0, x.stderr[-2000:]
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours = checkpoint.load_model(rd)
    idx = torch.from_numpy(toks[:40].astype(np.int64))[None]
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-4, atol=1e-4)


def test_missing_hellaswag_file_is_refused_before_training(gpt2_vocab_run: dict) -> None:
    args = gpt2_vocab_run["args"]
    line = _error_line(run([*args, "--eval.hellaswag_file=/nonexistent.jsonl"], check=False))
    assert "eval.hellaswag_file" in line and "data_prep/hellaswag.py" in line
