# The front door. `make demo` and `make test` work on a fresh clone: they create .venv, install CPU torch first
# (a bare torch requirement would pull several GB of CUDA packages), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
OUTPUT_DIR ?= outputs/demo

.PHONY: install demo test test-fast test-gpu bench bench-memory lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/rlhf-trl e2e --recipe tiny --deployment-type cpu --output-dir $(OUTPUT_DIR) --overwrite_output_dir

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

test-gpu: install
	$(PY) -m pytest -q -m gpu tests

bench: install
	$(VENV)/bin/rlhf-trl bench --preset cpu

bench-memory: install
	$(PY) -m rlhf_trl.bench_memory --size opt-125m --append

lint: install
	$(VENV)/bin/ruff check rlhf_trl tests
	$(VENV)/bin/ruff format --check rlhf_trl tests

clean:
	rm -rf $(VENV) outputs
