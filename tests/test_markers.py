"""Every test that launches torchrun carries the `dist` marker, so `-m 'not dist'` leaves them out.

Read from the source with `ast`: a test launches torchrun when it names `torchrun` or
`torch.distributed.run` itself, calls a helper of its module that does, or calls a helper with an
`nproc` parameter (like test_train's `run`) with a value other than 1; for a parametrized `nproc`,
each case with nproc != 1 must be marked (`pytest.param(..., marks=pytest.mark.dist)`).
conftest.py checks the same at run time, on the command lines the tests actually start.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import launches_torchrun

TESTS = Path(__file__).resolve().parent
TORCHRUN = re.compile(r"\btorchrun\b|torch\.distributed\.run")


def _has_dist(node: ast.AST | None) -> bool:
    """`pytest.mark.dist`, or a list/tuple holding it."""
    return node is not None and any(
        isinstance(n, ast.Attribute) and n.attr == "dist" and ast.unparse(n.value).endswith("mark")
        for n in ast.walk(node)
    )


def _names_torchrun(fn: ast.FunctionDef) -> bool:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring may talk about torchrun without running it
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and TORCHRUN.search(n.value)
        for stmt in body
        for n in ast.walk(stmt)
    )


def _called(fn: ast.FunctionDef) -> set[str]:
    return {
        n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }


def _is_parametrize(dec: ast.expr) -> bool:
    return isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("mark.parametrize")


def _param_cases(fn: ast.FunctionDef) -> list[tuple[dict[str, ast.expr], bool]]:
    """(argname -> value expression, marked dist) for each case of @pytest.mark.parametrize."""
    cases: list[tuple[dict[str, ast.expr], bool]] = []
    for dec in fn.decorator_list:
        if not _is_parametrize(dec):
            continue
        names_node, values_node = dec.args[0], dec.args[1]
        if isinstance(names_node, ast.Constant):
            names = [s.strip() for s in names_node.value.split(",")]
        else:
            names = [ast.literal_eval(e) for e in names_node.elts]  # type: ignore[attr-defined]
        if not isinstance(values_node, ast.List | ast.Tuple):
            continue  # computed values: nothing to read statically
        for case in values_node.elts:
            marked = False
            if isinstance(case, ast.Call) and ast.unparse(case.func).endswith("param"):
                marked = any(k.arg == "marks" and _has_dist(k.value) for k in case.keywords)
                values = case.args
            elif len(names) > 1 and isinstance(case, ast.Tuple):
                values = case.elts
            else:
                values = [case]
            cases.append((dict(zip(names, values, strict=False)), marked))
    return cases


def unmarked_torchrun_tests(source: str) -> tuple[list[str], list[str]]:
    """(tests that launch torchrun, those of them without the dist marker) in one test module."""
    tree = ast.parse(source)
    module_marked = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and _has_dist(n.value)
        for n in tree.body
    )
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        funcs.update(
            {f"{cls.name}.{n.name}": n for n in cls.body if isinstance(n, ast.FunctionDef)}
        )

    def nproc_param(fn: ast.FunctionDef) -> int | None:
        names = [a.arg for a in fn.args.args]
        return names.index("nproc") if "nproc" in names else None

    # Helpers that launch torchrun: always (no nproc parameter), or depending on their nproc.
    always = {n for n, f in funcs.items() if _names_torchrun(f) and nproc_param(f) is None}
    by_nproc = {n: f for n, f in funcs.items() if _names_torchrun(f) and nproc_param(f) is not None}
    changed = True
    while changed:  # helpers that call helpers
        grown = {
            n
            for n, f in funcs.items()
            if n not in by_nproc and _called(f) & always and n not in always
        }
        changed = bool(grown)
        always |= grown

    launching, unmarked = [], []
    for name, fn in funcs.items():
        if not name.split(".")[-1].startswith("test"):
            continue
        marked = module_marked or any(
            _has_dist(d) for d in fn.decorator_list if not _is_parametrize(d)
        )
        cases = _param_cases(fn)
        launches = name in always or bool(_called(fn) & always)
        needs_case: list[str] = []  # parametrize argnames whose value != 1 means torchrun
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
            if not (isinstance(call.func, ast.Name) and call.func.id in by_nproc):
                continue
            helper = by_nproc[call.func.id]
            index = nproc_param(helper)
            assert index is not None
            arg = next((k.value for k in call.keywords if k.arg == "nproc"), None)
            if arg is None and index < len(call.args):
                arg = call.args[index]
            if arg is None:
                defaults = helper.args.defaults
                offset = len(helper.args.args) - len(defaults)
                arg = defaults[index - offset] if index >= offset else None
            if isinstance(arg, ast.Constant):
                launches = launches or arg.value != 1
            elif isinstance(arg, ast.Name):
                if arg.id not in needs_case:
                    needs_case.append(arg.id)
            else:
                launches = True  # cannot tell: treat as launching
        if launches:
            launching.append(name)
            if not marked:
                unmarked.append(name)
        for argname in needs_case:
            for i, (values, case_marked) in enumerate(cases):
                value = values.get(argname)
                if isinstance(value, ast.Constant) and value.value == 1:
                    continue
                launching.append(f"{name}[{i}]")
                if not (marked or case_marked):
                    unmarked.append(f"{name}[{i}] ({argname}={ast.unparse(value or fn)})")
    return launching, unmarked


def test_every_torchrun_test_is_marked_dist() -> None:
    launching, unmarked = [], []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name == Path(__file__).name:
            continue  # its strings are samples for the detector, not commands
        found, missing = unmarked_torchrun_tests(path.read_text())
        launching += [f"{path.name}::{n}" for n in found]
        unmarked += [f"{path.name}::{n}" for n in missing]
    # The detector sees the torchrun tests it must see (so an empty `unmarked` means something).
    for known in (
        "test_train.py::test_fsdp_matches_ddp",
        "test_train.py::test_sigkill_resume_is_bit_identical[1]",
        "test_evaluate.py::test_torchrun_two_ranks_equal_one",
        "test_faults.py::test_a_rank_killed_under_torchrun_max_restarts_restarts_and_resumes",
    ):
        assert known in launching, (known, launching)
    assert "test_train.py::test_sigkill_resume_is_bit_identical[0]" not in launching  # nproc=1
    assert not unmarked, "add @pytest.mark.dist to: " + ", ".join(unmarked)


def test_the_detector_flags_unmarked_torchrun_tests() -> None:
    source = """
import pytest

def run(args, nproc=1):
    cmd = ["python", "-m", "torch.distributed.run"] if nproc > 1 else ["python"]

def launch():
    return ["torchrun", "--nproc_per_node=2"]

def test_direct():
    launch()

@pytest.mark.dist
def test_direct_marked():
    launch()

def test_helper_two():
    run([], nproc=2)

def test_helper_one():
    run([])

@pytest.mark.parametrize("nproc", [1, 2, pytest.param(4, marks=pytest.mark.dist)])
def test_cases(nproc):
    run([], nproc=nproc)
"""
    launching, unmarked = unmarked_torchrun_tests(source)
    assert launching == [
        "test_direct",
        "test_direct_marked",
        "test_helper_two",
        "test_cases[1]",
        "test_cases[2]",
    ]
    assert unmarked == ["test_direct", "test_helper_two", "test_cases[1] (nproc=2)"]
    marked_module = "pytestmark = [pytest.mark.dist]\n" + source
    assert unmarked_torchrun_tests(marked_module)[1] == []


def test_runtime_guard_recognises_torchrun_command_lines() -> None:
    assert launches_torchrun(["/venv/bin/torchrun", "--standalone", "train.py"])
    assert launches_torchrun(["python", "-m", "torch.distributed.run", "train.py"])
    assert launches_torchrun("torchrun --nproc_per_node=2 train.py")
    assert not launches_torchrun(["python", "train.py", "--dist.strategy=fsdp"])
    assert not launches_torchrun(["python", "-m", "gpt2repro.evaluate"])
