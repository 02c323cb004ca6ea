# Two entry points: `make run` (the main job on the synthetic dataset) and `make test`.
# Both create .venv if needed. torch is pinned to 2.13.0 so that CPU machines take the
# CPU build instead of pulling several GB of CUDA packages.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup setup-test run test test-portability bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" -e ".[cpu]"

setup-test: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" -e ".[test]"

run: setup
	$(BIN)/vpipe run --dataset synthetic

test: setup-test
	$(BIN)/python -m pytest -q

# The suite again under other vector units and thread counts (see docs/testing.md).
test-portability: setup-test
	PYTHON=$(BIN)/python tests/portability/run.sh both

bench: setup-test
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/flow.py
	$(BIN)/python bench/flow_shrink.py

clean:
	rm -rf $(VENV) workspace/synthetic
