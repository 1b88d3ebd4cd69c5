# Quick start: `make train` (the main job) and `make test` (the test suite). Both create or
# refresh the virtual environment in $(VENV) first; re-running them reinstalls nothing unless
# pyproject.toml changed.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.triforge-installed
RUN_DIR ?= runs/quickstart
# A CUDA build of torch where a GPU is present; otherwise the CPU build (small, no CUDA libs).
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.6$(,)<2.15,torch==2.13.0)
, := ,

.PHONY: venv train test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/triforge-train run.dir=$(RUN_DIR) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmarks as one table (and bench-results.json); ARGS=--quick for a short run.
bench: $(STAMP)
	$(PY) -m bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
