"""The package's import graph: imports point down (no cycle, counting imports inside functions and
under TYPE_CHECKING too), and every import inside a function says why it is there."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "gpt2repro"
MAX_FUNCTION_LEVEL = 60  # the structure issue's bound; each one carries its reason


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package's modules an import statement loads (`from gpt2repro import data` -> data)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    out = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return out | ({base} if base in known else set())


def function_level(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports inside a def (not module level, not `if TYPE_CHECKING:`, not `__main__` blocks)."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= imported(node, known)
        edges[name] = targets - {name, "gpt2repro"}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path a -> ... -> a, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def has_reason(lines: list[str], node: ast.Import | ast.ImportFrom) -> bool:
    """A comment on the import's lines, or above its block of imports (blank lines allowed)."""
    end = node.end_lineno or node.lineno
    if any("#" in lines[i - 1] for i in range(node.lineno, end + 1)):
        return True
    i = node.lineno - 1
    while i >= 1:
        text = lines[i - 1].strip()
        if "#" in text:  # a comment line, or an earlier import of the block with its reason
            return True
        if text and not text.startswith(("import ", "from ", ")")) and not text.endswith(","):
            return False
        i -= 1
    return False


def test_every_function_level_import_says_why_and_they_are_few() -> None:
    total, silent = 0, []
    for path in modules().values():
        source = path.read_text()
        lines = source.splitlines()
        for node in function_level(ast.parse(source)):
            total += 1
            if not has_reason(lines, node):
                silent.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not silent, "imports inside functions without a reason comment: " + ", ".join(silent)
    assert total <= MAX_FUNCTION_LEVEL, f"{total} imports inside functions"


def test_the_wheel_is_one_package() -> None:
    """data prep lives in gpt2repro.prep; data_prep/ holds only scripts (no package to install)."""
    assert not (REPO / "data_prep" / "__init__.py").exists()
    assert all(name.startswith("gpt2repro") for name in modules())


TORCH_FREE = [
    "gpt2repro.config", "gpt2repro.data", "gpt2repro.tokenizer", "gpt2repro.reference",
    "gpt2repro.runs", "gpt2repro.report", "gpt2repro.gpu_results", "gpt2repro.cli",
    "gpt2repro.bench", "gpt2repro.prep.shards", "gpt2repro.prep.fineweb",
    "gpt2repro.prep.shakespeare", "gpt2repro.services",
]  # fmt: skip


def test_torch_free_modules_load_no_torch() -> None:
    """What reads runs, prepares data or answers --help starts in a fraction of a second, and
    data prep's worker processes (and `bench data`, which times them) never hold torch."""
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in TORCH_FREE)
    code += "print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    named = [
        x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs] if x.arg not in ("self", "cls")
    ]
    return len(named) + bool(a.vararg) + bool(a.kwarg)


def test_functions_take_few_parameters() -> None:
    """At most 8 anywhere in the package, and at most 4 for train.py's helpers: what a function
    needs beyond that travels as one object (TrainContext, ShardOptions, EvalSettings, ...)."""
    wide = []
    for name, path in modules().items():
        limit = 4 if name == "gpt2repro.train" else 8
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and parameters(fn) > limit:
                wide.append(f"{name}.{fn.name} ({parameters(fn)})")
    assert not wide, "too many parameters: " + ", ".join(wide)
