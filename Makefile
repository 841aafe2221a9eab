# Set-up is part of every target: a fresh machine needs only Python 3.11+ and make.
#   make run    the main job (offline, synthetic data, a few minutes on 2 CPU cores)
#   make test   the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: setup run test lint bench clean

setup: $(INSTALLED) $(VENV)/.horovod

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the dependencies change.
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Horovod is built from source against the installed TensorFlow; the wheel is
# cached under ~/.cache/sentiment-dist, so this takes seconds after the first time.
$(VENV)/.horovod: launch/build_horovod.sh $(INSTALLED)
	bash launch/build_horovod.sh $(PY)
	touch $@

run: setup
	$(PY) -m sentiment_dist

# Three test workers per two cores: with one per core (-n auto) the cores sat idle 16% of
# the suite (measured: 38.7 CPU-minutes in 23.1 minutes on 2 cores) while fault tests wait
# for a lost worker's host to come back or a peer to rendezvous. Capped at 6 so that a big
# machine does not start dozens of TensorFlow jobs at once.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(); print(min(6, max(1, cores * 3 // 2)))')
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Benchmarks write benchmarks/results/*.json and *.md; see benchmarks/README.md.
bench: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/imdb_accuracy.py
	$(PY) benchmarks/imdb_pretraining.py
	$(PY) benchmarks/transfer.py

lint: setup
	$(VENV)/bin/ruff check sentiment_dist tests benchmarks launch

clean:
	rm -rf $(VENV) outputs multirun
