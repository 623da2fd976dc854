"""Security stays as it is: weights-only loads, no remote code, no unsafe deserialization of user
files, no secrets written into run directories, and a malicious checkpoint refused unrun.

The source checks read the code (AST), so a new `torch.load(path)` without weights_only=True or a
`pickle.load` anywhere in the package fails here, not in a user's hands.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
import torch
from conftest import REPO
from test_train import args_for, run

from gpt2repro import checkpoint
from gpt2repro.atomic import sha256_file
from gpt2repro.config import load_config, to_dict
from gpt2repro.data import write_shard
from gpt2repro.model import GPT
from gpt2repro.optim import build_optimizer

corpus = test_train.corpus  # the module-scoped shard fixture
SOURCES = sorted(
    [REPO / "train.py", *REPO.glob("gpt2repro/**/*.py"), *REPO.glob("data_prep/*.py")]
    + [*REPO.glob("bench/**/*.py"), *REPO.glob("launch/**/*.py")]
)


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name of the callee, call) for every call in a file: `torch.load`, `eval`, ..."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # model.to(d).eval()
            out.append((".".join(reversed(parts)), node))
    return out


def _keyword(call: ast.Call, name: str) -> object:
    """The constant value of keyword `name` in `call`; 'absent' or 'not a constant' otherwise."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
    return "absent"


def test_the_scan_sees_the_package() -> None:
    names = {p.name for p in SOURCES}
    assert {"train.py", "checkpoint.py", "hf.py", "fineweb.py"} <= names
    loads = [c for p in SOURCES for name, c in _calls(p) if name == "torch.load"]
    assert len(loads) >= 2  # checkpoint.py (_load_tensors) and hf.py (pytorch_model.bin)


def test_every_torch_load_is_weights_only() -> None:
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # `from torch import load` would hide a call from the scan
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert all(a.name != "load" for a in node.names), path
        for name, call in _calls(path):
            if name.endswith("torch.load") and _keyword(call, "weights_only") is not True:
                bad.append(f"{path.relative_to(REPO)}:{call.lineno}")
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is True:
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} (allow_pickle=True)")
    assert not bad, f"loads that may unpickle arbitrary objects: {bad}"


UNSAFE = {"eval", "exec", "pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads"}
UNSAFE |= {"yaml.load", "yaml.unsafe_load", "dill.load", "dill.loads", "shelve.open"}


def test_no_remote_code_and_no_unsafe_deserialization() -> None:
    bad = []
    for path in SOURCES:
        for name, call in _calls(path):
            if name in UNSAFE:
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} {name}")
            if _keyword(call, "trust_remote_code") not in ("absent", False):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} trust_remote_code")
    # and in any text a user might copy from (docs, configs, scripts)
    for path in [*REPO.glob("docs/**/*.md"), REPO / "README.md", *REPO.glob("configs/*")]:
        if path.is_file() and "trust_remote_code=True" in path.read_text():
            bad.append(f"{path.relative_to(REPO)}: trust_remote_code=True")
    assert not bad, bad


@pytest.mark.slow
def test_no_secret_reaches_the_run_directory(corpus: Path, tmp_path: Path) -> None:
    """A run with secrets in its environment (wandb offline, so wandb writes its files too):
    no file of the run directory holds any of them."""
    pytest.importorskip("wandb")
    secrets = {
        "WANDB_API_KEY": "secret-xyz-wandb-0123456789abcdef0123456789",
        "HF_TOKEN": "secret-xyz-hf-token",
        "HUGGING_FACE_HUB_TOKEN": "secret-xyz-hf-hub",
        "AWS_SECRET_ACCESS_KEY": "secret-xyz-aws",
    }
    env = {
        **secrets,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    rd = tmp_path / "run"
    p = run(
        args_for(corpus, rd, "--train.max_steps=2", "--log.wandb_mode=offline"),
        env=env,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    files = [f for f in rd.rglob("*") if f.is_file()]
    assert any(f.name == "model.pt" for f in files) and any("wandb" in str(f) for f in files)
    leaks = [
        f"{f.relative_to(rd)} holds {name}"
        for f in files
        for name, value in secrets.items()
        if value.encode() in f.read_bytes() or b"secret-xyz" in f.read_bytes()
    ]
    assert not leaks, leaks
    assert "secret-xyz" not in p.stdout + p.stderr


class Payload:
    """Unpickling this runs os.mkdir(marker): what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_holding_a_malicious_pickle_is_refused_unrun(tmp_path: Path) -> None:
    """model.pt replaced by a pickle whose loading would run code, with its sha256 updated as an
    attacker would: sample, export and a training resume each refuse it in one line, and the
    payload never runs."""
    data = tmp_path / "data"
    data.mkdir()
    toks = torch.arange(600, dtype=torch.int64).remainder(64).numpy().astype("uint16")
    write_shard(data / "t_val_000000.bin", toks[:200])
    write_shard(data / "t_train_000001.bin", toks[200:])
    rd = tmp_path / "run"
    train_args = [
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16", "--model.block_size=16",
        "--model.vocab_size=64", "--train.seq_len=16", "--train.micro_batch_size=2",
        "--train.total_batch_tokens=32", "--train.max_steps=4", "--eval.every=0",
        f"--run.dir={rd}", f"--data.dir={data}",
    ]  # fmt: skip
    cfg, _ = load_config(train_args)
    model = GPT(cfg.model)
    step = checkpoint.save(  # a run that stopped at step 2 of 4, as training leaves it
        rd,
        2,
        model,
        build_optimizer(model, cfg.optim, "cpu"),
        state={"step": 2, "tokens": 64, "config": to_dict(cfg)},
        loader_state={"position": 0},
        keep_last=0,
    )
    marker = tmp_path / "payload-ran"
    torch.save({"transformer.wte.weight": Payload(str(marker))}, step / "model.pt")
    state = json.loads((step / "state.json").read_text())
    state["sha256"]["model.pt"] = sha256_file(step / "model.pt")
    (step / "state.json").write_text(json.dumps(state))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPT2REPRO_DEBUG", None)
    commands = {
        "sample": [sys.executable, "-m", "gpt2repro.sample", "--checkpoint", str(step)],
        "export": [
            sys.executable, "-m", "gpt2repro.export", "--checkpoint", str(rd),
            "--out", str(tmp_path / "hf"),
        ],
        "resume": [sys.executable, str(REPO / "train.py"), *train_args],
    }  # fmt: skip
    for what, cmd in commands.items():
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and "Traceback" not in p.stderr, (what, p.stderr[-2000:])
        assert len(lines) == 1 and "model.pt" in lines[0], (what, p.stderr[-2000:])
        assert "objects other than tensors" in lines[0] and "weights_only" not in lines[0], what
        assert not marker.exists(), f"{what}: the payload ran"
    assert not (tmp_path / "hf").exists()
