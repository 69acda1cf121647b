# Two commands from a fresh clone: `make test` and `make train`. Each sets up .venv first;
# training installs only the package, the tests add their extras (torch, pytest, nbclient).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/tensorflow_datasets
WORKDIR ?= runs/simple_cnn

.PHONY: setup test test-fast train bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --durations=25

# The edit loop: everything but the tests marked slow (real data, fresh processes, the browser).
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=10

train: setup
	$(PY) -m jaxcifar.train --config simple_cnn --workdir $(WORKDIR) --data_dir $(DATA_DIR)

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
