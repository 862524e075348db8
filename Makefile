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
# What `make test` installs: the exact versions tested together (constraints/tested.txt), so a fresh
# clone passes whatever was released since. `make test-latest` / `make test-oldest` run the same suite
# against the newest releases the pyproject allows and against its lower bounds (constraints/oldest.txt).
CONSTRAINTS ?= constraints/tested.txt
export SKIPTUNE_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: test demo demo-latent-smoke lint venv clean test-latest test-oldest lock

PIP_INSTALL = $(PY) -m pip install -q --no-compile $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) $(if $(UPGRADE),--upgrade)

# What the demo needs: PyTorch and the package with its runtime dependencies, no bytecode compiled ahead
# (the modules a run imports are compiled then; ahead of time pip compiles all of PyTorch: 15 s more).
$(VENV)/.runtime: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile $(TORCH_SPEC)
	$(PIP_INSTALL) -e .
	touch $@

# What the tests need besides: the test and lint tools, PostgreSQL's driver, diffusers, gRPC.
$(VENV)/.installed: $(VENV)/.runtime
	$(PIP_INSTALL) -e '.[dev,postgres]'
	touch $@

venv: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check skiptune tests benchmarks
	$(VENV)/bin/mypy skiptune

# PYTEST_ARGS: extra pytest arguments, e.g. PYTEST_ARGS='-m "not slow"' (CI's newest-releases job)
test: lint
	$(VENV)/bin/pytest -q -rs --durations=15 $(PYTEST_ARGS)

# The suite against the newest releases (no constraints) and against the oldest allowed ones; each in
# its own venv. A failure here is news about a release, not about the code under test.
test-latest:
	$(MAKE) test VENV=.venv-latest CONSTRAINTS= UPGRADE=1

test-oldest:
	$(MAKE) test VENV=.venv-oldest CONSTRAINTS=constraints/oldest.txt

# After `make test-latest` passes: make the newest versions the tested ones.
lock:
	{ sed -n 1,2p constraints/tested.txt; .venv-latest/bin/pip freeze --exclude-editable \
	  | grep -v -i -E '^(nvidia|torch|triton|cuda|skiptune)'; } > constraints/tested.new
	mv constraints/tested.new constraints/tested.txt

demo: $(VENV)/.runtime
	$(VENV)/bin/skiptune demo

# The demo-latent recipe end to end on the CPU with tiny networks (a few minutes): VAE, UNet + text
# encoder, the pipeline folder, reloaded by diffusers and measured. Not the shipped model.
demo-latent-smoke: $(VENV)/.installed
	$(PY) -m skiptune.demo.training.latent --smoke --device cpu --out skiptune-demo/latent-smoke

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .pytest_cache .mypy_cache .ruff_cache
