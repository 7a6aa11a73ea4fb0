# `make demo` and `make test` work on a fresh machine: both create/update the
# virtualenv first.  PYTHON must be 3.11 (the torch wheels on disk are cp311).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

# pip shows what it installs as it goes (--progress-bar on: a bar per download even in a log).
$(STAMP): pyproject.toml
	@echo "make: creating $(VENV) and installing the project (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	@echo "make: [1/2] torch and torchvision (the largest part)"
	$(BIN)/pip install --progress-bar on torch==2.14.1 torchvision==0.29.1
	@echo "make: [2/2] the project and its other dependencies"
	$(BIN)/pip install --progress-bar on -e '.[test]'
	touch $(STAMP)
	@echo "make: $(VENV) is ready; 'source $(VENV)/bin/activate' puts luigi and colorize-fcn on PATH"

demo: $(STAMP)
	$(BIN)/luigi --module tasks Demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

# Deletes the caches (rebuilt on demand), never the trained runs under $(WORK)/runs.
# `colorize-fcn gc` deletes only the caches no run uses (README "Runs and caches").
WORK ?= work
clean:
	rm -rf $(WORK)/lab $(WORK)/labels $(WORK)/gmm $(WORK)/stats $(WORK)/cache
	@echo "kept $(WORK)/runs (trained runs); delete it by hand to remove them"
