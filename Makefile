# `make test` and `make demo` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# torch-fidelity needs torchvision; these pairs import together (x86_64: CUDA build, aarch64: CPU build).
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
export SKIPTUNE_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: test demo lint venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,postgres]'
	touch $@

venv: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check skiptune tests benchmarks
	$(VENV)/bin/mypy skiptune

test: lint
	$(VENV)/bin/pytest -q -rs

demo: $(VENV)/.installed
	$(VENV)/bin/skiptune demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
