"""Config: defaults < TOML < CLI, errors that name the key and the fix, the shipped recipes."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from gpt2repro import config as config_module
from gpt2repro.config import (
    Config,
    build_config,
    from_dict,
    help_text,
    load_config,
    to_dict,
    to_toml,
)
from gpt2repro.errors import UserError
from gpt2repro.model import GPT2_SIZES

CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return str(path)


def test_defaults():
    cfg, rest = load_config([])
    assert cfg == Config() and rest == []
    assert cfg.optim.lr == 6e-4 and cfg.model.n_layer == 12


@pytest.mark.parametrize("form", ["equals", "space"])
def test_precedence_defaults_toml_cli(tmp_path: Path, form: str):
    path = write(tmp_path, "[optim]\nlr = 1e-3\nwarmup_steps = 10\n[train]\nseed = 5\n")
    cli = ["--optim.lr=2e-3"] if form == "equals" else ["--optim.lr", "2e-3"]
    cfg, rest = load_config(["--config", path, *cli, "--extra"])
    assert cfg.optim.lr == 2e-3  # CLI beats TOML
    assert cfg.optim.warmup_steps == 10 and cfg.train.seed == 5  # TOML beats defaults
    assert cfg.optim.beta2 == 0.95  # default kept
    assert rest == ["--extra"]  # not ours: handed back


def test_cli_coercion():
    cfg, _ = load_config(
        [
            "--train.compile=true",
            "--optim.fused",
            "off",
            "--train.max_steps=1_000",
            "--eval.every=2e3",
        ]
    )
    assert cfg.train.compile is True and cfg.optim.fused is False
    assert cfg.train.max_steps == 1000 and cfg.eval.every == 2000
    cfg, _ = load_config(["--train.compile=auto"])
    assert cfg.train.compile is None


def test_unknown_section_names_closest():
    with pytest.raises(UserError, match=r"unknown section 'optm'.*did you mean 'optim'"):
        load_config(["--optm.lr=1e-3"])


def test_unknown_key_names_closest(tmp_path: Path):
    with pytest.raises(UserError, match=r"unknown key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config(["--optim.lrr=1e-3"])
    path = write(tmp_path, "[train]\nmicro_batch = 8\n")
    with pytest.raises(UserError, match=r"did you mean 'train.micro_batch_size'") as e:
        load_config(["--config", path])
    assert path in str(e.value)  # names the file the key came from


def test_wrong_type_names_field_and_type(tmp_path: Path):
    with pytest.raises(UserError, match=r"'train.seed' must be int, got 'abc'"):
        load_config(["--train.seed=abc"])
    with pytest.raises(UserError, match=r"'optim.lr' must be float"):
        load_config(["--config", write(tmp_path, '[optim]\nlr = "fast"\n')])
    with pytest.raises(UserError, match=r"'train.max_steps' must be int"):
        load_config(["--train.max_steps=1.5"])
    with pytest.raises(UserError, match=r"'train.compile' must be bool \(or unset\)"):
        load_config(["--train.compile=maybe"])


def test_every_problem_reported_at_once(tmp_path: Path):
    path = write(tmp_path, '[optim]\nlr = "x"\n[bogus]\na = 1\n')
    with pytest.raises(UserError) as e:
        load_config(["--config", path, "--train.seed=abc", "--model.n_head=5", "--log.every=0"])
    msg = str(e.value)
    assert msg.startswith("5 config problems")
    for part in ["'optim.lr'", "'bogus'", "'train.seed'", "'model.n_embd' (768)", "'log.every'"]:
        assert part in msg


def test_choices_checked():
    with pytest.raises(UserError, match=r"'optim.schedule' must be one of cosine, linear"):
        load_config(["--optim.schedule=cosin"])


def test_n_embd_divisible_by_n_head():
    with pytest.raises(
        UserError, match=r"'model.n_embd' \(100\) must be divisible by 'model.n_head'"
    ):
        build_config(overrides=[("model.n_embd", "100"), ("model.n_head", "12")])


def test_seq_len_within_block_size():
    with pytest.raises(UserError, match=r"'train.seq_len' \(2048\) exceeds 'model.block_size'"):
        load_config(["--train.seq_len=2048"])


def test_missing_and_malformed_toml(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(["--config", str(tmp_path / "nope.toml")])
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(["--config", write(tmp_path, "[optim\nlr = 1\n")])
    with pytest.raises(UserError, match="--config needs a file path"):
        load_config(["--config"])
    with pytest.raises(UserError, match="needs a value"):
        load_config(["--optim.lr"])


def test_help_lists_every_field_with_default():
    text = help_text()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            shown = "unset" if f.default is None else repr(f.default)
            line = next(
                (
                    ln
                    for ln in text.splitlines()
                    if ln.strip().startswith(f"--{section.name}.{f.name} ")
                ),
                None,
            )
            assert line is not None, f"{section.name}.{f.name} missing from --help"
            assert f"default {shown}" in line


def test_round_trips():
    cfg, _ = load_config(["--optim.lr=3e-4", "--run.name=x", "--train.compile=false"])
    assert from_dict(to_dict(cfg)) == cfg
    assert build_config(tomllib.loads(to_toml(cfg))) == cfg


def test_shipped_configs_load():
    assert len(CONFIGS) >= 5
    for path in CONFIGS:
        cfg, rest = load_config(["--config", str(path)])
        assert rest == []
        assert cfg.train.seq_len <= cfg.model.block_size


SIZES = {"124m": "gpt2", "350m": "gpt2-medium", "774m": "gpt2-large", "1558m": "gpt2-xl"}


@pytest.mark.parametrize("size", list(SIZES))
def test_size_configs_carry_gpt2_dims(size: str):
    cfg, _ = load_config(["--config", str(REPO / "configs" / f"gpt2_{size}.toml")])
    m = cfg.model
    assert (m.n_layer, m.n_head, m.n_embd) == GPT2_SIZES[SIZES[size]]
    assert (m.block_size, m.vocab_size, m.padded_vocab_size % 64) == (1024, 50257, 0)
    assert cfg.train.seq_len == 1024
    assert cfg.optim.warmup_steps == 700 and cfg.optim.weight_decay == 0.1
    assert cfg.optim.grad_clip == 1.0 and (cfg.optim.beta1, cfg.optim.beta2) == (0.9, 0.95)


def test_published_recipes():
    small, _ = load_config(["--config", str(REPO / "configs" / "gpt2_124m.toml")])
    assert small.optim.lr == 6e-4 and small.train.total_batch_tokens == 524288
    assert small.optim.warmup_steps == 700 and small.optim.min_lr == 0.0
    xl, _ = load_config(["--config", str(REPO / "configs" / "gpt2_1558m.toml")])
    assert xl.train.total_batch_tokens == 1048576
    assert xl.optim.lr == 6e-4 and xl.optim.min_lr == 6e-5
    for size, lr in [("350m", 3e-4), ("774m", 2.5e-4)]:
        cfg, _ = load_config(["--config", str(REPO / "configs" / f"gpt2_{size}.toml")])
        assert cfg.optim.lr == lr and cfg.train.total_batch_tokens == 524288


def test_an_option_is_not_a_value() -> None:
    with pytest.raises(UserError, match=r"--run.name needs a value"):
        load_config(["--run.name", "--train.seed=3"])


def test_a_leading_minus_is_a_value() -> None:
    assert load_config(["--optim.min_lr", "-0.0"])[0].optim.min_lr == 0.0


def test_non_finite_and_out_of_range_numbers_are_refused_together() -> None:
    with pytest.raises(UserError) as e:
        build_config(
            {
                "optim": {"lr": float("nan"), "beta2": 1.0, "grad_clip": -1.0},
                "eval": {"batch_examples": 0},
            }
        )
    msg = str(e.value)
    for key in (
        "optim.lr' must be a finite",
        "optim.beta2",
        "optim.grad_clip",
        "eval.batch_examples",
    ):
        assert key in msg, (key, msg)


def test_resolved_toml_round_trips_quotes_backslashes_and_newlines() -> None:
    cfg = build_config(overrides=[("log.sample_prompt", 'ROMEO:\n"say" \\ ä\t')])
    assert tomllib.loads(to_toml(cfg))["log"]["sample_prompt"] == cfg.log.sample_prompt


@pytest.mark.parametrize("stray", ["stray", "--seed=3", "-x"])
def test_config_cli_rejects_leftover_arguments(stray: str, capsys: pytest.CaptureFixture) -> None:
    """`python -m gpt2repro.config` refuses what it does not understand, in train.py's words."""
    from gpt2repro.config import _cli
    from gpt2repro.errors import run_cli
    from gpt2repro.train import _main as train_main

    with pytest.raises(UserError) as from_config:
        _cli(["--train.seed=3", stray])
    with pytest.raises(UserError) as from_train:
        train_main(["--train.seed=3", stray])
    assert str(from_config.value) == str(from_train.value)
    assert str(from_config.value) == (
        f"unknown argument {stray!r}: options look like --section.key=value (see --help)"
    )
    assert run_cli(_cli, [stray]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no TOML printed for a command line with a mistake in it
    assert captured.err.strip().splitlines() == [f"error: {from_config.value}"]


def _declared_ranges() -> list[tuple[str, str, str]]:
    """(key, a value just outside its declared range, the message) for every checked field."""
    cases = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            check = f.metadata.get("check")
            if check is None:
                continue
            if check.lo is not None:
                bad = check.lo if check.lo_open else check.lo - 1
            else:
                bad = check.hi if check.hi_open else check.hi + 1
            cases.append((f"{section.name}.{f.name}", f"{bad:g}", f"must be {check.describe()}"))
    return cases


def test_the_declared_ranges_are_the_published_rules() -> None:
    """The rules as they stood before they moved beside their fields: none lost in the move."""
    by_message: dict[str, set[str]] = {}
    for key, _, message in _declared_ranges():
        by_message.setdefault(message, set()).add(key)
    assert by_message["must be positive"] == {
        "model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.vocab_size",
        "model.pad_vocab_multiple", "train.seq_len", "train.micro_batch_size",
        "train.total_batch_tokens", "train.max_steps", "optim.lr", "optim.eps",
        "eval.batch_examples", "guard.max_skipped", "guard.spike_window", "log.every",
        "log.sample_tokens", "log.wandb_init_timeout_s", "dist.init_timeout_s",
        "optim.muon_lr",  # issue 20
    }  # fmt: skip
    assert by_message[f"must be in [0, {2**63 - 1}]"] == {"train.seed"}
    assert by_message["must be >= 1"] == {"dist.bucket_cap_mb"}
    assert by_message["must be >= 0"] == {
        "optim.warmup_steps", "eval.every", "eval.val_tokens", "eval.hellaswag_every",
        "checkpoint.every", "checkpoint.keep_last", "eval.hellaswag_limit", "optim.min_lr",
        "train.loss_chunk", "eval.batch_size", "eval.core_every", "eval.core_max_per_task",
        "optim.weight_decay", "optim.grad_clip", "guard.spike_zscore",
        "model.logit_softcap", "optim.embed_lr", "optim.head_lr",  # issue 20
    }  # fmt: skip
    assert by_message["must be in [0, 1)"] == {"optim.beta1", "optim.beta2", "optim.muon_momentum"}
    assert by_message["must be in [0, 1]"] == {"optim.decay_frac"}


@pytest.mark.parametrize("key,value,message", _declared_ranges())
def test_every_range_rule_names_its_key(key: str, value: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        load_config([f"--{key}={value}"])
    assert f"'{key}' {message}, got " in str(e.value)


def test_a_constraint_declared_on_a_field_is_enforced() -> None:
    """Adding a rule is one `check=` beside the field: the validator and --help both read it."""

    @dataclasses.dataclass(frozen=True)
    class Toy:
        width: int = config_module._f(4, "a width", check=config_module.AT_LEAST_1)
        share: float = config_module._f(0.5, "a share", check=config_module.FRACTION)

    width, share = dataclasses.fields(Toy)
    assert config_module._field_problem(width, 1) is None
    assert config_module._field_problem(width, 0) == "must be >= 1, got 0"
    assert config_module._field_problem(share, 1.5) == "must be in [0, 1], got 1.5"
    assert config_module._field_problem(share, float("nan")) == "must be a finite number, got nan"
    assert "(float, in [0, 1), default 0.95)" in next(
        ln for ln in help_text().splitlines() if ln.strip().startswith("--optim.beta2 ")
    )


def test_ddp_bucket_is_at_least_1_mib() -> None:
    """Below 1 MiB DDP under torch.compile fails with an AssertionError at the first step: the
    config refuses it first, naming the key; 1 MiB and fractions above it are accepted."""
    for bad in ("0.5", "0", "-25"):
        with pytest.raises(UserError) as e:
            build_config(overrides=[("dist.bucket_cap_mb", bad)])
        assert str(e.value) == f"'dist.bucket_cap_mb' must be >= 1, got {float(bad)}"
    assert build_config(overrides=[("dist.bucket_cap_mb", "1")]).dist.bucket_cap_mb == 1.0
    assert build_config(overrides=[("dist.bucket_cap_mb", "1.5")]).dist.bucket_cap_mb == 1.5
    assert "(float, >= 1, default 25.0)" in next(
        ln for ln in help_text().splitlines() if ln.strip().startswith("--dist.bucket_cap_mb ")
    )


def test_train_help_lists_debug_and_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import runpy, sys; sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "--debug" in p.stdout and "--optim.lr" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "NO-TORCH"


@pytest.mark.parametrize(
    "module", ["gpt2repro.sample", "gpt2repro.export", "gpt2repro.evaluate", "gpt2repro.bench"]
)
def test_every_cli_help_lists_debug(module: str) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--debug" in p.stdout, p.stderr


def test_ctrl_c_is_one_line_with_how_to_go_on(capsys: pytest.CaptureFixture) -> None:
    from gpt2repro.errors import EXIT_INTERRUPTED, run_cli

    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    assert run_cli(interrupted, [], on_interrupt="rerun to resume") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: rerun to resume\n"


@pytest.mark.parametrize(
    "arg,suggestion",
    [
        ("--optim.learning_rate=3e-4", "'optim.lr'"),  # it used to suggest optim.decay_frac
        ("--train.lr=3e-4", "'optim.lr'"),  # a known key in the wrong section
        ("--optim.micro_batch_size=8", "'train.micro_batch_size'"),
        ("--optim.weight_decya=0.1", "'optim.weight_decay'"),  # a typo
        ("--train.batch_size=8", "'train.micro_batch_size'"),
    ],
)
def test_unknown_keys_suggest_what_was_meant(arg: str, suggestion: str) -> None:
    with pytest.raises(UserError) as e:
        load_config([arg])
    assert f"did you mean {suggestion}?" in str(e.value)


# --------------------------------------------------------------------------- booleans and verbs


@pytest.mark.parametrize(
    "argv,compile_,rest",
    [
        (["--train.compile"], True, []),
        (["--no-train.compile"], False, []),
        (["--train.compile", "--optim.lr=1e-3"], True, []),  # followed by another option
        (["--train.compile", "positional"], True, ["positional"]),  # the positional stays
        (["--train.compile", "false"], False, []),  # the space form still reads a word
        (["--train.compile", "auto"], None, []),
        (["--train.compile=off", "--train.compile"], True, []),  # the last one wins
    ],
)
def test_bare_booleans(argv: list[str], compile_: bool | None, rest: list[str]) -> None:
    cfg, left = load_config(argv)
    assert cfg.train.compile is compile_ and left == rest
    assert load_config(["--log.report", "x"])[0].log.report is True
    assert load_config(["--no-log.report"])[0].log.report is False


def test_no_form_of_a_non_boolean_or_unknown_key_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^--no-train.seed: 'train.seed' is int, not a boolean"):
        load_config(["--no-train.seed"])
    with pytest.raises(UserError, match=r"--no-optim.fusd: unknown key .*'optim.fused'"):
        load_config(["--no-optim.fusd"])
    with pytest.raises(UserError, match=r"--no-train.compile takes no value"):
        load_config(["--no-train.compile=true"])


def _verb(argv: list[str], **settings):  # type: ignore[no-untyped-def]
    import argparse

    from gpt2repro.config import NON_NEGATIVE, ShowDefaults, add_option, parse_verb_args

    p = argparse.ArgumentParser(prog="verb", formatter_class=ShowDefaults)
    p.add_argument("path", nargs="?")
    add_option(p, "--limit", type=int, default=0, check=NON_NEGATIVE, help="first N")
    add_option(p, "--scale", type=float, default=1.0, check=NON_NEGATIVE, help="a scale")
    return parse_verb_args(argv, p, **settings)


VERB = {
    "keys": ("train.device", "train.compile"),
    "sections": ("eval",),
    "aliases": {"--device": "train.device", "--compile": "train.compile"},
}


def test_a_verb_reads_its_settings_as_train_py_does() -> None:
    cfg, args = _verb(
        ["--device", "cpu", "--compile", "data", "--eval.batch_examples=4", "--limit", "3"], **VERB
    )
    assert (cfg.train.device, cfg.train.compile, cfg.eval.batch_examples) == ("cpu", True, 4)
    assert (args.path, args.limit) == ("data", 3)
    assert args.config_flags["train.device"] == "--device"
    cfg, args = _verb(["--train.device=cpu", "--no-compile"], **VERB)
    assert (cfg.train.device, cfg.train.compile) == ("cpu", False)
    assert args.config_flags["train.device"] == "--train.device"
    assert args.config_flags["eval.every"] == "--eval.every"


def test_a_verb_refuses_keys_it_does_not_use_and_unknown_ones() -> None:
    with pytest.raises(UserError, match=r"^--train.seed: verb does not use 'train.seed' \(its"):
        _verb(["--train.seed=3"], **VERB)
    with pytest.raises(
        UserError, match=r"unknown key 'eval.batch_exemples'.*'eval.batch_examples'"
    ):
        _verb(["--eval.batch_exemples=3"], **VERB)
    with pytest.raises(UserError, match=r"verb does not use 'train.device' \(it takes none\)"):
        _verb(["--train.device", "cpu"])
    with pytest.raises(UserError, match=r"^--config: verb takes no config file"):
        _verb(["--config", "x.toml"], **VERB)


def test_an_alias_and_its_key_must_agree() -> None:
    with pytest.raises(UserError) as e:
        _verb(["--device", "cpu", "--train.device=cuda"], **VERB)
    assert str(e.value) == (
        "--device cpu and --train.device=cuda set the same setting (train.device) to different "
        "values; give it once"
    )
    with pytest.raises(UserError, match=r"^--no-compile and --train.compile=true set the same"):
        _verb(["--no-compile", "--train.compile=true"], **VERB)
    cfg, _ = _verb(["--compile", "--train.compile=yes"], **VERB)  # the same value: fine
    assert cfg.train.compile is True


def test_a_verb_checks_its_own_flags_in_one_line_each() -> None:
    with pytest.raises(UserError, match=r"^--limit must be >= 0, got -1$"):
        _verb(["--limit", "-1"])
    with pytest.raises(UserError, match=r"^--scale must be a finite number >= 0, got nan$"):
        _verb(["--scale", "nan"])


def test_a_verb_takes_its_defaults_and_config_file(tmp_path: Path) -> None:
    settings = {**VERB, "defaults": {"train.compile": False}, "config_file": True}
    cfg, _ = _verb([], **settings)
    assert cfg.train.compile is False and cfg.eval.batch_examples == 16
    path = write(tmp_path, "[train]\ncompile = true\nseed = 7\n[eval]\nbatch_examples = 2\n")
    cfg, _ = _verb(["--config", path, "--eval.batch_examples", "3"], **settings)
    assert (cfg.train.compile, cfg.train.seed, cfg.eval.batch_examples) == (True, 7, 3)


def test_every_help_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _verb(["--help"], **{**VERB, "defaults": {"train.compile": False}})
    out = " ".join(capsys.readouterr().out.split())
    assert "first N (>= 0; default: 0)" in out
    assert (
        "--device DEVICE, --train.device DEVICE cuda, mps, cpu or auto (str, default 'auto')" in out
    )
    assert "--compile, --train.compile, --no-compile, --no-train.compile" in out
    assert "(bool (or unset), default False)" in out  # the verb's own default
    assert "--eval.batch_examples BATCH_EXAMPLES" in out and "default 16" in out


@pytest.mark.parametrize("module", ["gpt2repro.sample", "gpt2repro.export"])
def test_verb_help_shows_defaults(module: str) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    out = " ".join(p.stdout.split())
    assert p.returncode == 0, p.stderr
    if module == "gpt2repro.sample":
        assert "(>= 0; default: 64)" in out and "(str, default 'auto')" in out
        assert "--device DEVICE, --train.device DEVICE" in out
    else:
        assert "--overwrite" in out and "settings shared" not in out  # takes none


def test_a_rule_broken_under_a_short_flag_names_the_flag() -> None:
    with pytest.raises(UserError, match=r"^'eval.every' must be >= 0, got -1$"):  # as train.py
        _verb(["--eval.every=-1"], **VERB)
    settings = {"keys": ("dist.strategy",), "aliases": {"--strategy": "dist.strategy"}}
    with pytest.raises(UserError) as e:
        _verb(["--strategy", "zero3"], **settings)
    assert str(e.value) == "--strategy: 'dist.strategy' must be one of ddp, fsdp, got 'zero3'"


# --------------------------------------------------------------------------- start-up checks


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\xef\xbb\xbf[optim]\nlr = 3e-4\n", "starts with a UTF-8 byte-order mark"),
        (b'[optim]\nlr = 3e-4\n[run]\nname = "caf\xe9"\n', "is not UTF-8 (byte 0xe9 on line 4)"),
    ],
)
def test_a_config_file_with_a_bom_or_not_in_utf8_is_one_line(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    """A BOM read as 'invalid statement at line 1'; Latin-1 as a UnicodeDecodeError traceback."""
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_config(["--config", str(path)])
    assert str(e.value).startswith(f"config file {path} ") and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_a_config_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """It used to say the file 'does not exist'."""
    (tmp_path / "x.toml").mkdir()
    with pytest.raises(UserError, match=r"x.toml is a directory, not a file"):
        load_config(["--config", str(tmp_path / "x.toml")])


def test_config_given_twice_is_refused_naming_both(tmp_path: Path) -> None:
    """It used to keep the last file silently, dropping the first one's settings."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[optim]\nlr = 1e-3\n")
    b.write_text("[train]\nseed = 7\n")
    for argv in (["--config", str(a), "--config", str(b)], [f"--config={a}", f"--config={b}"]):
        with pytest.raises(UserError, match=r"--config is given twice") as e:
            load_config(argv)
        assert str(a) in str(e.value) and str(b) in str(e.value)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_run_dir_is_refused(value: str) -> None:
    """An empty run.dir is the current directory: checkpoints and metrics among the user's files."""
    with pytest.raises(UserError, match=r"'run.dir' is empty; set --run.dir"):
        load_config([f"--run.dir={value}"])


@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999"])
def test_a_seed_out_of_range_is_refused(seed: str) -> None:
    """numpy refuses negative seeds (at the loader), torch 2**64 and more (at init)."""
    with pytest.raises(UserError, match=rf"'train.seed' must be in \[0, {2**63 - 1}\], got {seed}"):
        load_config([f"--train.seed={seed}"])
    assert load_config([f"--train.seed={2**63 - 1}"])[0].train.seed == 2**63 - 1


def test_init_timeout_is_a_dist_setting_with_a_bounded_default() -> None:
    cfg, _ = load_config([])
    assert 0 < cfg.dist.init_timeout_s < 30 * 60  # torch's default wait is 30 minutes
    assert load_config(["--dist.init_timeout_s=5"])[0].dist.init_timeout_s == 5.0
