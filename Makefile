# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
#
# TORCH_SPEC picks the torch build (tools/install_torch.py): `auto` (the default) takes the CUDA
# build where an NVIDIA driver is installed and the CPU build elsewhere; or name your own, e.g.
# `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"`, or
# TORCH_SPEC=none to keep the torch already in the environment (with VENV_FLAGS=--system-site-packages).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= auto
VENV_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpt2repro-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: venv demo demo-fast test typecheck lint format clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile tools/install_torch.py
	@$(PYTHON) tools/check_python.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) tools/install_torch.py '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gpt2repro.demo

demo-fast: $(STAMP)
	$(PY) -m gpt2repro.demo --recipe=fast

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q

typecheck: $(STAMP)
	$(PY) -m mypy

lint: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean-venv:
	rm -rf $(VENV)
