"""docs/reliability.md stays true: every fault row names tests that exist, and every test of the
fault suite is in the table."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

DOC = REPO / "docs" / "reliability.md"
SUITE = REPO / "tests" / "reliability" / "test_faults.py"
# `tests/<file>.py::<name>` with an optional parametrize id: `...::<name>[2]`
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of every markdown table (header and separator rows left out), as cells."""
    lines = markdown.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or re.fullmatch(r"\|[-|: ]+\|", line.strip()):
            continue
        if i + 1 < len(lines) and re.fullmatch(r"\|[-|: ]+\|", lines[i + 1].strip()):
            continue  # a header row
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def problems(markdown: str, repo: Path) -> list[str]:
    """Rows naming no test, and named tests that do not exist (no `def name(` in the file)."""
    out = []
    for cells in table_rows(markdown):
        refs = REF.findall(cells[-1])
        if not refs:
            out.append(f"no test named for {cells[0]!r}")
        for path, name in refs:
            file = repo / path
            source = file.read_text() if file.is_file() else ""
            if not re.search(rf"^def {name}\(", source, re.MULTILINE):
                out.append(f"{path}::{name} (for {cells[0]!r}) does not exist")
    return out


def test_every_fault_names_tests_that_exist() -> None:
    text = DOC.read_text()
    assert len(table_rows(text)) >= 30
    assert problems(text, REPO) == []


def test_every_test_of_the_fault_suite_is_in_the_table() -> None:
    named = {name for _, name in REF.findall(DOC.read_text())}
    suite = re.findall(r"^def (test_\w+)\(", SUITE.read_text(), re.MULTILINE)
    assert suite and [t for t in suite if t not in named] == []


def test_the_check_finds_a_missing_test_and_a_row_without_one() -> None:
    doc = (
        "| fault | does | tests |\n|---|---|---|\n"
        "| a | x | `tests/test_faults_doc_sample.py::test_gone` |\n"
        "| b | y | (preemption test) |\n"
        "| c | z | `tests/reliability/test_reliability_doc.py::test_every_fault_names_tests_that_exist[1]` |\n"
    )
    assert problems(doc, REPO) == [
        "tests/test_faults_doc_sample.py::test_gone (for 'a') does not exist",
        "no test named for 'b'",
    ]
