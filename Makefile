# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Installs are locked: requirements.lock pins every dependency (with hashes) except torch, whose build
# depends on the hardware and is chosen by V4_TORCH_SPEC (default: the CPU wheel of V4_TORCH);
# e.g. `make run V4_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
# `make lock` re-resolves the lock after pyproject.toml changes (keeping the pins that still fit);
# `make lock UPGRADE=1` moves every pin to the newest release pyproject.toml allows.
PYTHON ?= python3
VENV ?= .venv
V4_TORCH ?= 2.13.0
V4_TORCH_SPEC ?= torch==$(V4_TORCH)
# The repository `make run` opens: the shell's directory, also under `make -C path/to/v4 run` (make -C
# changes CURDIR but not the inherited $PWD); override with REPO=...
REPO ?= $(or $(PWD),$(CURDIR))
ARGS ?=
LOCK := requirements.lock
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.7.0

STAMP := $(VENV)/.v4-installed

.PHONY: run test install lock clean

install: $(STAMP)

# torch first (its build is the user's choice), then exactly the lock, then v4 itself without
# resolving anything (--no-deps) and built with the lock's setuptools (--no-build-isolation).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(V4_TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q --require-hashes -r $(LOCK)
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	touch $(STAMP)

run: $(STAMP)
	cd "$(REPO)" && "$(abspath $(VENV))/bin/v4" $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

# The lock is resolved by pip itself (pip-tools), so it sees the same torch build `install` takes.
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q $(PIP_TOOLS)
	{ $(LOCK_VENV)/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')"; \
	  echo "torch==$(V4_TORCH)"; } | CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q \
	  --extra dev --generate-hashes --strip-extras --unsafe-package torch --no-emit-index-url --no-emit-find-links \
	  $(if $(UPGRADE),--upgrade) -o $(LOCK) pyproject.toml -

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache
