# The three commands: `make run` starts the product, `make test` runs the whole suite,
# `make demo` places one offline simulated call. (`make test-fast` is the SQLite pass only.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The suite runs on the embedded SQLite, then its database tests on this machine's PostgreSQL.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/voiceagent

.PHONY: run test test-fast lint demo python-version port-free
.DEFAULT_GOAL := run

# Python 3.11 to 3.13 (pyproject.toml's requires-python). Checked before .venv is made, and
# against .venv's own Python once it exists, so a wrong version is one line, not pip's errors.
python-version:
	@py="$(PYTHON)"; again="make $(MAKECMDGOALS) PYTHON=python3.12"; \
	if [ -x $(BIN)/python ]; then py=$(BIN)/python; again="rm -rf $(VENV); $$again"; fi; \
	command -v "$$py" >/dev/null || { echo "$$py not found: install Python 3.11, 3.12 or 3.13, then: $$again" >&2; exit 1; }; \
	"$$py" -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else "%s is Python %d.%d: this project needs Python 3.11, 3.12 or 3.13. Install one, then: '"$$again"'" % (sys.executable, v[0], v[1]))'

# A failed venv or pip leaves no half-made .venv behind: the next run starts afresh.
$(BIN)/python: | python-version
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip \
		|| { rm -rf $(VENV); echo "Could not create $(VENV) with $(PYTHON) (on Debian/Ubuntu: sudo apt-get install python3-venv)" >&2; exit 1; }

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# daphne's runserver only logs "Listen failure" on a busy port and exits with status 0.
port-free: $(VENV)/.run-deps
	@$(BIN)/python -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", $(PORT)))' 2>/dev/null \
		|| { echo "Port $(PORT) is in use (another make run?). Stop it, or choose another port: make run PORT=8010" >&2; exit 1; }

run: python-version $(VENV)/.run-deps port-free
	@# System checks (what is still missing) are printed once, by runserver.
	$(BIN)/python manage.py migrate --noinput --skip-checks
	$(BIN)/python manage.py close_stale_calls --all --skip-checks
	@# The task worker (post-call analysis) runs beside the server and stops with it: Ctrl-C
	@# reaches both; on any other exit the trap stops it (its reloader takes its child along).
	$(BIN)/python manage.py db_worker --skip-checks & worker=$$!; \
		trap 'kill $$worker 2>/dev/null' EXIT; \
		$(BIN)/python manage.py runserver 0.0.0.0:$(PORT)

test: test-fast
	@# Again on PostgreSQL: every test that reaches the database (tests/conftest.py).
	DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -p no:cacheprovider --database-tests-only

# The browser tests drive this machine's Chromium (Playwright never downloads a browser) and
# the stand-in's speech test needs espeak-ng: tests/preflight.py says what to install if not.
test-fast: python-version $(VENV)/.test-deps
	$(BIN)/python -m tests.preflight
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: python-version $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One simulated call through the real server, offline: no keys, no phone, no network.
demo: python-version $(VENV)/.run-deps
	$(BIN)/python manage.py demo_call
