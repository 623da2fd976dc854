"""The `gpt2repro` command: each verb is the module it names (same output, same exit status, same
bytes written), `--help` never imports torch, unknown names are one line, and the console script
that pip installs runs. Data prep's three spellings (data_prep/x.py, `gpt2repro prep x`,
`python -m gpt2repro.prep.x`) write identical shards."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import test_train
from conftest import REPO
from test_train import args_for

from gpt2repro import cli
from gpt2repro.errors import run_cli
from gpt2repro.prep import fineweb
from gpt2repro.runs import train_losses

corpus = test_train.corpus  # the module-scoped shard fixture
PY = sys.executable
MODULE_VERBS = [v for v in cli.VERBS if v not in ("train", "prep")]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, **kw)


def test_help_lists_every_verb_in_one_line_without_importing_torch() -> None:
    code = "import sys; from gpt2repro.cli import main; main(['--help']); print('torch' in sys.modules)"
    p = _run([PY, "-c", code])
    assert p.returncode == 0, p.stderr
    *text, torch_loaded = p.stdout.strip().splitlines()
    assert torch_loaded == "False"
    for verb, what in cli.VERBS.items():
        assert sum(line.split()[:1] == [verb] for line in text) == 1, verb
        assert any(line.split()[:1] == [verb] and line.endswith(what) for line in text)
    # the same through `python -m gpt2repro.cli` and `python -m gpt2repro`
    for module in ("gpt2repro.cli", "gpt2repro"):
        q = _run([PY, "-m", module, "--help"])
        assert q.returncode == 0 and q.stdout.strip().splitlines() == text, q.stderr
    assert _run([PY, "-m", "gpt2repro"]).returncode == 2  # no verb: the help, status 2


def test_train_and_prep_help_do_not_import_torch() -> None:
    code = (
        "import sys; from gpt2repro.cli import main; main(['train', '--help']); "
        "main(['prep', '--help']); print('torch' in sys.modules)"
    )
    p = _run([PY, "-c", code])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False"
    assert "usage: gpt2repro train [--config FILE.toml]" in p.stdout
    assert "--optim.lr" in p.stdout  # every key, as `train.py --help` lists them
    for source, what in cli.PREP_SOURCES.items():
        assert any(
            line.split()[:1] == [source] and line.endswith(what) for line in p.stdout.split("\n")
        )


@pytest.mark.parametrize(
    ("argv", "names"),
    [(["frob"], cli.VERBS), (["prep", "frob"], cli.PREP_SOURCES)],
)
def test_unknown_name_is_one_line_naming_the_valid_ones(
    argv: list[str], names: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "'frob'" in err and all(name in err for name in names)
    p = _run([PY, "-m", "gpt2repro.cli", *argv])  # and as a command
    assert p.returncode == 2 and p.stderr == err


def _status(fn: Callable[[], int]) -> int | str | None:
    """fn()'s exit status, also when argparse exits (--help)."""
    try:
        return fn()
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("verb", MODULE_VERBS)
def test_each_verb_is_its_module(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`gpt2repro VERB --help` does what `python -m gpt2repro.VERB --help` does (the module's
    main under run_cli): the same output and exit status."""
    module = importlib.import_module(f"gpt2repro.{verb}")
    direct = _status(lambda: run_cli(module.main, ["--help"]))
    expected = capsys.readouterr()
    assert _status(lambda: cli.main([verb, "--help"])) == direct
    assert capsys.readouterr() == expected and (expected.out or expected.err)


def test_a_verb_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Errors go through run_cli as for `python -m gpt2repro.VERB`: one line, exit status 2."""
    assert cli.main(["sample", "--checkpoint", "nowhere", "--temperature", "nan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "--temperature" in err


def _docs(path: Path) -> None:
    rng = random.Random(0)
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as"]
    with path.open("w") as fh:
        for _ in range(300):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
            fh.write(json.dumps({"text": text}) + "\n")


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_prep_spellings_write_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    _docs(src)
    flags = ["--input", str(src), "--prefix", "t", "--shard-size", "5000"]
    flags += ["--allow-small-shards", "--workers", "1", "--quiet"]
    assert fineweb.cli([*flags, "--out-dir", str(tmp_path / "ref")]) == 0
    ref = _files(tmp_path / "ref")
    assert len(ref) > 4  # shards and the manifest
    assert cli.main(["prep", "fineweb", *flags, "--out-dir", str(tmp_path / "a")]) == 0
    for name, cmd in [
        ("b", [PY, "data_prep/fineweb.py"]),
        ("c", [PY, "-m", "gpt2repro.prep.fineweb"]),
        ("d", [PY, "-m", "gpt2repro", "prep", "fineweb"]),
    ]:
        p = _run([*cmd, *flags, "--out-dir", str(tmp_path / name)])
        assert p.returncode == 0, p.stderr
    for name in "abcd":
        assert _files(tmp_path / name) == ref, name
    # a bad flag is the same one line, exit 2, in each spelling
    bad = [*flags[:-3], "--workers", "0", "--out-dir", str(tmp_path / "e")]
    lines = set()
    for cmd in ([PY, "data_prep/fineweb.py"], [PY, "-m", "gpt2repro", "prep", "fineweb"]):
        p = _run([*cmd, *bad])
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        lines.add(p.stderr)
    assert len(lines) == 1 and "--workers 0" in lines.pop()


def test_prep_script_without_the_package_says_to_install(tmp_path: Path) -> None:
    """`python data_prep/x.py` imports the installed package; without one, a one-line hint."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for source in cli.PREP_SOURCES:
        # -S: no site-packages, so no installed (or editable) gpt2repro either
        p = _run([PY, "-S", str(REPO / "data_prep" / f"{source}.py"), "--help"], env=env)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.strip() == (
            "error: gpt2repro is not installed; run `pip install -e .` (or `make venv`) first"
        )


def test_prep_modules_do_not_import_torch() -> None:
    """The shard writer's process and its tokenizer workers start without torch (memory, time)."""
    code = "import sys, gpt2repro.prep.fineweb, gpt2repro.prep.shakespeare; print('torch' in sys.modules)"
    p = _run([PY, "-c", code])
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def test_train_verb_is_train_py(corpus: Path, tmp_path: Path) -> None:
    """`gpt2repro train ARGS` (one process) logs the same losses as `python train.py ARGS`."""
    test_train.run(args_for(corpus, tmp_path / "ref", "--train.max_steps=4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPT2REPRO_FAULT", None)
    p = _run(
        [
            PY,
            "-m",
            "gpt2repro",
            "train",
            *args_for(corpus, tmp_path / "cli", "--train.max_steps=4"),
        ],
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    ref = train_losses(tmp_path / "ref" / "metrics.jsonl")
    assert len(ref) == 4 and train_losses(tmp_path / "cli" / "metrics.jsonl") == ref


@pytest.mark.slow
def test_the_installed_console_script_runs(tmp_path: Path) -> None:
    """pip installs `gpt2repro` (pyproject's [project.scripts]); it runs the verbs from anywhere."""
    for tool in ("pip", "setuptools"):  # as test_bench's install test: by metadata, not find_spec
        try:
            importlib.metadata.distribution(tool)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{tool} is not installed")
    src, site, cwd = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(
        REPO / "gpt2repro", src / "gpt2repro", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    pip += ["--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    p = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    script = site / "bin" / "gpt2repro"
    assert script.is_file()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # the install only (ahead of any editable install's finder)
    p = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert p.returncode == 0 and p.stdout == cli.help_text() + "\n", p.stderr
    p = subprocess.run(
        [str(script), "prep", "shakespeare", "--workers", "0"],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and "--workers 0" in p.stderr and len(p.stderr.splitlines()) == 1
    where = "import gpt2repro.prep.shards as s; print(s.__file__)"
    p = subprocess.run(
        [PY, "-c", where], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert Path(p.stdout.strip()).is_relative_to(site), p.stdout + p.stderr


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`python -m gpt2repro.plan ... | head -3` used to end in a BrokenPipeError traceback."""
    import subprocess
    import sys

    from conftest import REPO

    cmd = (
        f"{sys.executable} -m gpt2repro.plan --config configs/gpt2_124m.toml --gpus 8 "
        "--gpu H100 | head -1"
    )
    p = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith("model: ") and len(p.stdout.splitlines()) == 1
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
