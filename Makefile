# Two entry points: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FS := $(VENV)/bin/fs
STORE ?= store
DATA := data/av-twitter-sentiment

.PHONY: setup demo test bench clean-store

setup: $(VENV)/.installed

# torch first: 2.13.0 is the CPU build that lies on this machine's disk; any other
# torch request would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(FS) ingest $(DATA)/train_2kmZucJ.csv --dataset train --store $(STORE)
	$(FS) ingest $(DATA)/test_oJQbWVvk.csv --dataset test --store $(STORE)
	$(FS) train --dataset train --store $(STORE)
	$(FS) predict --dataset test --out submission.csv --store $(STORE)
	$(FS) similar "my iphone battery died again" --k 5 --store $(STORE)
	$(FS) info --store $(STORE)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/ingest.py
