# Keyun — the two commands are `make run` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-at reliability bench lint seed-demo clean chromium fonts web node

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[embedded,dev]'
	touch $(STAMP)

# The back-office web app (admin/web: Vue 3 + Element Plus + ECharts, TypeScript, Vite):
# installed from the committed package-lock.json when it changes, built when a source changes.
WEB       := admin/web
WEB_STAMP := $(WEB)/node_modules/.installed
WEB_SRC   := $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/index.html $(WEB)/api-docs.html \
             $(WEB)/vite.config.ts $(WEB)/tsconfig.json $(WEB)/package.json

node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "Node.js (20.19 or newer) and npm are needed to build the web app in $(WEB):"; \
	  echo "install them (Debian: apt-get install nodejs npm) and run make again."; exit 2; }
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)' || { \
	  echo "Node.js $$(node --version) is too old for the web app build: 20.19 or newer is needed."; exit 2; }

$(WEB_STAMP): $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

$(WEB)/dist/index.html: $(WEB_STAMP) $(WEB_SRC)
	cd $(WEB) && npm run --silent build

web: node $(WEB)/dist/index.html

## Start the whole system on the embedded default (or KEYUN_MONGO_URI / KEYUN_REDIS_URL).
run: $(STAMP) web fonts
	$(BIN)/keyun run

## Install what the tests need and run the whole suite.
test: $(STAMP) chromium web
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The reliability suite at full size (tests/reliability.py: scenarios R1–R13 against real
## processes, each checked from the stores), rewriting docs/reliability.md with its figures;
## then the long runs: every combination of the garbage fuzzer, ten minutes of schemathesis.
RELIABILITY_REPORT := var/reliability.jsonl
reliability: $(STAMP) web
	mkdir -p var && rm -f $(RELIABILITY_REPORT)
	KEYUN_RELIABILITY=1 KEYUN_RELIABILITY_REPORT=$(CURDIR)/$(RELIABILITY_REPORT) \
	  $(BIN)/python -m pytest -m reliability $(PYTEST_ARGS); status=$$?; \
	  $(BIN)/python -m tests.reliability $(RELIABILITY_REPORT); exit $$status
	KEYUN_RELIABILITY=1 $(BIN)/python -m pytest tests/test_api_errors.py \
	  tests/test_schemathesis.py $(PYTEST_ARGS)

## The whole suite with every process's clock moved to AT (libfaketime, Debian `faketime`),
## e.g. make test-at AT='2026-11-25 23:58 +08:00': service days change at Beijing midnight.
test-at: $(STAMP) chromium web
	@test -n "$(AT)" || { echo "usage: make test-at AT='YYYY-MM-DD HH:MM +08:00'"; exit 2; }
	@command -v faketime >/dev/null 2>&1 || $(SUDO) apt-get install -y -q faketime >/dev/null
	off=$$(( $$(date -d '$(AT)' +%s) - $$(date +%s) )); case $$off in -*) ;; *) off=+$$off;; esac; \
	  faketime -f "$$off" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The web pages are tested in headless Chromium from Debian (Playwright's own download does
# not work here) with a CJK font, so Chinese renders as text, not boxes; installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium: fonts
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium (browser tests)"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

# The CJK font of the browser tests and of invoice PDFs (KEYUN_INVOICE_FONT).
fonts:
	@test -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc || { \
	  echo "installing a CJK font (fonts-noto-cjk)"; \
	  $(SUDO) apt-get install -y -q fonts-noto-cjk >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q fonts-noto-cjk >/dev/null; }; }

## Run every benchmark scenario and rewrite docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .

seed-demo: $(STAMP)
	$(BIN)/keyun seed-demo

clean:
	rm -rf var .pytest_cache $(WEB)/dist
