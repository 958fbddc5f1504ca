# The two commands: `make run` starts the product, `make test` runs the whole suite.
# (`make demo` places one offline simulated call; `make test-fast` is SQLite only.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The suite runs twice: on the embedded SQLite, then on the PostgreSQL server of this machine.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/voiceagent

.PHONY: run test test-fast lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.run-deps
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py close_stale_calls --all
	$(BIN)/python manage.py runserver 0.0.0.0:8000

test: test-fast
	DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -p no:cacheprovider

test-fast: $(VENV)/.test-deps
	@# The browser tests drive Debian's Chromium (Playwright never downloads a browser here);
	@# the stand-in's speech test needs espeak-ng. Installed with apt-get when missing.
	command -v chromium >/dev/null && command -v espeak-ng >/dev/null \
		|| (apt-get update && apt-get install -y chromium espeak-ng)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One simulated call through the real server, offline: no keys, no phone, no network.
.PHONY: demo
demo: $(VENV)/.run-deps
	$(BIN)/python manage.py demo_call
