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

# Tests mostly wait on TensorFlow starting in subprocesses: two at a time per
# pair of cores cuts the suite from ~10 to ~6 minutes on 2 cores; capped so a big
# machine does not start dozens of TensorFlow jobs at once.
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses=4

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
