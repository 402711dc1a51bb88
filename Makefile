# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-dev

export RAY_USAGE_STATS_ENABLED ?= 0
export TUNE_DISABLE_AUTO_CALLBACK_LOGGERS ?= 1
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS ?= 0

.PHONY: demo test test-faults test-fast lint install clean docs backbone gpu-check

# One install (package + dev extra) serves both targets; re-run when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gmptl run jobs/demo.yaml

# Rebuild the demo's pre-trained backbone (jobs/backbones/mini-synth) from jobs/pretrain_demo.yaml: the same
# config hash, so the test that checks the stored model against the job file passes again.
backbone: $(STAMP)
	$(BIN)/gmptl pretrain jobs/pretrain_demo.yaml --out jobs/backbones/mini-synth

# pytest exits 5 when it collected nothing: say so, and fail.
test: $(STAMP) lint
	@$(BIN)/python -m pytest -q -m "not faults"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; \
	exit $$rc

# The fault tests: each kills something real (a Ray node's raylet, the MLflow server, k-means actors) and
# checks the run recovers or fails cleanly within a deadline. Slow (each starts its own Ray or server), so
# they are a suite of their own; CI (.ci/run) runs both.
test-faults: $(STAMP)
	@$(BIN)/python -m pytest -q -m faults; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-faults: pytest collected no tests; failing" >&2; fi; \
	exit $$rc

# The GPU check (bench/gpu_check.py): extraction and training throughput and bf16-against-fp32 numerics of a
# hubert-base-shaped model on a CUDA machine. It needs torch, transformers, pydantic and pyyaml but no Ray, so
# it runs with this checkout's venv or, where there is none, with the machine's own python3.
GPU_CHECK_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	$(GPU_CHECK_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

# The unit tests only (no Ray, no lint): a quick check while editing.
test-fast: $(STAMP)
	@$(BIN)/python -m pytest -q tests/unit; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests; failing" >&2; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check gmptl tests bench
	$(BIN)/ruff format --check gmptl tests bench

clean:
	rm -rf out .pytest_cache

# Regenerate the config-key table of docs/configuration.md from the config schema: the output of
# `gmptl config --keys`, verbatim, between the config-keys markers (the prose above them is kept).
CONFIG_DOC := docs/configuration.md
docs: $(STAMP)
	$(BIN)/python -c "import re,subprocess,sys,pathlib; p=pathlib.Path('$(CONFIG_DOC)'); s=p.read_text(); \
	t=subprocess.run(['$(BIN)/gmptl','config','--keys'],capture_output=True,text=True,check=True).stdout; \
	pat=re.compile(r'(<!-- config-keys:start[^>]*-->\n).*?(<!-- config-keys:end -->)', re.S); \
	len(pat.findall(s))==1 or sys.exit('$(CONFIG_DOC): expected one config-keys:start/end marker pair'); \
	p.write_text(pat.sub(lambda m: m[1]+t+m[2], s))"
