# Two entry points: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FS := $(VENV)/bin/fs
STORE ?= store
DATA := data/av-twitter-sentiment

.PHONY: setup demo lint browser test test-fast bench clean-store

setup: $(VENV)/.installed

# torch first: 2.13.0 is the CPU build that lies on this machine's disk; any other
# torch request would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,serve,int8,plots,ray]'
	$(PY) -c 'from featurestore.learning.plots import compile_umap; compile_umap()'  # numba's caches, as pip's .pyc (~30 s)
	$(PY) -c 'from featurestore.embedders.onnx_minilm import prepare; prepare()'  # minilm's ONNX export, once (~10 s)
	touch $@

demo: setup
	$(FS) ingest $(DATA)/train_2kmZucJ.csv --dataset train --store $(STORE)
	$(FS) ingest $(DATA)/test_oJQbWVvk.csv --dataset test --store $(STORE)
	$(FS) train --dataset train --store $(STORE)
	$(FS) predict --dataset test --out submission.csv --store $(STORE)
	$(FS) similar "my iphone battery died again" --k 5 --store $(STORE)
	$(FS) info --store $(STORE)

# `test` runs everything (CI), `lint` first; `test-fast` skips tests marked slow (process kills, soaks,
# real models) and the lint. pytest's exit code, 5 included (no tests collected), fails either target.
# With pytest-xdist installed the files are spread over 2 workers (one file stays on one worker:
# module fixtures are built once; the files that declare one framework share one, tests/conftest.py);
# without it the run is serial. `=`, not `:=`: the check runs when the recipe does, after `setup`
# has built the venv.
XDIST = $(shell $(PY) -c 'import xdist' 2>/dev/null && echo --numprocesses=2 --dist=loadfile)

# ruff (lint, and the formatting `ruff format` gives) on the code and its tests and benchmarks, then mypy on the
# library and the CLI (pyproject.toml configures all three). `make test` runs it first, so a lint or type error
# fails CI. mypy keeps its cache in .mypy_cache: ~1 s warm; a fresh clone's first run takes ~6 s on 2 cores.
LINTED := featurestore cli tests bench

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(PY) -m mypy

# tests/test_serve_offline.py renders fs serve's pages in headless Chromium, which pip cannot install: Debian's
# package, where apt-get runs as root without prompts (CI). There the test must run: FS_REQUIRE_BROWSER turns its skip
# for a missing browser into a failure, so a failed install shows as that test's failure, not as a skip. Elsewhere
# (no apt-get, or not root) the two browser tests skip and say why in pytest's summary.
CAN_APT = $(shell command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && echo yes)

browser:
ifeq ($(CAN_APT),yes)
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
		|| echo "warning: apt-get could not install chromium; tests/test_serve_offline.py will fail" >&2
endif

test: setup lint browser
	$(if $(CAN_APT),FS_REQUIRE_BROWSER=1) $(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(XDIST)

bench: setup
	$(PY) bench/ingest.py
