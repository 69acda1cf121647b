# Two commands from a fresh clone: `make test` and `make train`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/tensorflow_datasets
WORKDIR ?= runs/simple_cnn

.PHONY: setup test train bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2

train: setup
	$(PY) -m jaxcifar.train --config simple_cnn --workdir $(WORKDIR) --data_dir $(DATA_DIR)

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
