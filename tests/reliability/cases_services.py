"""Bad-input cases: wandb and the Hugging Face hub failing (the table is test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

from badinput import Case


def build(w: Path) -> None:
    """The files these cases need, made in the world directory `w` before any case runs."""


def cases() -> list[Case]:
    return []
