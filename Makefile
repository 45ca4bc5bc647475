# bilayer-mobile: two commands on a fresh machine, `make bundle` and `make test`.
# Every target depends on the virtual environment, which `setup` creates and fills from the
# exact-pinned lock (torch==2.13.0 CPU first, so nothing can pull a CUDA build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: setup test test-fast bundle info clean

setup: $(STAMP)

$(STAMP): requirements/lock.txt requirements/top.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet -c requirements/lock.txt torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/lock.txt -r requirements/top.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole suite, slow (paper-configuration) tests included.
test: $(STAMP)
	$(BIN)/python -m pytest -ra --durations=15

# Everything but the slow tests (a quick check while developing).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow"

# For now (issue 1/4): the reference on the built-in default model, driven by the photos in
# data/photos; writes rendered frames, a strip and a GIF of a driven sequence to $(OUT)/render.
bundle: $(STAMP)
	$(BIN)/bilayer-mobile info
	$(BIN)/bilayer-mobile render --source data/photos/source.jpg \
		--driver data/photos/target.jpg data/photos/source.jpg \
		--sequence-frames 24 --out $(OUT)/render --force

info: $(STAMP)
	$(BIN)/bilayer-mobile info

clean:
	rm -rf $(OUT) .pytest_cache
