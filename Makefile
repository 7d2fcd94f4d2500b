# Two commands do everything on a fresh machine (only Python >= 3.11 and make needed):
#   make demo   create .venv, install, prepare Shakespeare, train dense + 87.5%-sparse tiny GPTs
#   make test   create .venv if missing, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/dense_vs_sparse.py

test: $(STAMP)
	XLA_FLAGS="$${XLA_FLAGS:-}" $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/block_sparse_matmul.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs data_cache
