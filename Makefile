# The commands the README names. Everything runs from the project's own virtualenv (.venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test lint format check bench browser-deps deploy-deps clean

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
test: $(STAMP) browser-deps deploy-deps
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

## browser-deps: Debian's chromium and nginx for the browser and nginx tests, and the DejaVu fonts the PDF credential
## cards use, when we may install them (root); else those tests skip
browser-deps:
	@for pkg in chromium nginx; do \
	  command -v $$pkg >/dev/null 2>&1 || [ -x /usr/sbin/$$pkg ] || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get install -y -qq $$pkg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null)) \
	        && echo "Installed Debian's $$pkg for the tests."; \
	    else echo "$$pkg not found and not root: the tests that need it will be skipped."; fi; }; \
	done
	@[ -d /usr/share/fonts/truetype/dejavu ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1 && echo "Installed DejaVu fonts (PDF cards)."; } \
	  || true

## deploy-deps: for the deployment tests (tests/test_deploy.py), when we may install them: Debian's docker-compose
## (root; runs `config`, no engine needed) and promtool, unpacked from Debian's prometheus package into .venv/bin
## (no Prometheus service is installed). Without them those two tests skip; the schema and YAML tests still run.
deploy-deps: $(STAMP)
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 \
	      || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null)) \
	      && echo "Installed Debian's docker-compose for the tests."; \
	  else echo "docker-compose not found and not root: the compose config test will be skipped."; fi; }
	@command -v promtool >/dev/null 2>&1 || [ -x $(BIN)/promtool ] || { \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download -qq prometheus >/dev/null 2>&1 \
	    || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1; }; } \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > $(CURDIR)/$(BIN)/promtool \
	  && chmod 0755 $(CURDIR)/$(BIN)/promtool && echo "Unpacked Debian's promtool into $(BIN) for the tests." \
	  || { rm -f $(CURDIR)/$(BIN)/promtool; echo "promtool could not be had: the promtool test will be skipped."; }; \
	  rm -rf $$tmp; }

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
