# Two commands do everything on a fresh machine (only Python >= 3.11 and make needed):
#   make demo   create .venv, install, prepare Shakespeare, train dense + 87.5%-sparse tiny GPTs
#   make test   create .venv if missing, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# glibc malloc returns XLA's large buffers to the OS after each step and page-faults them back
# in (2-3x slower sparse kernels); keeping them in the heap, with one arena for every thread,
# avoids it (sparsetrain/allocator.py explains; TUNED_GLIBC there is this string). Printed by the demo.
MALLOC := GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py and csrc/: the compiled block-sparse CPU kernel is rebuilt when they change
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard sparsetrain/kernels/csrc/*)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(MALLOC) $(BIN)/python scripts/dense_vs_sparse.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(MALLOC) $(BIN)/python benchmarks/block_sparse_matmul.py
	$(MALLOC) $(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs data_cache
