"""The set-up commands on a stock machine: the Python version check and the torch build choice
(tools/check_python.py and tools/install_torch.py, which `make venv` runs before anything else)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_python = _load("check_python")
install_torch = _load("install_torch")


def test_an_old_python_is_one_line_naming_the_fix() -> None:
    line = check_python.problem((3, 9, 18), "/usr/bin/python3")
    assert line.startswith("error: ") and "\n" not in line
    assert "/usr/bin/python3 is 3.9" in line and ">= 3.11" in line and "PYTHON=python3.11" in line
    assert check_python.problem((3, 11, 0), "python3") is None
    assert check_python.problem((3, 13, 1), "python3") is None
    # this interpreter (the venv's, >= 3.11) passes through the script itself
    p = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_python.py")], capture_output=True
    )
    assert p.returncode == 0 and p.stderr == b""


def test_the_makefile_checks_python_before_making_the_venv(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    p = subprocess.run(
        ["make", "-n", "venv", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = p.stdout.splitlines()
    check = next(i for i, ln in enumerate(lines) if "tools/check_python.py" in ln)
    venv = next(i for i, ln in enumerate(lines) if "-m venv" in ln)
    torch = next(i for i, ln in enumerate(lines) if "tools/install_torch.py 'auto'" in ln)
    assert check < venv < torch


def test_torch_build_choice() -> None:
    never = lambda: pytest.fail("the CPU index must not be probed here")  # noqa: E731
    args, why = install_torch.pip_args("auto", True, never)
    assert args == ["torch==2.13.0"] and "CUDA" in why
    args, why = install_torch.pip_args("auto", False, lambda: True)
    assert args == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    args, why = install_torch.pip_args("auto", False, lambda: False)
    assert args == ["torch==2.13.0"] and "did not answer" in why
    assert install_torch.pip_args("none", False, never)[0] == []
    spec = "torch --index-url https://download.pytorch.org/whl/cu126"
    assert install_torch.pip_args(spec, False, never)[0] == spec.split()


def test_the_driver_is_found_by_nvidia_smi_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install_torch, "Path", lambda _: tmp_path / "no-such-file")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert install_torch.has_nvidia_driver() is False
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    assert install_torch.has_nvidia_driver() is True


def test_an_unreachable_index_answers_false_quickly() -> None:
    # a closed local port: refused at once (an offline machine's failure is as quick: no DNS)
    assert install_torch.index_reachable("http://127.0.0.1:9", timeout=2.0) is False
    assert install_torch.index_reachable("not a url") is False


def test_none_installs_nothing() -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / "tools" / "install_torch.py"), "none"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "keeping the torch already installed" in p.stdout
