# The commands the README names. Everything runs from the project's own virtualenv (.venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test lint format check bench browser-deps clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

## run: the whole platform on embedded defaults (SQLite, embedded Redis, the ComfyUI simulator)
run: $(STAMP)
	$(BIN)/python manage.py run_platform

## test: the whole test suite (uses DATABASE_URL / REDIS_URL when set, embedded defaults otherwise)
test: $(STAMP) browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff (lint + format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## check: Django's system checks and no missing migrations
check: $(STAMP)
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run

## bench: benchmarks that print figures (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## browser-deps: Debian's chromium and nginx for the browser and nginx tests, when we may install them (root);
## else those tests skip
browser-deps:
	@for pkg in chromium nginx; do \
	  command -v $$pkg >/dev/null 2>&1 || [ -x /usr/sbin/$$pkg ] || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get install -y -qq $$pkg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null)) \
	        && echo "Installed Debian's $$pkg for the tests."; \
	    else echo "$$pkg not found and not root: the tests that need it will be skipped."; fi; }; \
	done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
