# The front door. `make demo` and `make test` work on a fresh clone: they create .venv and install the exact versions
# in constraints.txt (the lock: every direct and transitive dependency, tested together), CPU torch first (a bare
# torch requirement would pull several GB of CUDA packages), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := constraints.txt
# CPU torch: the newest CPU build this project can install (PyPI's newer torch releases are CUDA builds).
TORCH_VERSION ?= 2.13.0
OUTPUT_DIR ?= outputs/demo
LATEST_VENV ?= .venv-latest
LOCK_VENV ?= .venv-lock
# Test processes (pytest-xdist): each test runs on one torch thread, so two processes keep two cores busy. Each test
# file stays on one process (--dist loadfile): its module fixtures (trained tiny models) are built once. Files go out
# in collection order (--no-loadscope-reorder), which tests/conftest.py starts with the longest files.
TEST_WORKERS ?= 2

.PHONY: install check-lock lock demo test test-fast test-latest test-gpu bench bench-memory gpu-wheels gpu-check lint clean

check-lock:
	@$(PYTHON) .ci/lock.py check

# check-lock is order-only: it runs on every install but does not by itself force a reinstall.
$(VENV)/.installed: pyproject.toml $(LOCK) | check-lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) torch
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Refresh the lock: the newest versions pyproject.toml's ranges allow, installed into a clean venv, then pinned.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(LOCK_VENV)/bin/python -m pip install --quiet ".[dev]"
	$(LOCK_VENV)/bin/python -m pip freeze --exclude rlhf-trl > $(LOCK_VENV)/freeze.txt
	$(PYTHON) .ci/lock.py write $(LOCK_VENV)/freeze.txt
	rm -rf $(LOCK_VENV)

# The fast tests against the newest versions the ranges allow (torch stays the CPU build above), in their own venv.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude rlhf-trl > $(LATEST_VENV)/versions.txt
	@echo "versions under test: $(LATEST_VENV)/versions.txt"
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

demo: install
	$(VENV)/bin/rlhf-trl e2e --recipe tiny --deployment-type cpu --output-dir $(OUTPUT_DIR) --overwrite_output_dir

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

test-gpu: install
	$(PY) -m pytest -q -m gpu tests

bench: install
	$(VENV)/bin/rlhf-trl bench --preset cpu

bench-memory: install
	$(PY) -m rlhf_trl.bench.memory --size opt-125m --append

# GPU machine (torch + CUDA, no network, no .venv): wheels carried in .whl/, filled here by `make gpu-wheels`.
gpu-wheels: install
	LOCK_PYTHON=$(VENV)/bin/python benchmarks/gpu_wheels.sh --constraints $(LOCK)

gpu-check:
	benchmarks/gpu_check.sh

lint: install
	$(VENV)/bin/ruff check rlhf_trl tests
	$(VENV)/bin/ruff format --check rlhf_trl tests

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) outputs
