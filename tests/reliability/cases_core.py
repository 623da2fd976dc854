"""Bad-input cases: CORE's evaluate flags and data_prep/core.py (the table is test_bad_inputs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from badinput import EVALUATE, PY, Case
from conftest import REPO

CORE_PREP = [PY, str(REPO / "data_prep" / "core.py")]
FIXTURE = REPO / "tests" / "fixtures" / "core_bundle"


def build(w: Path) -> None:
    """A good bundle, one with a bad row, and a file that is not a zip."""
    shutil.copytree(FIXTURE, w / "core_bundle")
    shutil.copytree(FIXTURE, w / "core_badrow")
    (w / "core_badrow" / "eval_data" / "mc_zeroshot.jsonl").write_text('{"query": "q"}\n')
    (w / "core_notzip.zip").write_bytes(b"not a zip")


def cases() -> list[Case]:
    ev = [*EVALUATE, "--checkpoint", "{w}/run", "--device", "cpu", "--core"]
    good = ["--core-bundle", "{w}/core_bundle"]
    return [
        Case("core-evaluate-bundle-missing", [*ev, "--core-bundle", "{w}/nobundle"], ["{w}/nobundle/core.yaml", "data_prep/core.py"]),
        Case("core-evaluate-unknown-task", [*ev, *good, "--core-tasks", "nope"], ["--core-tasks", "nope", "mc_fewshot"]),
        Case("core-evaluate-cap-too-small", [*ev, *good, "--core-max-per-task", "2"], ["--core-max-per-task 2", "4 or more"]),
        Case("core-evaluate-cap-negative", [*ev, *good, "--core-max-per-task", "-1"], ["--core-max-per-task"]),
        Case("core-evaluate-flag-without-core", [*EVALUATE, "--checkpoint", "{w}/run", "--core-tasks", "piqa"], ["--core-tasks needs --core"]),
        Case("core-evaluate-bad-row", [*ev, "--core-bundle", "{w}/core_badrow"], ["mc_zeroshot.jsonl:1:", "choices, gold"]),
        Case("core-evaluate-small-vocab", [*ev, *good], ["vocab_size=512", "CORE"]),
        Case("core-prep-bundle-missing", [*CORE_PREP, "--bundle", "{w}/none.zip", "--out-dir", "{w}/c1"], ["--bundle {w}/none.zip"]),
        Case("core-prep-not-a-zip", [*CORE_PREP, "--bundle", "{w}/core_notzip.zip", "--out-dir", "{w}/c2"], ["{w}/core_notzip.zip", "not a readable zip"]),
        Case("core-prep-out-dir-is-a-file", [*CORE_PREP, "--bundle", "{w}/core_bundle", "--out-dir", "{w}/afile"], ["--out-dir {w}/afile"]),
        Case("core-prep-bad-row", [*CORE_PREP, "--bundle", "{w}/core_badrow", "--out-dir", "{w}/c3"], ["mc_zeroshot.jsonl:1:"]),
        Case("core-prep-hf-unknown", [*CORE_PREP, "--hf-tasks", "mmlu", "--out-dir", "{w}/c4"], ["--hf-tasks", "mmlu"]),
        Case("core-prep-hf-and-bundle", [*CORE_PREP, "--hf-tasks", "piqa", "--bundle", "{w}/core_bundle"], ["--hf-tasks", "--bundle"]),
    ]  # fmt: skip
