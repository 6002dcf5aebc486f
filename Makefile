# astroclass: `make demo` installs into .venv and runs the demo; `make test` installs and runs the tests;
# `make lint` runs ruff and mypy.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[all,dev]'
	touch $@

demo: install
	$(BIN)/astroclass demo

test: install
	$(BIN)/python -m pytest -q

docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_compile.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
