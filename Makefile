# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
#
# TORCH_SPEC picks the torch build. The default is the CPU wheel this project's machines carry;
# on a GPU node choose your own, e.g. `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`
# or TORCH_SPEC=none to keep the torch already in the environment (with VENV_FLAGS=--system-site-packages).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpt2repro-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: venv demo test typecheck lint format clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ "$(TORCH_SPEC)" != "none" ]; then $(PY) -m pip install --quiet $(TORCH_SPEC); fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gpt2repro.demo

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
