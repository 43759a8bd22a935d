# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# V4_TORCH_SPEC picks the torch build (default: the CPU wheel pinned here);
# e.g. `make run V4_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
V4_TORCH_SPEC ?= torch==2.13.0
# The repository `make run` opens: the directory make was started from (override with REPO=...).
REPO ?= $(CURDIR)
ARGS ?=

STAMP := $(VENV)/.v4-installed

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(V4_TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	cd "$(REPO)" && "$(abspath $(VENV))/bin/v4" $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
