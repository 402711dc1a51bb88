# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-dev

export RAY_USAGE_STATS_ENABLED ?= 0
export TUNE_DISABLE_AUTO_CALLBACK_LOGGERS ?= 1
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS ?= 0

.PHONY: demo test lint install clean docs

# One install (package + dev extra) serves both targets; re-run when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gmptl run jobs/demo.yaml

# pytest exits 5 when it collected nothing: say so, and fail.
test: $(STAMP) lint
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check gmptl tests bench
	$(BIN)/ruff format --check gmptl tests bench

clean:
	rm -rf out .pytest_cache

# Regenerate the README's config-key table from the config schema.
docs: $(STAMP)
	$(BIN)/python -c "import re,subprocess,pathlib; p=pathlib.Path('README.md'); s=p.read_text(); \
	t=subprocess.run(['$(BIN)/gmptl','config','--keys'],capture_output=True,text=True,check=True).stdout.strip(); \
	p.write_text(re.sub(r'(<!-- config-keys:start[^>]*-->\n).*?(\n<!-- config-keys:end -->)', lambda m: m[1]+t+m[2], s, flags=re.S))"
