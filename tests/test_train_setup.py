"""The pieces the training loop is built from, shared with `bench train` and the sample CLI."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gpt2repro import dist
from gpt2repro.config import Config, ModelConfig, TrainConfig, grad_accum_steps, load_config
from gpt2repro.errors import UserError
from gpt2repro.model import GPT
from gpt2repro.sample import complete, decode_continuation, sample
from gpt2repro.tokenizer import get_encoding
from gpt2repro.train import build_model


def test_grad_accum_steps_is_exact_or_refused() -> None:
    t = TrainConfig(micro_batch_size=4, seq_len=32, total_batch_tokens=1024)
    assert grad_accum_steps(t, world_size=1) == 8 and grad_accum_steps(t, world_size=2) == 4
    with pytest.raises(UserError, match=r"train.total_batch_tokens=1024 is not a multiple of .* 3"):
        grad_accum_steps(t, world_size=3)


def test_bench_train_refuses_a_batch_training_would_refuse() -> None:
    """It used to floor the accumulation silently and measure another batch than training's."""
    cmd = [
        sys.executable, "-m", "gpt2repro.bench", "train",
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=32",
        "--model.vocab_size=64", "--train.seq_len=32", "--train.micro_batch_size=4",
        "--train.total_batch_tokens=300", "--steps=1", "--warmup=0",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert "train.total_batch_tokens=300 is not a multiple of" in p.stderr


def test_build_model_seeds_loads_and_wraps() -> None:
    cfg, _ = load_config(
        ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.vocab_size=64"]
    )
    a, b = build_model(cfg, dist.DistInfo()), build_model(cfg, dist.DistInfo())
    for (name, pa), pb in zip(
        a.raw_model.named_parameters(), b.raw_model.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name  # same seed, same weights: every rank starts alike
    assert a.model is a.raw_model and not a.compiled  # one CPU process: no DDP, eager
    assert a.autocast_dtype is None and a.strategy == "ddp"
    assert a.n_params == a.raw_model.num_params(exclude_padding=False)
    assert [g["weight_decay"] for g in a.optimizer.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_a_resume_applies_the_optimizer_settings_it_allowed(tmp_path: Path, name: str) -> None:
    """Loading the optimizer's state brings back its saved groups; the settings a resume let
    change (checkpoint.allow_changes=optim.weight_decay, ...) must win over them, and the
    saved moments and momentum buffers still come back."""
    from gpt2repro import checkpoint

    small = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.vocab_size=64"]
    saved, _ = load_config([*small, "--model.arch=modern", f"--optim.name={name}"])
    first = build_model(saved, dist.DistInfo())
    x = torch.randint(0, 64, (2, 16))
    first.raw_model(x, x, loss_only=True)[1].backward()
    first.optimizer.step()
    checkpoint.save(tmp_path, 1, first.raw_model, first.optimizer, state={"step": 1},
                    loader_state={"position": 0}, keep_last=0)  # fmt: skip
    changed = ["--optim.weight_decay=0.3", "--optim.beta2=0.99", "--optim.eps=1e-6"]
    now, _ = load_config([*small, "--model.arch=modern", f"--optim.name={name}", *changed,
                          "--optim.muon_momentum=0.8"])  # fmt: skip
    resumed = build_model(now, dist.DistInfo(), load_from=checkpoint.find_latest(tmp_path))
    groups = resumed.optimizer.param_groups
    assert {g["weight_decay"] for g in groups if g["params"]} == {0.3}  # no 1-D parameters here
    adamw = [g for g in groups if "betas" in g]
    assert adamw and all(g["betas"] == (0.9, 0.99) and g["eps"] == 1e-6 for g in adamw)
    assert [g["momentum"] for g in groups if "betas" not in g] == ([0.8] if name == "muon" else [])
    a, b = first.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert a.keys() == b.keys()
    for key in a:
        for field, value in a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key][field])), (key, field)


def test_complete_is_the_prompt_and_the_cli_continuation() -> None:
    """`complete` (training samples, the demo) gives the prompt plus what `sample` generates."""
    torch.manual_seed(0)
    model = GPT(Config(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)).model)
    prompt = "Hello, I'm a language model,"
    text = complete(model, prompt, max_new_tokens=8, temperature=1.0, top_k=50, seed=3)
    enc = get_encoding()
    tokens = enc.encode_ordinary(prompt)
    generated = sample(model, tokens, 8, 1.0, 50, seed=3)[0]
    assert len(generated) == 8
    assert text == prompt + decode_continuation(enc, tokens, generated)
    assert text == enc.decode(tokens + generated)  # what the loop used to log
    full = " a" * 32  # 32 tokens: the whole context, nothing left to generate
    assert len(enc.encode_ordinary(full)) == 32
    assert complete(model, full, max_new_tokens=100, temperature=0, top_k=0) == full


# --------------------------------------------------------------------------- start-up checks


LAUNCH = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, LOCAL_RANK are not"),
        ({"RANK": "1", "LOCAL_RANK": "1"}, "but WORLD_SIZE is not"),
        (
            {"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"},
            "WORLD_SIZE='two' is not an integer",
        ),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2, LOCAL_RANK=0, WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "-1", "LOCAL_RANK": "0"}, "do not fit"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR and MASTER_PORT"),
    ],
)
def test_the_launcher_environment_is_checked_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    """A partial or garbled environment used to be a ValueError traceback, or torch waiting for
    a rendezvous that could never happen."""
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as e:
        dist.setup("cpu", "gloo", timeout_s=1)
    assert e.value.args[0].startswith("launcher environment: ") and needle in str(e.value)


def test_a_whole_launcher_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    assert dist.env_world() == (0, 0, 1, 1)
    env = {
        "WORLD_SIZE": "8",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert dist.env_world() == (5, 1, 8, 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dist.env_world() == (5, 1, 8, 4)


def test_a_peer_that_never_comes_is_one_line_after_init_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's default is to wait 30 minutes; dist.init_timeout_s bounds it, and the line says
    what was awaited. Not an input error: the restart loop may retry a late node."""
    import socket
    import time

    from gpt2repro.errors import RankFailed

    with socket.socket() as s:  # a free port: nobody else will join there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    t0 = time.perf_counter()
    with pytest.raises(RankFailed) as e:
        dist.setup("cpu", "gloo", timeout_s=1)
    assert time.perf_counter() - t0 < 30
    message = str(e.value)
    assert "\n" not in message and "rank 0 of 2" in message
    assert f"127.0.0.1:{port}" in message and "--dist.init_timeout_s" in message
    assert not dist.is_initialized()


def _cfg(*argv: str) -> Config:
    return load_config(list(argv))[0]


def test_paths_of_the_wrong_kind_are_refused_naming_what_is_there(tmp_path: Path) -> None:
    from gpt2repro import preflight

    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "gone").symlink_to(tmp_path / "not_mounted")
    cases = [
        ([f"--data.dir={afile}"], f"--data.dir {afile} is a file, not a directory"),
        ([f"--run.dir={afile}"], f"--run.dir {afile} is a file, not a directory"),
        (
            [f"--data.dir={tmp_path / 'gone'}"],
            f"is a link that points to {tmp_path / 'not_mounted'}, which does not exist",
        ),
        (
            ["--eval.hellaswag_every=5", f"--eval.hellaswag_file={tmp_path / 'adir'}"],
            "eval.hellaswag_file=",
        ),
    ]
    for argv, needle in cases:
        with pytest.raises(UserError, match=re.escape(needle)):
            preflight.check_paths(_cfg(f"--run.dir={tmp_path / 'run'}", *argv))
    preflight.check_paths(_cfg(f"--run.dir={tmp_path / 'new'}", f"--data.dir={tmp_path}"))


def test_a_sample_prompt_longer_than_the_context_is_refused_before_the_first_step(
    tmp_path: Path,
) -> None:
    """It used to pass start-up and crash at the first sample step (a ValueError traceback)."""
    from gpt2repro import train

    tiny = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=8"]
    prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    argv = [*tiny, "--train.seq_len=8", "--log.sample_every=10", f"--log.sample_prompt={prompt}"]
    run_dir = tmp_path / "run"
    cfg = _cfg(*argv, f"--run.dir={run_dir}", f"--data.dir={tmp_path / 'nodata'}")
    with pytest.raises(UserError, match=r"log.sample_prompt is \d+ tokens but model.block_size"):
        train.train(
            cfg, dist.DistInfo(), contextlib.ExitStack()
        )  # before the data check and any file
    assert not run_dir.exists()
    from gpt2repro import preflight

    preflight.check_sample_prompt(_cfg(*argv, "--log.sample_every=0"))  # no samples: no check
    preflight.check_sample_prompt(_cfg(*argv, "--log.sample_prompt=Hello"))
    preflight.check_sample_prompt(_cfg(*argv, "--model.vocab_size=512"))  # no samples: a note


def test_warmup_beyond_the_run_is_a_note() -> None:
    from gpt2repro import preflight

    notes = preflight.warmup_notes(_cfg("--optim.warmup_steps=700", "--train.max_steps=70"))
    assert len(notes) == 1 and "optim.warmup_steps=700 is beyond train.max_steps=70" in notes[0]
    assert "peaks at 10% of optim.lr" in notes[0]
    assert preflight.warmup_notes(_cfg("--optim.warmup_steps=70", "--train.max_steps=70")) == []


def test_an_embedding_rate_no_parameter_takes_is_a_note() -> None:
    """The fast config with a tied head (an ablation): wte is the head, at optim.head_lr."""
    from gpt2repro import preflight

    fast = ["--config", str(REPO / "configs" / "shakespeare_fast.toml")]
    notes = preflight.learning_rate_notes(_cfg(*fast, "--model.untied_head=false"))
    assert notes == [
        "note: optim.embed_lr=0.3 applies to no parameter: the head is tied (model.untied_head "
        "off), so wte is the head and trains at optim.head_lr=0.002, and rotary positions have "
        "no wpe"
    ]
    both_off = ("--model.untied_head=false", "--model.rotary=false")  # embed_lr moves wpe
    assert preflight.learning_rate_notes(_cfg(*fast, *both_off)) == []
    assert preflight.learning_rate_notes(_cfg(*fast)) == []
    assert preflight.learning_rate_notes(_cfg()) == []  # GPT-2's: no embed_lr
    info = dist.DistInfo(device=torch.device("cpu"))
    assert preflight.check(_cfg(*fast, "--model.untied_head=false"), info) == notes
    wsd = ["--optim.schedule=wsd", "--optim.warmup_steps=0", "--train.max_steps=10"]
    (short,) = preflight.learning_rate_notes(_cfg(*wsd, "--optim.decay_frac=0.1"))
    assert "optim.decay_frac=0.1 of train.max_steps=10 leaves a warm-down too short" in short
    assert preflight.learning_rate_notes(_cfg(*wsd, "--optim.decay_frac=0.2")) == []


def test_a_model_that_cannot_fit_the_gpu_is_refused_before_allocating() -> None:
    """gpt2-xl's fp32 weights, gradients and AdamW state are 1.56e9 x 16 bytes = 23 GiB: over
    a 16 GiB GPU whatever the activations. The planner's numbers, with the memory passed in."""
    from gpt2repro import preflight
    from gpt2repro.plan import GIB

    xl = ["--model.n_layer=48", "--model.n_head=25", "--model.n_embd=1600"]
    info = dist.DistInfo(device=torch.device("cpu"))
    with pytest.raises(UserError, match=r"need 2\d\.\d GiB per GPU, more than cuda:0's 16.0 GiB"):
        preflight.check_memory(_cfg(*xl), 1, 16 * GIB, "cuda:0")
    with pytest.raises(UserError, match=r"--dist.strategy=fsdp"):
        preflight.check(_cfg(*xl), info, device_bytes=16 * GIB)
    with pytest.raises(UserError, match=r"more GPUs or a smaller model"):
        preflight.check_memory(_cfg(*xl, "--dist.strategy=fsdp"), 2, 8 * GIB, "cuda:0")
    # fits with room: no note; fits only without activations: a note, not a refusal
    assert preflight.check_memory(_cfg(), 8, 80 * GIB, "cuda:0") == []
    notes = preflight.check_memory(_cfg(), 8, 4 * GIB, "cuda:0")
    assert len(notes) == 1 and "--train.micro_batch_size=32" in notes[0]
    assert preflight.check(_cfg(), info) == preflight.warmup_notes(_cfg())  # CPU: no memory check
