# Two commands from a fresh clone: `make test` and `make train`. Each sets up .venv first, at
# the lower end of pyproject.toml's version ranges (constraints.txt); training installs the
# package with TensorFlow (TFDS input), the tests add their extras (torch, pytest, nbclient).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet -c constraints.txt
DATA_DIR ?= ../shared/tensorflow_datasets
WORKDIR ?= runs/simple_cnn
# The second tier: the newest releases within the ranges, without TensorFlow, on Python 3.12.
PYTHON_LATEST ?= python3.12
VENV_LATEST := .venv-latest

.PHONY: setup test test-fast test-latest train bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) -e ".[tf]"
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(PIP) -e ".[$*]"
	touch $@

$(VENV_LATEST)/.installed: pyproject.toml
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_LATEST)/bin/python -m pip install --quiet -e ".[test-base]"
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --durations=25

# The edit loop: everything but the tests marked slow (real data, fresh processes, the browser)
# or heavy (a module fixture that trains for half a minute).
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 -m "not slow and not heavy" --durations=15

# The tests but the slow ones, on the newest JAX, Flax, Optax, Orbax and chex; what needs
# TensorFlow is skipped.
test-latest: $(VENV_LATEST)/.installed
	$(VENV_LATEST)/bin/python -m pytest -q -n 2 -m "not slow" --durations=15

train: setup
	$(PY) -m jaxcifar.train --config simple_cnn --workdir $(WORKDIR) --data_dir $(DATA_DIR)

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(VENV_LATEST) .pytest_cache
