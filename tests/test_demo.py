"""`make demo`'s portable settings: bf16 + torch.compile only where they pay and work."""

from __future__ import annotations

import pytest
import torch

from gpt2repro import demo, precision
from gpt2repro.config import load_config


@pytest.mark.parametrize(
    ("device", "bf16_units", "compiler", "expect"),
    [
        ("cuda", False, False, []),
        ("cpu", True, True, []),
        ("cpu", False, True, ["--train.dtype=float32", "--train.compile=false"]),
        ("cpu", True, False, ["--train.compile=false"]),
        ("mps", True, True, ["--train.compile=false"]),
    ],
)
def test_portable_overrides(
    monkeypatch: pytest.MonkeyPatch, device: str, bf16_units: bool, compiler: bool, expect: list
) -> None:
    monkeypatch.setattr("gpt2repro.dist.pick_device", lambda option: torch.device(device))
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: bf16_units)
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/c++" if compiler else None)
    monkeypatch.delenv("CXX", raising=False)
    overrides, why = demo.portable_overrides("auto")
    assert overrides == expect
    assert bool(why) == bool(expect)  # a fallback always says why
    cfg, rest = load_config(["--config", str(demo.CONFIG), *overrides])  # valid keys and values
    assert rest == []
    if expect:
        assert cfg.train.compile is False


def test_demo_config_asks_for_bf16_compiled_training() -> None:
    """The fallback only makes sense if the config asks for what it undoes."""
    cfg, _ = load_config(["--config", str(demo.CONFIG)])
    assert cfg.train.compile is True and cfg.train.dtype == "bfloat16"
