# Two entry points (README): `make demo` runs the main job on the embedded organism,
# `make test` runs lint + the test suite. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
# A pinned spec keeps pip on the local CPU wheel; an open spec may pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test lint venv venv-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .

venv-dev: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

demo: venv
	$(BIN)/safesteer-interp run --out $(DEMO_OUT)

lint: venv-dev
	$(BIN)/ruff check safesteer_interp cli analyses tests benchmarks

test: venv-dev lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
